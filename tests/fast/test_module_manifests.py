"""Fast tier: every ``modules/*/module.yml`` validates and agrees with its C sources and Kbuild.

The manifest is the single source of truth for what a module is and what it shows once
loaded, so these tests catch it drifting from the code: parameter names, types, modes,
defaults and descriptions, the ``/proc/devices`` and ``/dev`` names, the licence and
description in ``.modinfo``, and the wording of the dmesg lines.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest
from ansible_collections.kmodlab.lab.plugins.module_utils import kernel_log as kmodlab_log
from ansible_collections.kmodlab.lab.plugins.module_utils import params as kmodlab_params

from kmodlab.manifest import MANIFEST_FILE, Manifest, load_all, load_manifest

REPO = Path(__file__).resolve().parents[2]
MODULES = REPO / "modules"
MODULE_NAMES = sorted(p.name for p in MODULES.iterdir() if p.is_dir() and p.name[0] != ".")

# The teaching lab's first modules: they must all be there.
LAB_MODULES = {
    "hello-1",
    "hello-2",
    "hello-3",
    "hello-4",
    "hello-5",
    "startstop",
    "chardev",
    "procfs1",
    "hello-sysfs",
    "memory",
    "symexport",
    "symuse",
}

# C type of each parameter type, as module_param() expects the variable.
C_TYPES = {
    "byte": "unsigned char",
    "short": "short",
    "ushort": "unsigned short",
    "int": "int",
    "uint": "unsigned int",
    "long": "long",
    "ulong": "unsigned long",
    "charp": "char *",
    "bool": "bool",
    "invbool": "bool",
}

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_C_STRING = r'"((?:[^"\\\n]|\\.)*)"'
_PARAM_CALLS = {
    # macro: (argument names in order)
    "module_param": ("name", "type", "perm"),
    "module_param_named": ("name", "var", "type", "perm"),
    "module_param_array": ("name", "type", "count", "perm"),
    "module_param_array_named": ("name", "var", "type", "count", "perm"),
}


def _manifest(name: str) -> Manifest:
    return load_manifest(MODULES / name)


def _code(name: str) -> str:
    """All C sources of a module, comments removed, so commented-out code does not count."""
    m = _manifest(name)
    return "\n".join(_COMMENT.sub(" ", (MODULES / name / src).read_text()) for src in m.sources)


def _unescape(literal: str) -> str:
    return re.sub(r"\\(.)", lambda mo: {"n": "\n", "t": "\t"}.get(mo[1], mo[1]), literal)


def _defines(code: str) -> dict[str, str]:
    return dict(re.findall(r"^#define[ \t]+(\w+)[ \t]+(.+?)[ \t]*$", code, re.M))


def _int(token: str, defines: dict[str, str]) -> int:
    token = token.strip()
    while token in defines:
        token = defines[token].strip()
    token = token.strip("()").rstrip("uUlL")
    sign = -1 if token.startswith("-") else 1
    token = token.lstrip("+-")
    if re.fullmatch(r"0[0-7]+", token):  # C octal, e.g. a mode: 0644
        return sign * int(token, 8)
    return sign * int(token, 0)


def _element(token: str, ptype: str, defines: dict[str, str]) -> int | bool:
    """One element of a C array initialiser, as the manifest writes it."""
    token = token.strip()
    if ptype in ("bool", "invbool"):
        assert token in ("true", "false"), f"bool element {token}: write true or false"
        return token == "true"
    return _int(token, defines)


def _printed(code: str) -> list[str]:
    """The format strings of the pr_*() calls, unescaped."""
    printed = rf"\bpr_(?:emerg|alert|crit|err|warn|notice|info)\(\s*{_C_STRING}"
    return [_unescape(f) for f in re.findall(printed, code)]


def _param_calls(code: str) -> dict[str, dict[str, str]]:
    calls: dict[str, dict[str, str]] = {}
    for macro, names in _PARAM_CALLS.items():
        for args in re.findall(rf"\b{macro}\s*\(([^;]*?)\)\s*;", code):
            values = [a.strip() for a in args.split(",")]
            assert len(values) == len(names), f"cannot read {macro}({args})"
            call = dict(zip(names, values, strict=True))
            call["macro"] = macro
            call.setdefault("var", call["name"])
            assert call["name"] not in calls, f"parameter {call['name']} declared twice"
            calls[call["name"]] = call
    return calls


def _modinfo_tag(code: str, tag: str) -> str | None:
    found = re.findall(rf"\bMODULE_{tag}\s*\(\s*{_C_STRING}\s*\)", code)
    assert len(found) <= 1, f"MODULE_{tag} given {len(found)} times"
    return _unescape(found[0]) if found else None


def _literal_prefix(pattern: str) -> str:
    """The plain text a regex starts with (up to its first special construct)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            if nxt.isalnum():  # \b, \d, \n, \A ...: not plain text
                break
            ch, step = nxt, 2
        elif ch in ".^$*+?{}[]|()":
            break
        else:
            step = 1
        if pattern[i + step : i + step + 1] in ("?", "*", "{"):
            break  # the character is optional: stop before it
        out.append(ch)
        i += step
    return "".join(out)


def test_every_module_folder_has_a_valid_manifest() -> None:
    manifests = load_all(MODULES)
    assert sorted(manifests) == MODULE_NAMES, "each folder under modules/ needs a module.yml"


def test_lab_modules_present() -> None:
    missing = LAB_MODULES - set(MODULE_NAMES)
    assert not missing, f"lab modules missing from modules/: {sorted(missing)}"


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_kbuild_builds_the_module(name: str) -> None:
    kbuild = MODULES / name / "Kbuild"
    assert kbuild.is_file(), f"{kbuild} is missing"
    text = kbuild.read_text()
    objm: list[str] = []
    for value in re.findall(r"^\s*obj-m\s*[:+]?=\s*(.*)$", text, re.M):
        objm.extend(value.split())
    assert f"{name}.o" in objm, f"{kbuild}: obj-m must name {name}.o, has {objm}"

    m = _manifest(name)
    c_sources = sorted(s for s in m.sources if s.endswith(".c"))
    parts: list[str] = []
    for value in re.findall(rf"^\s*{re.escape(name)}-(?:objs|y)\s*[:+]?=\s*(.*)$", text, re.M):
        parts.extend(value.split())
    if parts:
        built = sorted(p.removesuffix(".o") + ".c" for p in parts)
        assert built == c_sources, f"{kbuild}: {name}-objs builds {built}, sources are {c_sources}"
    else:
        assert c_sources == [f"{name}.c"], f"{kbuild}: a single-file module is built from {name}.c"


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_sources_list_every_c_file(name: str) -> None:
    folder = MODULES / name
    on_disk = sorted(
        p.name
        for p in folder.iterdir()
        if p.suffix in (".c", ".h") and not p.name.endswith(".mod.c")  # .mod.c: kbuild output
    )
    assert sorted(_manifest(name).sources) == on_disk, f"{folder}/{MANIFEST_FILE}: sources"


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_parameters_match_the_code(name: str) -> None:
    m = _manifest(name)
    code = _code(name)
    defines = _defines(code)
    calls = _param_calls(code)
    assert sorted(calls) == sorted(p.name for p in m.parameters), (
        f"{name}: parameters in the C code {sorted(calls)} differ from the manifest"
    )
    for p in m.parameters:
        call = calls[p.name]
        where = f"{name}: parameter {p.name}"
        assert call["type"] == p.type, f"{where}: type {call['type']} in the code"
        assert call["macro"].startswith("module_param_array") == p.array, f"{where}: array"
        assert _int(call["perm"], defines) == int(p.perm, 8), (
            f"{where}: perm {call['perm']} in the code, {p.perm} in the manifest"
        )
        desc = re.findall(rf"\bMODULE_PARM_DESC\s*\(\s*{p.name}\s*,\s*{_C_STRING}\s*\)", code)
        assert [_unescape(d) for d in desc] == [p.description], f"{where}: MODULE_PARM_DESC"

        var = re.escape(call["var"])
        ctype = r"\s+".join(C_TYPES[p.type].split())
        if p.array:
            decl = re.search(
                rf"\b{ctype}\s+{var}\s*\[\s*(\w+)\s*\]\s*(?:=\s*\{{([^}}]*)\}})?\s*;", code
            )
            assert decl, f"{where}: no declaration 'static {C_TYPES[p.type]} {call['var']}[N]'"
            assert _int(decl[1], defines) == p.max_count, f"{where}: max_count"
            values = [_element(v, p.type, defines) for v in (decl[2] or "").split(",") if v.strip()]
            if call["count"] == "NULL":
                # module_param_array(name, type, NULL, perm): a fixed-size array whose
                # every element sysfs shows; C sets the ones not initialised to zero.
                assert not p.counted, f"{where}: no count variable (NULL): set counted: false"
                zero: int | bool = False if p.type in ("bool", "invbool") else 0
                values += [zero] * (p.max_count - len(values))
                assert values == p.default, (
                    f"{where}: default {p.default} must list the {p.max_count} initial "
                    f"values of the array, the code has {values}"
                )
                continue
            assert p.counted, f"{where}: counted: false, but the code passes {call['count']}"
            assert values == p.default, f"{where}: default"
            count = re.escape(call["count"].lstrip("&"))
            init = re.search(rf"\b{count}\s*=\s*([^;]+);", code)
            assert init, f"{where}: the count variable needs an initial value"
            assert _int(init[1], defines) == len(p.default), (
                f"{where}: count variable starts at {init[1]}, default has {len(p.default)}"
            )
        elif p.type == "charp":
            decl = re.search(rf"\bchar\s*\*\s*{var}\s*=\s*{_C_STRING}\s*;", code)
            assert decl, f"{where}: no declaration 'static char *{call['var']} = \"...\"'"
            assert _unescape(decl[1]) == p.default, f"{where}: default"
        else:
            decl = re.search(rf"\b{ctype}\s+{var}\s*=\s*([^;]+);", code)
            assert decl, f"{where}: no declaration 'static {C_TYPES[p.type]} {call['var']} = ...'"
            value = decl[1].strip()
            if p.type in ("bool", "invbool"):
                assert value in ("true", "false"), f"{where}: default {value}"
                assert (value == "true") == bool(p.default), f"{where}: default"
            else:
                assert _int(value, defines) == p.default, f"{where}: default"


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_device_and_file_names_appear_in_the_code(name: str) -> None:
    m = _manifest(name)
    code = _code(name)
    strings = {_unescape(s) for s in re.findall(_C_STRING, code)}
    wanted = [d.name for d in m.expect.proc_devices]
    wanted += [Path(n.path).name for n in m.expect.dev_nodes]
    wanted += [Path(p.path).name for p in m.expect.procfs]
    for item in wanted:
        assert item in strings, f'{name}: no C string "{item}" in the sources'


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_modinfo_matches_the_code(name: str) -> None:
    m = _manifest(name)
    code = _code(name)
    tags = {
        "license": _modinfo_tag(code, "LICENSE"),
        "author": _modinfo_tag(code, "AUTHOR"),
        "description": _modinfo_tag(code, "DESCRIPTION"),
    }
    assert tags["license"] == m.license, f"{name}: MODULE_LICENSE differs from license"
    if tags["author"] is not None:
        assert tags["author"] == m.author, f"{name}: MODULE_AUTHOR differs from author"
    if tags["description"] is not None:
        assert tags["description"] == m.description, f"{name}: MODULE_DESCRIPTION differs"
    for key, pattern in m.expect.modinfo.items():
        if key not in tags:
            continue
        assert tags[key] is not None, f"{name}: expect.modinfo.{key}, but no MODULE_{key.upper()}"
        assert re.search(pattern, tags[key]), f"{name}: expect.modinfo.{key} does not match"


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_dmesg_patterns_follow_the_printed_lines(name: str) -> None:
    m = _manifest(name)
    code = _code(name)
    printed = rf"\bpr_(?:emerg|alert|crit|err|warn|notice|info)\(\s*{_C_STRING}"
    formats = [_unescape(f).split("%")[0] for f in re.findall(printed, code)]
    formats = [f for f in formats if f]
    for src in m.sources:
        text = (MODULES / name / src).read_text()
        if src.endswith(".c") and re.search(printed, text):
            assert re.search(r'^#define pr_fmt\(fmt\) KBUILD_MODNAME ": " fmt$', text, re.M), (
                f"{name}/{src}: define pr_fmt with KBUILD_MODNAME so the lines name the module"
            )
    prefix = f"{m.kmod}: "
    logs = [p.log for p in m.parameters if p.log is not None]
    for pattern in m.expect.dmesg.load + m.expect.dmesg.unload + logs:
        literal = _literal_prefix(pattern)
        assert literal.startswith(prefix), (
            f"{name}: dmesg pattern {pattern!r} must start {prefix!r}"
        )
        rest = literal[len(prefix) :]
        assert len(rest) >= 5, f"{name}: dmesg pattern {pattern!r} is too vague"
        assert any(rest[: len(f)] == f[: len(rest)] for f in formats), (
            f"{name}: dmesg pattern {pattern!r} matches no pr_*() line in the sources"
        )


_CONVERSION = re.compile(r"%[-+ 0#]*\d*(?:hh|h|ll|l|z)?([dicsuxX])")


def _fill(fmt: str, value: str) -> str:
    """The line a one-conversion printf format prints for ``value``."""
    return _CONVERSION.sub(lambda _mo: value, fmt.replace("%%", "%")).rstrip("\n")


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_log_captures_what_the_module_prints(name: str) -> None:
    """A parameter's ``log`` regex reads the module's own line for it back: the line a
    pr_*() call prints for the default value gives the default as sysfs would show it."""
    m = _manifest(name)
    formats = _printed(_code(name))
    for p in m.parameters:
        if p.log is None:
            continue
        decl = p.model_dump(mode="json")
        value = kmodlab_params.sysfs_value(decl, p.default)
        lines = []
        for fmt in formats:
            if len(_CONVERSION.findall(fmt)) != 1:
                continue
            lines.append(f"{m.kmod}: {_fill(fmt, value)}")
        found = kmodlab_log.logged_value(decl, lines)
        assert found is not None, f"{name}: log of {p.name} matches no pr_*() line {lines}"
        assert found["text"] == value, f"{name}: log of {p.name} reads {found} for {value!r}"


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_functional_steps_use_declared_paths(name: str) -> None:
    m = _manifest(name)
    declared = {n.path for n in m.expect.dev_nodes}
    declared |= {p.path for p in m.expect.sysfs + m.expect.procfs}
    for check in m.expect.functional:
        for step in check.steps:
            if step.error is not None:
                assert step.error in errno.errorcode.values(), f"{name}: unknown {step.error}"
            # handles, the kernel log and commands have no path; poll and run may look
            # at anything (a counter, /proc/interrupts, a mount point)
            if step.path is None or step.op == "poll":
                continue
            assert step.path in declared, (
                f"{name}: functional check {check.name!r} uses {step.path}, "
                "which expect.dev_nodes/sysfs/procfs does not declare"
            )


_EXPORT = re.compile(r"\bEXPORT_SYMBOL(_GPL)?\s*\(\s*(\w+)\s*\)")
# Licences the kernel takes as GPL-compatible (include/linux/license.h)
_GPL_COMPATIBLE = {"GPL", "GPL v2", "GPL and additional rights", "Dual BSD/GPL", "Dual MIT/GPL"}


def _exports(name: str) -> dict[str, bool]:
    """Symbols a module exports -> whether for GPL-compatible modules only."""
    return {sym: bool(gpl) for gpl, sym in _EXPORT.findall(_code(name))}


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_depends_matches_the_symbols_the_code_calls(name: str) -> None:
    """``depends`` names exactly the modules of modules/ whose exported functions the
    code calls; a module calling an EXPORT_SYMBOL_GPL() symbol is GPL-compatible."""
    m = _manifest(name)
    code = _code(name)
    calls = {
        other: sorted(s for s in _exports(other) if re.search(rf"\b{s}\s*\(", code))
        for other in MODULE_NAMES
        if other != name
    }
    users_of = sorted(other for other, used in calls.items() if used)
    assert sorted(m.depends) == users_of, (
        f"{name}: depends {m.depends}, but the code calls symbols exported by {users_of}"
    )
    for dep in m.depends:
        gpl_only = [s for s in calls[dep] if _exports(dep)[s]]
        if gpl_only:
            assert m.license in _GPL_COMPATIBLE, (
                f"{name}: licence {m.license!r} may not use {dep}'s GPL-only {gpl_only}"
            )


def test_literal_prefix() -> None:
    assert _literal_prefix(r"hello_1: hello, world \(init_module\)") == (
        "hello_1: hello, world (init_module)"
    )
    assert _literal_prefix(r"hello_5: myshort=-?[0-9]+\b") == "hello_5: myshort="
    assert _literal_prefix(r"a\.b\d") == "a.b"
