# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The live state of kernel modules and what to do about it: the kmod_load probe's plan.

Runs on the target (as Ansible module_utils, where the ``kmodlab`` package is not
installed) and on the controller (imported from the kmodlab.lab collection by the
filter plugins), so it only uses the standard library.

The functions take the records the ``kmodlab_modules`` lookup resolves (``name``,
``kmod``, ``state``, ``params``, ``persist``, ``manifest``):

- the live state of a module under ``/sys/module`` (``module_state``),
- fixed majors another driver holds (``device_conflicts``),
- why a loaded module must be reloaded (``reload_reasons``), what it runs with now
  (``previous_params``), and what to do about each module (``plan``): load, reload,
  unload, or nothing.

One module_utils file per fact, shared with the verify collector and checks:
``params`` (parameter values, majors), ``kernel_log`` (the kernel log reader and its
parsers), ``proc_devices`` (``/proc/devices``), ``nodes`` (``/dev`` nodes),
``files`` (read, stat, atomic write), ``kmod_config`` (modprobe.d and modules-load.d).
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any

from ansible_collections.kmodlab.lab.plugins.module_utils.files import host_path, read_text
from ansible_collections.kmodlab.lab.plugins.module_utils.nodes import dev_node_problems
from ansible_collections.kmodlab.lab.plugins.module_utils.params import (
    ParamError,
    declarations,
    default_text,
    dynamic_major,
    major_params,
    normalise,
    strip_newline,
    sysfs_value,
    visible,
    wanted_major,
)
from ansible_collections.kmodlab.lab.plugins.module_utils.proc_devices import owners


def module_state(root: str | None, kmod: str, decls: dict[str, dict[str, Any]]) -> dict[str, Any]:
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


# --------------------------------------------------------------------------- planning


def _usable_record(recorded: Any) -> bool:
    return isinstance(recorded, dict) and recorded.get("state") in ("present", "config")


def _safe_normalise(
    decls: dict[str, dict[str, Any]], params: dict[str, Any] | None
) -> tuple[dict[str, str], list[str]]:
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
    record: dict[str, Any],
    state: dict[str, Any],
    recorded: dict[str, Any] | None = None,
    options_changed: bool = False,
    installed: dict[str, Any] | None = None,
    proc_devices: dict[str, Any] | None = None,
) -> list[str]:
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
        if dynamic_major(record, name, text):
            continue  # the kernel chose the major: any live one is fine
        if name in state.get("missing", []):
            reasons.append(
                f"parameter {name} has no file in /sys/module/{record['kmod']}/parameters"
            )
            continue
        live = state.get("live", {}).get(name)
        if live is not None and live != text:
            reasons.append(f"parameter {name} is {live!r}, wanted {text!r}")
    for name in sorted(logged):
        decl = decls.get(name)
        if decl is None or visible(decl):
            continue
        want = wanted.get(name, default_text(decl))
        if want is not None and logged[name]["text"] != want:
            reasons.append(
                f"parameter {name} (not visible in sysfs) is {logged[name]['text']!r} by the "
                f"module's message {logged[name]['line']!r}, wanted {want!r}"
            )
    if _usable_record(recorded):
        before, unknown = _safe_normalise(decls, recorded.get("params"))
        for name in sorted(unknown):
            reasons.append(f"parameter {name} was set at the last load and is no longer declared")
        for name in hidden:
            if before.get(name) != wanted.get(name):
                reasons.append(
                    f"parameter {name} (not visible in sysfs) was {_show(before.get(name))} "
                    f"at the last load, wanted {_show(wanted.get(name))}"
                )
        for name in sorted(set(before) - set(wanted)):
            decl = decls[name]
            if not visible(decl):
                continue  # counted above
            default = default_text(decl)
            live = state.get("live", {}).get(name)
            if name in majors or default is None or live != default:
                reasons.append(f"parameter {name} is no longer wanted (back to its default)")
    elif hidden:
        reasons.append(
            f"loaded without a kmodlab record; parameters {', '.join(hidden)} cannot be read back"
        )
    if options_changed and hidden and not any("cannot be read back" in r for r in reasons):
        reasons.append(
            f"the options file changes and parameters {', '.join(hidden)} cannot be read back"
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
                    f"the installed module differs from the loaded one ({label} {state[key]}, "
                    f"installed {installed[key]})"
                )
            break
    # The same build signed again (a new signing key): the code is identical, so neither
    # srcversion nor build ID tells, but the kernel checked the old signature at load.
    signed_then = recorded.get("sig_key") if _usable_record(recorded) else None
    signed_now = installed.get("sig_key")
    if signed_then and signed_now and signed_then != signed_now:
        reasons.append(
            f"the installed module is signed with key {signed_now}, it was "
            f"loaded when signed with key {signed_then}"
        )
    for problem in dev_node_problems(record, state.get("dev_nodes") or {}, proc_devices):
        reasons.append(problem[1])
    return reasons


def _show(text: str | None) -> str:
    return "unset (default)" if text is None else repr(text)


def previous_params(
    record: dict[str, Any], state: dict[str, Any], recorded: dict[str, Any] | None = None
) -> dict[str, str]:
    """What the module runs with now, as ``{name: text}``, to load it again after a failure.

    Visible parameters come from sysfs (skipping values equal to their default, and a
    dynamic major); parameters sysfs does not show from the module's own message
    (``state["logged"]``), else from the record of the last successful load, when
    there is one.
    """
    if not state.get("loaded"):
        return {}
    decls = declarations(record)
    before = {}
    if _usable_record(recorded):
        before = _safe_normalise(decls, recorded.get("params"))[0]
    out = {}
    for name, decl in sorted(decls.items()):
        if visible(decl):
            live = state.get("live", {}).get(name)
            if live is None:
                continue
            value = before.get(name, default_text(decl))
            if value is not None and dynamic_major(record, name, value):
                continue
            if live == default_text(decl) and name not in before:
                continue
            out[name] = live
        elif name in (state.get("logged") or {}):
            text = state["logged"][name]["text"]
            if text != default_text(decl) or name in before:
                out[name] = text
        elif name in before:
            out[name] = before[name]
    return out


def device_conflicts(
    record: dict[str, Any], proc_devices: dict[str, Any], leaving: Collection[str] = ()
) -> list[str]:
    """Fixed majors ``record`` needs that another driver holds in /proc/devices.

    ``leaving`` are device names that will be gone by then (their modules are unloaded
    first), so holding a major is not a conflict for them. A major parameter of 0 and
    ``major: dynamic`` fix no major (params.wanted_major).
    """
    manifest = record.get("manifest") or {}
    expect = manifest.get("expect") or {}
    decls = declarations(record)
    params = record.get("params") or {}
    out = []
    for dev in expect.get("proc_devices") or []:
        major = wanted_major(record, dev)
        if major is None:
            continue
        if dev.get("major_param"):
            pname = dev["major_param"]
            value = params.get(pname, (decls.get(pname) or {}).get("default"))
            source = f"parameter {pname}={value}"
        else:
            source = "fixed in the manifest"
        kind = dev.get("kind", "char")
        taken = [
            n for n in owners(proc_devices, major, kind) if n != dev["name"] and n not in leaving
        ]
        if taken:
            out.append(
                f"{record['name']}: {kind} major {major} ({source}) is already taken by "
                f"{', '.join(repr(o) for o in taken)} in /proc/devices; "
                "choose a free major or unload that driver first"
            )
    return out


def plan(
    records: list[dict[str, Any]],
    states: dict[str, dict[str, Any]],
    recorded: dict[str, Any] | None = None,
    files: dict[str, dict[str, Any]] | None = None,
    installed: dict[str, dict[str, Any]] | None = None,
    proc_devices: dict[str, Any] | None = None,
) -> dict[str, Any]:
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
                        f"{rec['name']} must be unloaded ({'; '.join(reasons[name])}) but "
                        f"module {kmod}, which kmodlab does not manage here, uses it; unload "
                        f"{kmod} first"
                    )
                    if msg not in blocked:
                        blocked.append(msg)
                    continue
                hname = holder["name"]
                if actions[hname] in ("reload", "unload"):
                    continue
                if holder["state"] == "present" and actions[name] == "unload":
                    msg = (
                        f"{rec['name']} is absent but {hname} (state present) uses it; make "
                        f"{hname} absent too"
                    )
                    if msg not in blocked:
                        blocked.append(msg)
                    continue
                if holder["state"] == "present":
                    actions[hname] = "reload"
                    reasons[hname].append(f"it uses {rec['name']}, which is reloaded")
                    changed = True
                else:
                    msg = (
                        f"{rec['name']} must be unloaded ({'; '.join(reasons[name])}) but "
                        f"{hname} (state {holder['state']}) uses it and kmodlab leaves it alone; "
                        f"set {hname} present or unload it first"
                    )
                    if msg not in blocked:
                        blocked.append(msg)

    unload = [n for n in reversed(order) if actions[n] in ("reload", "unload")]
    load = [n for n in order if actions[n] in ("load", "reload")]
    for name in unload:
        st = states[name]
        refcount = st.get("refcount") or 0
        managed_holders = [h for h in st.get("holders") or [] if h in by_kmod]
        # Every managed holder is unloaded first (reload or unload, above). A holder may
        # hold more than one reference (a GPIO line it requested counts one each, as
        # does an open file), so with holders the count cannot tell a stranger's
        # reference from theirs: only a module nobody holds is judged by its refcount.
        if refcount > 0 and not managed_holders:
            holders = ", ".join(st.get("holders") or []) or "none"
            blocked.append(
                f"{name} must be unloaded ({'; '.join(reasons[name])}) but is in use (refcount "
                f"{refcount}, holders: {holders}); close the programs using it (open files "
                "under /dev?) and run again"
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
