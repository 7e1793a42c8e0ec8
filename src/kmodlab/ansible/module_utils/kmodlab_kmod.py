# GPL-2.0-only
"""Kernel module parameters and live state: shared by the kmod_load probe and filters.

Runs on the target (as Ansible module_utils, where the ``kmodlab`` package is not
installed) and on the controller (imported as ``kmodlab.ansible.module_utils.kmodlab_kmod``
by the filter plugins), so it only uses the standard library.

The functions take the records the ``kmodlab_modules`` lookup resolves (``name``,
``kmod``, ``state``, ``params``, ``persist``, ``manifest``) and work in the kernel's own
terms:

- what ``/sys/module/KMOD/parameters/P`` shows for a value (``sysfs_value``),
- the ``P=V`` arguments ``modprobe`` passes on (``param_tokens``) and the ``options``
  line of ``/etc/modprobe.d`` (``options_string``),
- the live state of a module under ``/sys/module`` (``module_state``),
- ``/proc/devices`` and the kernel log (``/dev/kmsg``),
- what to do about each module (``plan``): load, reload, unload, or nothing.
"""

from __future__ import annotations

import errno
import os
import re
import shlex

INT_TYPES = ("byte", "short", "ushort", "int", "uint", "long", "ulong")
BOOL_TYPES = ("bool", "invbool")
CHARP = "charp"
_KMSG_RECORD = re.compile(r"^(\d+),(\d+),(-?\d+),[^;]*;(.*)$")
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
        raise ParamError("parameter %s: %r is not a boolean (use true/false)" % (name, value))
    if ptype == CHARP:
        if isinstance(value, (bool, list, dict)) or value is None:
            raise ParamError("parameter %s: %r is not a string" % (name, value))
        text = str(value)
        if '"' in text or "\n" in text or "\r" in text:
            raise ParamError(
                "parameter %s: %r cannot be passed to the kernel "
                "(double quotes and newlines are not representable)" % (name, text)
            )
        if decl.get("array") and "," in text:
            raise ParamError(
                "parameter %s: element %r of an array cannot contain a comma" % (name, text)
            )
        return text
    if ptype in INT_TYPES:
        if isinstance(value, bool):
            raise ParamError("parameter %s: %r is not an integer (%s)" % (name, value, ptype))
        try:
            return str(_to_int(value))
        except (TypeError, ValueError):
            raise ParamError(
                "parameter %s: %r is not an integer (%s)" % (name, value, ptype)
            ) from None
    raise ParamError("parameter %s: unknown type %r" % (name, ptype))


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


def sysfs_value(decl, value):
    """The text /sys/module/KMOD/parameters/NAME shows for ``value`` (without newline).

    bool/invbool -> Y or N, integers -> decimal, charp -> the string, arrays -> the
    elements joined by commas (what the kernel's param_array_get prints).
    """
    if decl.get("array"):
        if not isinstance(value, (list, tuple)):
            raise ParamError("parameter %s: an array parameter takes a list" % decl.get("name"))
        return ",".join(_scalar(decl, v) for v in value)
    if isinstance(value, (list, tuple)):
        raise ParamError("parameter %s: takes a single value, not a list" % decl.get("name"))
    return _scalar(decl, value)


def _decl_for(decls, name):
    try:
        return decls[name]
    except KeyError:
        known = ", ".join(sorted(decls)) or "none"
        raise ParamError("unknown parameter %s (declared: %s)" % (name, known)) from None


def normalise(decls, params):
    """``{name: sysfs text}`` for wanted ``params``."""
    return {k: sysfs_value(_decl_for(decls, k), v) for k, v in sorted((params or {}).items())}


def param_tokens(decls, params):
    """The ``name=value`` arguments, one per parameter, in name order (modprobe argv).

    modprobe itself puts double quotes around a value that contains spaces.
    """
    tokens = []
    for name, text in normalise(decls, params).items():
        decl = decls[name]
        if decl.get("array") and text == "":
            raise ParamError(
                "parameter %s: the kernel cannot take an empty array; leave the "
                "parameter out to get its default" % name
            )
        tokens.append("%s=%s" % (name, text))
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
            out.append('%s="%s"' % (name, text))
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
    base = host_path(root, "/sys/module/%s" % kmod)
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


def parse_kmsg(text):
    """Records of /dev/kmsg text (``pri,seq,usec,flags;message``) as ``[(seq, message)]``.

    Continuation lines (`` KEY=value``) are skipped.
    """
    records = []
    for line in (text or "").splitlines():
        match = _KMSG_RECORD.match(line)
        if match:
            records.append((int(match.group(2)), match.group(4)))
    return records


def read_kmsg(path):
    """The kernel ring buffer as ``[(seq, message)]`` from /dev/kmsg, or None if unreadable.

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
    return parse_kmsg(b"".join(chunks).decode("utf-8", "replace"))


def mention_regex(record):
    """Regex for kernel lines that name the module (``hello_5`` or ``hello-5`` as a word)."""
    names = sorted({record["kmod"], record["name"]}, key=len, reverse=True)
    alt = "|".join(re.escape(n) for n in names)
    return re.compile(r"(?<![A-Za-z0-9_-])(?:%s)(?![A-Za-z0-9_-])" % alt)


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


def reload_reasons(record, state, recorded=None, options_changed=False, installed=None):
    """Why a loaded ``present`` module must be reloaded; empty when it is as wanted.

    - a visible wanted parameter whose live value differs (a wanted major of 0 means
      "dynamic": any live major is fine);
    - a parameter that cannot be read back (perm 0) whose value differs from the one
      recorded in the local fact at the last successful load, or a parameter recorded
      then that is no longer wanted (back to its default);
    - no usable record while the module declares parameters that cannot be read back;
    - the options file changes while the module declares such parameters;
    - the installed module (srcversion, else version) differs from the loaded one.
    """
    decls = declarations(record)
    wanted = normalise(decls, record.get("params"))
    majors = major_params(record)
    hidden = sorted(n for n, d in decls.items() if not visible(d))
    reasons = []
    for name, text in wanted.items():
        decl = decls[name]
        if not visible(decl):
            continue
        if name in majors and text == "0":
            continue
        if name in state.get("missing", []):
            reasons.append(
                "parameter %s has no file in /sys/module/%s/parameters" % (name, record["kmod"])
            )
            continue
        live = state.get("live", {}).get(name)
        if live is not None and live != text:
            reasons.append("parameter %s is %r, wanted %r" % (name, live, text))
    if _usable_record(recorded):
        before, unknown = _safe_normalise(decls, recorded.get("params"))
        for name in sorted(unknown):
            reasons.append("parameter %s was set at the last load and is no longer declared" % name)
        for name in hidden:
            if before.get(name) != wanted.get(name):
                reasons.append(
                    "parameter %s (not visible in sysfs) was %s at the last load, wanted %s"
                    % (name, _show(before.get(name)), _show(wanted.get(name)))
                )
        for name in sorted(set(before) - set(wanted)):
            decl = decls[name]
            if not visible(decl):
                continue  # counted above
            default = _default_text(decl)
            live = state.get("live", {}).get(name)
            if name in majors or default is None or live != default:
                reasons.append("parameter %s is no longer wanted (back to its default)" % name)
    elif hidden:
        reasons.append(
            "loaded without a kmodlab record; parameters %s cannot be read back" % ", ".join(hidden)
        )
    if options_changed and hidden and not any("cannot be read back" in r for r in reasons):
        reasons.append(
            "the options file changes and parameters %s cannot be read back" % ", ".join(hidden)
        )
    installed = installed or {}
    if state.get("srcversion") and installed.get("srcversion"):
        if state["srcversion"] != installed["srcversion"]:
            reasons.append(
                "the installed module differs from the loaded one (srcversion %s, installed %s)"
                % (state["srcversion"], installed["srcversion"])
            )
    elif (
        state.get("version")
        and installed.get("version")
        and state["version"] != installed["version"]
    ):
        reasons.append(
            "the installed module differs from the loaded one (version %s, installed %s)"
            % (state["version"], installed["version"])
        )
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
    dynamic major); parameters that cannot be read back come from the record of the
    last successful load, when there is one.
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
        elif name in before:
            out[name] = before[name]
    return out


def args_from_texts(texts):
    """A shell-quoted modprobe ``params`` string from ``{name: sysfs text}``."""
    return " ".join(shlex.quote("%s=%s" % (name, texts[name])) for name in sorted(texts))


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
            source = "parameter %s=%s" % (pname, value)
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
                        "%s must be unloaded (%s) but module %s, which kmodlab does not "
                        "manage here, uses it; unload %s first"
                        % (rec["name"], "; ".join(reasons[name]), kmod, kmod)
                    )
                    if msg not in blocked:
                        blocked.append(msg)
                    continue
                hname = holder["name"]
                if actions[hname] in ("reload", "unload"):
                    continue
                if holder["state"] == "present" and actions[name] == "unload":
                    msg = "%s is absent but %s (state present) uses it; make %s absent too" % (
                        rec["name"],
                        hname,
                        hname,
                    )
                    if msg not in blocked:
                        blocked.append(msg)
                    continue
                if holder["state"] == "present":
                    actions[hname] = "reload"
                    reasons[hname].append("it uses %s, which is reloaded" % rec["name"])
                    changed = True
                else:
                    msg = (
                        "%s must be unloaded (%s) but %s (state %s) uses it and kmodlab "
                        "leaves it alone; set %s present or unload it first"
                        % (rec["name"], "; ".join(reasons[name]), hname, holder["state"], hname)
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
