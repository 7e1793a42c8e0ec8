# GPL-2.0-only
"""Kernel module parameters and live state: shared by the kmod_load probe and filters.

Runs on the target (as Ansible module_utils, where the ``kmodlab`` package is not
installed) and on the controller (imported from the kmodlab.lab collection
by the filter plugins), so it only uses the standard library.

The functions take the records the ``kmodlab_modules`` lookup resolves (``name``,
``kmod``, ``state``, ``params``, ``persist``, ``manifest``) and work in the kernel's own
terms:

- what ``/sys/module/KMOD/parameters/P`` shows for a value (``sysfs_value``; a
  fixed-size array, ``counted: false``, shows all its elements),
- the ``P=V`` arguments ``modprobe`` passes on (``param_tokens``) and the ``options``
  line of ``/etc/modprobe.d`` (``options_string``),
- the live state of a module under ``/sys/module`` (``module_state``) and of its
  ``/dev`` nodes (``dev_node_state``),
- ``/proc/devices`` and the kernel log (``/dev/kmsg``): the value a module printed for
  a parameter sysfs does not show (``logged_value``), the lines that explain a refused
  load (``failure_lines``),
- what to do about each module (``plan``): load, reload, unload, or nothing.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import stat

INT_TYPES = ("byte", "short", "ushort", "int", "uint", "long", "ulong")
BOOL_TYPES = ("bool", "invbool")
CHARP = "charp"
_KMSG_RECORD = re.compile(r"^(\d+),(\d+),(-?\d+),[^;]*;(.*)$")
# Kernel log lines that are part of a stack dump, an oops or a WARN splat: where the
# kernel was, not why it failed (lib/dump_stack.c, arch/x86/kernel/dumpstack.c,
# kernel/panic.c).
TRACE_PATTERNS = (
    # a stack frame: " func+0x6a/0x1000 [mod]", " ? func.cold+0x17/0x24", " ? 0xffffffffc0a4c000"
    re.compile(r"^\s*(?:\?\s+)?[\w.$]+\+0x[0-9a-f]+/0x[0-9a-f]+(?:\s+\[[\w-]+(?:\s+\w+)?\])?\s*$"),
    re.compile(r"^\s*\?\s+(?:0x)?[0-9a-f]+\s*$"),
    re.compile(r"^\s*</?(?:TASK|IRQ|NMI|SOFTIRQ|EOE|EOI)>\s*$"),
    re.compile(r"^\s*Call Trace:"),
    re.compile(r"^\s*CPU: \d+ PID: \d+"),
    re.compile(r"^\s*(?:WARNING|BUG): CPU: \d+ PID: \d+"),
    re.compile(r"^\s*Hardware name: "),
    re.compile(r"^\s*Modules linked in:"),
    re.compile(r"^\s*Workqueue: "),
    re.compile(r"^\s*Code: "),
    re.compile(
        r"^\s*(?:RIP|EIP|ORIG_RAX|EFLAGS|PKRU|[RE][A-Z]{2}|R\d{1,2}|[CDEFGS]S|CR\d|DR\d):\s*[0-9a-f]{2,}"
    ),
    re.compile(r"^\s*(?:pc|lr|sp|x\d{1,2}) ?: [0-9a-f]{8,}"),
    re.compile(r"^\s*#PF: "),
    re.compile(r"^\s*(?:PGD|P4D|PUD|PMD|PTE) [0-9a-f]+"),
    re.compile(r"^\s*-+\[ (?:cut here|end trace [0-9a-f]*) \]-+\s*$"),
)
# Without kmsg levels (the dmesg fallback), what a warning or an error says.
_TROUBLE = re.compile(
    r"(?i)\b(?:fail(?:s|ed|ure)?|errors?|cannot|can't|unable|invalid|refus\w*|denied|"
    r"busy|duplicate|exists?|not found|no such|warning|bug|oops|-E[A-Z]+)\b"
)
# The level of a kmsg record at or below which it is a warning or worse (KERN_WARNING).
_WARNING = 4
# What the kernel prints when it refuses or ignores a parameter (kernel/params.c,
# kernel/module/main.c). Group "param" names the parameter, "value" the value given.
PARAM_ERROR_PATTERNS = (
    re.compile(r"`(?P<value>[^']*)' invalid for parameter `(?P<param>[^']+)'"),
    re.compile(r"`(?P<value>[^']*)' too large for parameter `(?P<param>[^']+)'"),
    re.compile(r"[Uu]nknown parameter `(?P<param>[^']+)'"),
    re.compile(r"unknown parameter '(?P<param>[^']+)' ignored"),
)


class ParamError(ValueError):
    """A wanted value that cannot be expressed for the kernel; the message names it."""


# --------------------------------------------------------------------------- values


def declarations(record):
    """Parameter declarations of a resolved record, by name."""
    manifest = record.get("manifest") or {}
    return {p["name"]: p for p in manifest.get("parameters") or []}


def visible(decl):
    """Whether the parameter shows under /sys/module/KMOD/parameters (perm != 0)."""
    return int(str(decl.get("perm") or "0"), 8) != 0


def major_params(record):
    """Names of parameters that choose a major number (manifest proc_devices)."""
    manifest = record.get("manifest") or {}
    expect = manifest.get("expect") or {}
    return {d["major_param"] for d in expect.get("proc_devices") or [] if d.get("major_param")}


def _scalar(decl, value):
    ptype = decl.get("type")
    name = decl.get("name")
    if ptype in BOOL_TYPES:
        # The kernel shows bool and invbool alike: Y or N, in the sense given.
        if isinstance(value, bool):
            return "Y" if value else "N"
        if value in (1, "1", "Y", "y"):
            return "Y"
        if value in (0, "0", "N", "n"):
            return "N"
        raise ParamError(f"parameter {name}: {value!r} is not a boolean (use true/false)")
    if ptype == CHARP:
        if isinstance(value, (bool, list, dict)) or value is None:
            raise ParamError(f"parameter {name}: {value!r} is not a string")
        text = str(value)
        if '"' in text or "\n" in text or "\r" in text:
            raise ParamError(
                f"parameter {name}: {text!r} cannot be passed to the kernel "
                "(double quotes and newlines are not representable)"
            )
        if decl.get("array") and "," in text:
            raise ParamError(
                f"parameter {name}: element {text!r} of an array cannot contain a comma"
            )
        return text
    if ptype in INT_TYPES:
        if isinstance(value, bool):
            raise ParamError(f"parameter {name}: {value!r} is not an integer ({ptype})")
        try:
            return str(_to_int(value))
        except (TypeError, ValueError):
            raise ParamError(f"parameter {name}: {value!r} is not an integer ({ptype})") from None
    raise ParamError(f"parameter {name}: unknown type {ptype!r}")


def _to_int(value):
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text, 0)
        except ValueError:
            return int(text, 10)
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


def fixed_size(decl):
    """Whether ``decl`` is an array without a count variable (manifest ``counted: false``)."""
    return bool(decl.get("array")) and decl.get("counted", True) is False


def arg_value(decl, value):
    """The text of ``value`` as modprobe passes it on (``name=TEXT``), without padding.

    bool/invbool -> Y or N, integers -> decimal, charp -> the string, arrays -> the
    given elements joined by commas.
    """
    if decl.get("array"):
        if not isinstance(value, (list, tuple)):
            raise ParamError(
                "parameter {}: an array parameter takes a list".format(decl.get("name"))
            )
        return ",".join(_scalar(decl, v) for v in value)
    if isinstance(value, (list, tuple)):
        raise ParamError("parameter {}: takes a single value, not a list".format(decl.get("name")))
    return _scalar(decl, value)


def sysfs_value(decl, value):
    """The text /sys/module/KMOD/parameters/NAME shows for ``value`` (without newline).

    As ``arg_value``, except for a fixed-size array (no count variable): the kernel's
    param_array_get then prints all ``max_count`` elements, the given ones first and
    the rest as the array was initialised (the manifest's ``default``), e.g.
    ``10,11,-1,-1`` for ``[10, 11]`` over ``[-1, -1, -1, -1]``.
    """
    if fixed_size(decl) and isinstance(value, (list, tuple)):
        initial = decl.get("default")
        if isinstance(initial, (list, tuple)):
            value = list(value) + list(initial)[len(value) :]
    return arg_value(decl, value)


def _decl_for(decls, name):
    try:
        return decls[name]
    except KeyError:
        known = ", ".join(sorted(decls)) or "none"
        raise ParamError(f"unknown parameter {name} (declared: {known})") from None


def normalise(decls, params):
    """``{name: sysfs text}`` for wanted ``params``."""
    return {k: sysfs_value(_decl_for(decls, k), v) for k, v in sorted((params or {}).items())}


def normalise_args(decls, params):
    """``{name: argument text}`` for wanted ``params`` (what modprobe is given)."""
    return {k: arg_value(_decl_for(decls, k), v) for k, v in sorted((params or {}).items())}


def param_tokens(decls, params):
    """The ``name=value`` arguments, one per parameter, in name order (modprobe argv).

    modprobe itself puts double quotes around a value that contains spaces.
    """
    tokens = []
    for name, text in normalise_args(decls, params).items():
        decl = decls[name]
        if decl.get("array") and text == "":
            raise ParamError(
                f"parameter {name}: the kernel cannot take an empty array; leave the "
                "parameter out to get its default"
            )
        tokens.append(f"{name}={text}")
    return tokens


def args_string(decls, params):
    """The ``params`` string for community.general.modprobe (it shlex-splits it)."""
    return " ".join(shlex.quote(t) for t in param_tokens(decls, params))


def options_string(decls, params):
    """The arguments of an ``options KMOD ...`` line: values with spaces in double quotes."""
    out = []
    for token in param_tokens(decls, params):
        name, _, text = token.partition("=")
        if re.search(r"\s", text):
            out.append(f'{name}="{text}"')
        else:
            out.append(token)
    return " ".join(out)


def strip_newline(text):
    """sysfs values end with one newline; drop exactly that one."""
    if text is None:
        return None
    return text[:-1] if text.endswith("\n") else text


# --------------------------------------------------------------------------- reading


def host_path(root, path):
    """``path`` (absolute) under ``root`` ("/" on a real host, a tmp dir in tests)."""
    root = root or "/"
    if root == "/":
        return path
    return os.path.join(root, path.lstrip("/"))


def read_text(path, limit=65536):
    """File content as text, or None when it does not exist or cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def module_state(root, kmod, decls):
    """Live state of ``kmod`` under /sys/module.

    loaded: an ``initstate`` file exists (built-in modules have a directory but none).
    live:   visible declared parameters that have a sysfs file, as text.
    missing: visible declared parameters without a sysfs file (the module and its
             manifest disagree, or the kernel ignored the parameter).
    """
    base = host_path(root, f"/sys/module/{kmod}")
    initstate = strip_newline(read_text(os.path.join(base, "initstate")))
    state = {
        "loaded": initstate is not None,
        "initstate": initstate,
        "refcount": None,
        "holders": [],
        "live": {},
        "missing": [],
        "unreadable": [],
        "srcversion": None,
        "version": None,
    }
    if initstate is None:
        return state
    refcnt = strip_newline(read_text(os.path.join(base, "refcnt")))
    try:
        state["refcount"] = int(refcnt) if refcnt is not None else None
    except ValueError:
        state["refcount"] = None
    try:
        state["holders"] = sorted(os.listdir(os.path.join(base, "holders")))
    except OSError:
        state["holders"] = []
    state["srcversion"] = strip_newline(read_text(os.path.join(base, "srcversion")))
    state["version"] = strip_newline(read_text(os.path.join(base, "version")))
    pdir = os.path.join(base, "parameters")
    for name in sorted(decls):
        if not visible(decls[name]):
            continue
        path = os.path.join(pdir, name)
        if not os.path.exists(path):
            state["missing"].append(name)
            continue
        text = read_text(path)
        if text is None:
            state["unreadable"].append(name)
            continue
        state["live"][name] = strip_newline(text)
    return state


def parse_proc_devices(text):
    """``/proc/devices`` as ``{"char": {major: [names]}, "block": {...}}``."""
    out = {"char": {}, "block": {}}
    section = None
    for line in (text or "").splitlines():
        line = line.strip()
        if line.lower().startswith("character devices"):
            section = "char"
            continue
        if line.lower().startswith("block devices"):
            section = "block"
            continue
        parts = line.split(None, 1)
        if section and len(parts) == 2 and parts[0].isdigit():
            out[section].setdefault(int(parts[0]), []).append(parts[1].strip())
    return out


def parse_kmsg_levels(text):
    """Records of /dev/kmsg text (``pri,seq,usec,flags;message``) as
    ``[(seq, level, message)]``; level is the syslog level (0 emerg .. 7 debug).

    Continuation lines (`` KEY=value``) are skipped.
    """
    records = []
    for line in (text or "").splitlines():
        match = _KMSG_RECORD.match(line)
        if match:
            records.append((int(match.group(2)), int(match.group(1)) & 7, match.group(4)))
    return records


def parse_kmsg(text):
    """Records of /dev/kmsg text as ``[(seq, message)]`` (see parse_kmsg_levels)."""
    return [(seq, message) for seq, _, message in parse_kmsg_levels(text)]


def read_kmsg(path, levels=False):
    """The kernel ring buffer as ``[(seq, message)]`` from /dev/kmsg, or None if unreadable;
    ``[(seq, level, message)]`` with ``levels``.

    Each read() of /dev/kmsg returns one record; EAGAIN means the end. EPIPE means a
    record was overwritten while reading, and reading goes on. A regular file (tests)
    is read to its end.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    chunks = []
    try:
        while True:
            try:
                data = os.read(fd, 16384)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    continue
                if exc.errno == errno.EAGAIN:
                    break
                return None
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(fd)
    text = b"".join(chunks).decode("utf-8", "replace")
    return parse_kmsg_levels(text) if levels else parse_kmsg(text)


def mention_regex(record):
    """Regex for kernel lines that name the module (``hello_5`` or ``hello-5`` as a word)."""
    names = sorted({record["kmod"], record["name"]}, key=len, reverse=True)
    alt = "|".join(re.escape(n) for n in names)
    return re.compile(rf"(?<![A-Za-z0-9_-])(?:{alt})(?![A-Za-z0-9_-])")


def param_errors(lines):
    """Parameters the kernel refused or ignored, parsed from its messages."""
    errors = []
    seen = set()
    for line in lines:
        for pattern in PARAM_ERROR_PATTERNS:
            match = pattern.search(line)
            if match:
                param = match.group("param")
                if (param, line) not in seen:
                    seen.add((param, line))
                    errors.append(
                        {
                            "param": param,
                            "value": match.groupdict().get("value"),
                            "message": line.strip(),
                        }
                    )
                break
    return errors


def trace_line(line):
    """Whether a kernel line is part of a stack dump, oops or WARN splat (not a reason)."""
    return any(pattern.search(line) for pattern in TRACE_PATTERNS)


def since_unload(lines, unload_patterns):
    """``lines`` after the last one matching an ``unload_patterns`` regex (all if none).

    For a loaded module, that is what the kernel said since its last load.
    """
    regexes = []
    for pattern in unload_patterns or []:
        try:
            regexes.append(re.compile(pattern))
        except re.error:
            continue
    cut = 0
    for index, line in enumerate(lines):
        if any(regex.search(line) for regex in regexes):
            cut = index + 1
    return lines[cut:]


def failure_lines(records, regex, unload_patterns=(), limit=6):
    """The kernel lines that explain why loading a module failed, oldest first.

    records: ``[(level or None, message)]`` since the load began (level from /dev/kmsg;
             None when unknown, then the words of the line decide)
    regex:   mention_regex() of the module
    unload_patterns: its manifest's unload messages; what came before the last of them
             belongs to its unload, not to the failed load

    Stack frames, register dumps and the other lines of a dump (``Call Trace:``,
    ``func+0x6a/0x1000 [mod]``, ``RIP:``, ``CPU: 1 PID:``, ``Hardware name:`` ...) say
    where the kernel was, not why, and are dropped. Kept are the lines that name the
    module and the warnings and errors from the dump the module first shows up in (the
    kernel's reason for a dump comes just before it, e.g. ``sysfs: cannot create
    duplicate filename``) onwards; the last ``limit`` of them.
    """
    messages = [message for _, message in records]
    start = len(messages) - len(since_unload(messages, unload_patterns))
    window = list(records[start:])
    traces = [trace_line(message) for _, message in window]
    mentions = [bool(regex.search(message)) for _, message in window]
    begin = 0
    if any(mentions):
        begin = mentions.index(True)
        if traces[begin]:
            while begin > 0 and traces[begin - 1]:
                begin -= 1
            if begin > 0:
                begin -= 1  # the line the dump was printed for
    out = []
    for index in range(begin, len(window)):
        level, message = window[index]
        if traces[index] or not message.strip():
            continue
        # a warning or worse; without a level (dmesg), a line that says what went wrong
        trouble = bool(_TROUBLE.search(message)) if level is None else level <= _WARNING
        if mentions[index] or trouble:
            out.append(message.strip())
    return out[-limit:] if limit else out


def modprobe_error(text):
    """modprobe's own complaint in its output, e.g. ``could not insert 'memory': Device
    or resource busy``, without the ``modprobe: ERROR:`` prefix; None if it has none."""
    found = []
    for line in (text or "").splitlines():
        line = line.strip()
        if not line.startswith(("modprobe:", "insmod:")):
            continue
        line = re.sub(r"^(?:modprobe|insmod):\s*(?:ERROR:|FATAL:)?\s*", "", line)
        if line and line not in found:
            found.append(line)
    return "; ".join(found) or None


def logged_value(decl, lines, unload_patterns=()):
    """What a module last printed for parameter ``decl``, from its manifest ``log`` regex.

    lines: the kernel log, oldest first; only the lines since the module's last load
    count (after its last unload message, see since_unload), and of those the newest
    match. Returns ``{"text": value as sysfs would show it, "line": the kernel line}``,
    or None when the parameter has no ``log`` or nothing matches (the message is not
    in the log, e.g. the ring buffer has moved on). The captured text is normalised
    like a wanted value (``0x10`` -> ``16``, ``1``/``true`` -> ``Y``) when it can be.
    """
    pattern = decl.get("log")
    if not pattern:
        return None
    try:
        regex = re.compile(pattern)
    except re.error:
        return None
    for line in reversed(since_unload(list(lines or []), unload_patterns)):
        match = regex.search(line)
        if match and match.groupdict().get("value") is not None:
            return {"text": _logged_text(decl, match.group("value")), "line": line.strip()}
    return None


_WORDS = {"true": "Y", "yes": "Y", "on": "Y", "false": "N", "no": "N", "off": "N"}


def _logged_text(decl, text):
    text = text.strip()
    parts = text.split(",") if decl.get("array") else [text]
    if decl.get("type") in BOOL_TYPES:
        parts = [_WORDS.get(part.strip().lower(), part.strip()) for part in parts]
    try:
        return sysfs_value(decl, parts if decl.get("array") else parts[0])
    except ParamError:
        return text


def logged_params(record, lines):
    """``{name: logged_value(...)}`` of the parameters of ``record`` that have a ``log``
    regex and whose value is in ``lines`` since the module's last load."""
    manifest = record.get("manifest") or {}
    dmesg = (manifest.get("expect") or {}).get("dmesg") or {}
    out = {}
    for name, decl in sorted(declarations(record).items()):
        found = logged_value(decl, lines, dmesg.get("unload"))
        if found is not None:
            out[name] = found
    return out


def dev_node_state(root, path):
    """What ``path`` is: ``{"exists", "type", "mode", "major", "minor"}`` (os.stat)."""
    try:
        st = os.stat(host_path(root, path))
    except OSError:
        return {"exists": False}
    mode = st.st_mode
    if stat.S_ISCHR(mode):
        kind = "char"
    elif stat.S_ISBLK(mode):
        kind = "block"
    elif stat.S_ISREG(mode):
        kind = "file"
    elif stat.S_ISDIR(mode):
        kind = "directory"
    else:
        kind = "other"
    out = {"exists": True, "type": kind, "mode": f"{stat.S_IMODE(mode):04o}"}
    if kind in ("char", "block"):
        out["major"] = os.major(st.st_rdev)
        out["minor"] = os.minor(st.st_rdev)
    return out


def dev_nodes(record):
    """The manifest's ``expect.dev_nodes`` of ``record``."""
    manifest = record.get("manifest") or {}
    return list((manifest.get("expect") or {}).get("dev_nodes") or [])


def dev_node_problems(record, nodes, proc_devices=None):
    """How the /dev nodes of a loaded module differ from its manifest.

    nodes: ``{path: dev_node_state()}``; proc_devices: parse_proc_devices(). Returns
    ``[(path, message, foreign)]``; ``foreign`` when something else stands at the path
    (another type, or a node of another device number): the kernel does not replace
    it when the module is loaded again, so it has to go first.
    """
    manifest = record.get("manifest") or {}
    devices = {d["name"]: d for d in (manifest.get("expect") or {}).get("proc_devices") or []}
    out = []
    for node in dev_nodes(record):
        path = node["path"]
        st = nodes.get(path)
        if st is None:
            continue
        want_type = node.get("type", "char")
        if not st.get("exists"):
            out.append((path, f"{path} is missing (manifest expect.dev_nodes)", False))
            continue
        if st.get("type") != want_type:
            out.append(
                (path, "{} is a {}, not a {} device".format(path, st.get("type"), want_type), True)
            )
            continue
        device = devices.get(node.get("device"))
        if device is not None and proc_devices:
            majors = [
                major
                for major, names in (proc_devices.get(device.get("kind", "char")) or {}).items()
                if device["name"] in names
            ]
            minor = node.get("minor", 0)
            if majors and (st.get("major") not in majors or st.get("minor") != minor):
                out.append(
                    (
                        path,
                        "%s is %s %s:%s, not the node of %r (major %s, minor %d)"
                        % (
                            path,
                            want_type,
                            st.get("major"),
                            st.get("minor"),
                            device["name"],
                            "/".join(str(m) for m in sorted(majors)),
                            minor,
                        ),
                        True,
                    )
                )
                continue
        if node.get("mode") and st.get("mode") != node["mode"]:
            out.append(
                (
                    path,
                    "{} has mode {}, the manifest says {}".format(
                        path, st.get("mode"), node["mode"]
                    ),
                    False,
                )
            )
    return out


def missing_patterns(patterns, lines):
    """Regexes of ``patterns`` that match none of ``lines``."""
    out = []
    for pattern in patterns or []:
        try:
            regex = re.compile(pattern)
        except re.error:
            out.append(pattern)
            continue
        if not any(regex.search(line) for line in lines):
            out.append(pattern)
    return out


# --------------------------------------------------------------------------- planning


def _usable_record(recorded):
    return isinstance(recorded, dict) and recorded.get("state") in ("present", "config")


def _safe_normalise(decls, params):
    out = {}
    unknown = []
    for name, value in (params or {}).items():
        decl = decls.get(name)
        if decl is None:
            unknown.append(name)
            continue
        try:
            out[name] = sysfs_value(decl, value)
        except ParamError:
            unknown.append(name)
    return out, unknown


def reload_reasons(
    record, state, recorded=None, options_changed=False, installed=None, proc_devices=None
):
    """Why a loaded ``present`` module must be reloaded; empty when it is as wanted.

    - a visible wanted parameter whose live value differs (a wanted major of 0 means
      "dynamic": any live major is fine);
    - a parameter sysfs does not show (perm 0) whose value the module printed at its
      last load (manifest ``log``, ``state["logged"]``) differs from the wanted one
      (its default when not wanted);
    - a parameter that cannot be read back at all (perm 0, nothing logged) whose value
      differs from the one recorded in the local fact at the last successful load, or
      a parameter recorded then that is no longer wanted (back to its default);
    - no usable record while the module declares parameters that cannot be read back;
    - the options file changes while the module declares such parameters;
    - the installed module differs from the loaded one (srcversion, else GNU build ID,
      else version);
    - a /dev node of the manifest (``state["dev_nodes"]``) is missing, or has another
      type, device number or mode: loading the module again makes the kernel create
      it again.
    """
    decls = declarations(record)
    wanted = normalise(decls, record.get("params"))
    majors = major_params(record)
    logged = state.get("logged") or {}
    hidden = sorted(n for n, d in decls.items() if not visible(d) and n not in logged)
    reasons = []
    for name, text in wanted.items():
        decl = decls[name]
        if not visible(decl):
            continue
        if name in majors and text == "0":
            continue
        if name in state.get("missing", []):
            reasons.append(
                "parameter {} has no file in /sys/module/{}/parameters".format(name, record["kmod"])
            )
            continue
        live = state.get("live", {}).get(name)
        if live is not None and live != text:
            reasons.append(f"parameter {name} is {live!r}, wanted {text!r}")
    for name in sorted(logged):
        decl = decls.get(name)
        if decl is None or visible(decl):
            continue
        want = wanted.get(name, _default_text(decl))
        if want is not None and logged[name]["text"] != want:
            reasons.append(
                "parameter {} (not visible in sysfs) is {!r} by the module's message {!r}, wanted {!r}".format(
                    name, logged[name]["text"], logged[name]["line"], want
                )
            )
    if _usable_record(recorded):
        before, unknown = _safe_normalise(decls, recorded.get("params"))
        for name in sorted(unknown):
            reasons.append(f"parameter {name} was set at the last load and is no longer declared")
        for name in hidden:
            if before.get(name) != wanted.get(name):
                reasons.append(
                    f"parameter {name} (not visible in sysfs) was {_show(before.get(name))} at the last load, wanted {_show(wanted.get(name))}"
                )
        for name in sorted(set(before) - set(wanted)):
            decl = decls[name]
            if not visible(decl):
                continue  # counted above
            default = _default_text(decl)
            live = state.get("live", {}).get(name)
            if name in majors or default is None or live != default:
                reasons.append(f"parameter {name} is no longer wanted (back to its default)")
    elif hidden:
        reasons.append(
            "loaded without a kmodlab record; parameters {} cannot be read back".format(
                ", ".join(hidden)
            )
        )
    if options_changed and hidden and not any("cannot be read back" in r for r in reasons):
        reasons.append(
            "the options file changes and parameters {} cannot be read back".format(
                ", ".join(hidden)
            )
        )
    installed = installed or {}
    # The first identity both sides have: srcversion (only with MODULE_VERSION or
    # CONFIG_MODULE_SRCVERSION_ALL), the GNU build ID (every build), the version.
    for key, label in (
        ("srcversion", "srcversion"),
        ("build_id", "build ID"),
        ("version", "version"),
    ):
        if state.get(key) and installed.get(key):
            if state[key] != installed[key]:
                reasons.append(
                    f"the installed module differs from the loaded one ({label} {state[key]}, installed {installed[key]})"
                )
            break
    for _, message, _ in dev_node_problems(record, state.get("dev_nodes") or {}, proc_devices):
        reasons.append(message)
    return reasons


def _show(text):
    return "unset (default)" if text is None else repr(text)


def _default_text(decl):
    try:
        return sysfs_value(decl, decl.get("default"))
    except ParamError:
        return None


def previous_params(record, state, recorded=None):
    """What the module runs with now, as ``{name: text}``, to load it again after a failure.

    Visible parameters come from sysfs (skipping values equal to their default, and a
    dynamic major); parameters sysfs does not show from the module's own message
    (``state["logged"]``), else from the record of the last successful load, when
    there is one.
    """
    if not state.get("loaded"):
        return {}
    decls = declarations(record)
    majors = major_params(record)
    before = {}
    if _usable_record(recorded):
        before, _ = _safe_normalise(decls, recorded.get("params"))
    out = {}
    for name, decl in sorted(decls.items()):
        if visible(decl):
            live = state.get("live", {}).get(name)
            if live is None:
                continue
            if name in majors and before.get(name, _default_text(decl)) == "0":
                continue
            if live == _default_text(decl) and name not in before:
                continue
            out[name] = live
        elif name in (state.get("logged") or {}):
            text = state["logged"][name]["text"]
            if text != _default_text(decl) or name in before:
                out[name] = text
        elif name in before:
            out[name] = before[name]
    return out


def args_from_texts(texts):
    """A shell-quoted modprobe ``params`` string from ``{name: sysfs text}``."""
    return " ".join(shlex.quote(f"{name}={texts[name]}") for name in sorted(texts))


def device_conflicts(record, proc_devices, leaving=()):
    """Fixed majors ``record`` needs that another driver holds in /proc/devices.

    ``leaving`` are device names that will be gone by then (their modules are unloaded
    first), so holding a major is not a conflict for them.
    """
    manifest = record.get("manifest") or {}
    expect = manifest.get("expect") or {}
    decls = declarations(record)
    params = record.get("params") or {}
    out = []
    for dev in expect.get("proc_devices") or []:
        major = None
        source = None
        if dev.get("major_param"):
            pname = dev["major_param"]
            value = params.get(pname, (decls.get(pname) or {}).get("default"))
            try:
                major = int(value)
            except (TypeError, ValueError):
                major = None
            source = f"parameter {pname}={value}"
        elif isinstance(dev.get("major"), int):
            major = dev["major"]
            source = "fixed in the manifest"
        if not major:
            continue
        kind = dev.get("kind", "char")
        owners = [
            n
            for n in proc_devices.get(kind, {}).get(major, [])
            if n != dev["name"] and n not in leaving
        ]
        if owners:
            out.append(
                "%s: %s major %d (%s) is already taken by %s in /proc/devices; "
                "choose a free major or unload that driver first"
                % (record["name"], kind, major, source, ", ".join(repr(o) for o in owners))
            )
    return out


def plan(records, states, recorded=None, files=None, installed=None, proc_devices=None):
    """Decide, per module, whether to load, reload, unload or leave it.

    records:   resolved records in load order
    states:    {name: module_state(...)}
    recorded:  {name: entry of the local fact at the last successful run}
    files:     {name: {"options_changed": bool}}
    installed: {name: {"srcversion": ..., "version": ...}} of the installed .ko
    proc_devices: parse_proc_devices() of /proc/devices

    Returns {"actions": {name: action}, "reasons": {name: [...]}, "load": [...],
    "unload": [...], "blocked": [...], "conflicts": [...]}. ``load`` is in load order,
    ``unload`` in reverse load order. A reload of a module also reloads the managed
    modules that hold it; a holder kmodlab does not manage blocks it.
    """
    recorded = recorded or {}
    files = files or {}
    installed = installed or {}
    by_name = {r["name"]: r for r in records}
    by_kmod = {r["kmod"]: r for r in records}
    order = [r["name"] for r in records]
    actions = {}
    reasons = {}
    for rec in records:
        name = rec["name"]
        st = states[name]
        why = []
        action = "none"
        if rec["state"] == "absent":
            if st["loaded"]:
                action, why = "unload", ["state is absent"]
        elif rec["state"] == "present":
            if not st["loaded"]:
                action, why = "load", ["not loaded"]
            else:
                why = reload_reasons(
                    rec,
                    st,
                    recorded.get(name),
                    (files.get(name) or {}).get("options_changed", False),
                    installed.get(name),
                    proc_devices,
                )
                if why:
                    action = "reload"
        actions[name] = action
        reasons[name] = why

    # Modules that use a reloaded or unloaded module must go first and come back after.
    blocked = []
    changed = True
    while changed:
        changed = False
        for name in order:
            if actions[name] not in ("reload", "unload"):
                continue
            rec = by_name[name]
            users = set(states[name].get("holders") or [])
            for other in records:
                depends = (other.get("manifest") or {}).get("depends") or []
                if name in depends and states[other["name"]]["loaded"]:
                    users.add(other["kmod"])
            for kmod in sorted(users):
                holder = by_kmod.get(kmod)
                if holder is None:
                    msg = (
                        "{} must be unloaded ({}) but module {}, which kmodlab does not "
                        "manage here, uses it; unload {} first".format(
                            rec["name"], "; ".join(reasons[name]), kmod, kmod
                        )
                    )
                    if msg not in blocked:
                        blocked.append(msg)
                    continue
                hname = holder["name"]
                if actions[hname] in ("reload", "unload"):
                    continue
                if holder["state"] == "present" and actions[name] == "unload":
                    msg = "{} is absent but {} (state present) uses it; make {} absent too".format(
                        rec["name"],
                        hname,
                        hname,
                    )
                    if msg not in blocked:
                        blocked.append(msg)
                    continue
                if holder["state"] == "present":
                    actions[hname] = "reload"
                    reasons[hname].append("it uses {}, which is reloaded".format(rec["name"]))
                    changed = True
                else:
                    msg = (
                        "{} must be unloaded ({}) but {} (state {}) uses it and kmodlab "
                        "leaves it alone; set {} present or unload it first".format(
                            rec["name"], "; ".join(reasons[name]), hname, holder["state"], hname
                        )
                    )
                    if msg not in blocked:
                        blocked.append(msg)

    unload = [n for n in reversed(order) if actions[n] in ("reload", "unload")]
    load = [n for n in order if actions[n] in ("load", "reload")]
    for name in unload:
        st = states[name]
        refcount = st.get("refcount") or 0
        managed_holders = [h for h in st.get("holders") or [] if h in by_kmod]
        if refcount > len(managed_holders):
            holders = ", ".join(st.get("holders") or []) or "none"
            blocked.append(
                "%s must be unloaded (%s) but is in use (refcount %d, holders: %s); close "
                "the programs using it (open files under /dev?) and run again"
                % (name, "; ".join(reasons[name]), refcount, holders)
            )
    conflicts = []
    leaving_devices = set()
    for name in unload:
        expect = (by_name[name].get("manifest") or {}).get("expect") or {}
        leaving_devices.update(d["name"] for d in expect.get("proc_devices") or [])
    for name in load:
        conflicts.extend(device_conflicts(by_name[name], proc_devices or {}, leaving_devices))
    return {
        "actions": actions,
        "reasons": reasons,
        "load": load,
        "unload": unload,
        "blocked": blocked,
        "conflicts": conflicts,
    }
