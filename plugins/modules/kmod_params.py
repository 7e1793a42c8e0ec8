#!/usr/bin/python
# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only probe of kernel modules: live parameters versus wanted ones, and a plan."""

from __future__ import annotations

DOCUMENTATION = r"""
module: kmod_params
short_description: Compare the live parameters of kernel modules with the wanted ones
description:
  - Reads, for a list of modules in one call, whether each is loaded, its live
    parameters under C(/sys/module/KMOD/parameters), its reference count and holders,
    the files that configure it, the record of the last successful load in the local
    fact, and the installed module's C(srcversion).
  - Normalises the wanted parameters to what the kernel shows (bool C(Y)/C(N), arrays
    C(1,2,3), a fixed-size array with all its elements, integers in decimal, charp as
    the string) and lists the mismatches.
  - Reads the value of a parameter that sysfs cannot show from the module's own kernel
    message since its last load, when the manifest gives a C(log) regex for it.
  - Reads the C(/dev) nodes of the manifest (C(expect.dev_nodes)) of loaded modules.
  - Plans what to do with each module (C(load), C(reload), C(unload) or C(none)),
    with the reasons, and the order to unload and load in. A module is reloaded only
    when a live value differs (in sysfs, or in its own message for a parameter sysfs
    cannot show), when a parameter that cannot be read back changed since the last
    load, when the installed module changed, or when a C(/dev) node of it is missing
    or has another type, device number or mode. Modules that use a reloaded module
    are reloaded with it.
  - Reports fixed major numbers that another driver holds in C(/proc/devices), and
    unloads that cannot happen because the module is in use.
  - With O(signing), checks the installed file of every module to load or reload as the
    kernel would (signer, key id, the RSA signature over the module's content) and
    reports the files it would refuse, before anything is unloaded.
  - With O(kernel_log_since), also returns the kernel's messages about each module
    since that point, the lines among them that explain a refused load (without call
    traces and register dumps), the parameters the kernel refused or ignored, and the
    load and unload message patterns of the manifest that did not appear.
  - Never changes anything (C(changed) is always false).
  - Runs on the target; needs root to read C(/dev/kmsg) and parameters of mode 0600.
author:
  - kmodlab (@kmodlab)
attributes:
  check_mode:
    support: full
    description: Read-only; runs normally in check mode.
  diff_mode:
    support: none
    description: Reads only; there is nothing to show a difference of.
options:
  modules:
    description:
      - Resolved records of the C(kmodlab_modules) lookup, in load order. The keys
        used are C(name), C(kmod), C(state), C(params), C(manifest.parameters),
        C(manifest.depends), C(manifest.expect.proc_devices) and C(manifest.expect.dmesg).
      - An optional key C(files) maps a path to the content it should have, or to
        null when the file should not exist; the probe reports which differ.
    type: list
    elements: dict
    required: true
  fact_path:
    description:
      - Local fact file holding the last successful load (JSON, key C(modules)).
    type: path
    default: /etc/ansible/facts.d/kmodlab_kmod_load.fact
  kernel_log_since:
    description:
      - Sequence number of C(/dev/kmsg) (from an earlier call's RV(kernel_log_cursor)).
        When set, each module gets RV(modules[].kernel_log), RV(modules[].param_errors)
        and RV(modules[].messages_missing) for the messages since then.
    type: int
  signing:
    description:
      - The certificate every module to load must be signed with, as
        M(kmodlab.lab.signing_key) returns it; the keys used are C(der_b64) (the DER
        certificate, base64), C(signer), C(sig_key) and C(fingerprint) (for messages).
      - Null, no signature check.
    type: dict
  root:
    description:
      - Directory under which C(/sys), C(/proc), C(/dev/kmsg) and C(/etc) are read.
        Only for tests and chroots.
    type: path
    default: /
notes:
  - C(community.general.modprobe) does not compare the parameters of a module that is
    already loaded; this module does, so that a role reloads only what differs.
"""

EXAMPLES = r"""
- name: Probe the selected modules
  kmodlab_kmod_params:
    modules: "{{ __kmod_load_probe_input }}"
  register: __kmod_load_probe

- name: Read what the kernel said about hello-5 since the probe
  kmodlab_kmod_params:
    modules: "{{ __kmod_load_resolved | selectattr('name', 'equalto', 'hello-5') }}"
    kernel_log_since: "{{ __kmod_load_probe.kernel_log_cursor }}"
  register: __kmod_load_check
"""

RETURN = r"""
modules:
  description: One entry per input module, in input order.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: "Manifest name."
      type: str
    kmod:
      description: "Name the kernel uses."
      type: str
    state:
      description: "Wanted state (present, absent, config)."
      type: str
    loaded:
      description: "Whether /sys/module/KMOD/initstate exists."
      type: bool
    initstate:
      description: "Content of initstate (live, coming, going) or null."
      type: str
    refcount:
      description: "Content of refcnt, or null when not loaded."
      type: int
    holders:
      description: "Modules using this one (/sys/module/KMOD/holders)."
      type: list
    live:
      description: "Visible declared parameters as sysfs shows them."
      type: dict
    wanted:
      description: "Wanted parameters normalised to sysfs text."
      type: dict
    mismatches:
      description: Wanted parameters whose live value differs (loaded only) - param,
        wanted, live; C(source) is C(kernel log) for a parameter sysfs does not show,
        read from the module's message.
      type: list
      elements: dict
    logged:
      description: Parameters sysfs does not show whose value the module printed since
        its last load (manifest C(log)) - text (as sysfs would show it) and line.
      type: dict
    dev_nodes:
      description: Per C(expect.dev_nodes) path of a loaded module - exists, type, mode,
        major, minor.
      type: dict
    dev_nodes_foreign:
      description: Node paths where something else stands (another type or device
        number); loading the module again does not replace it, so it is removed first.
      type: list
    missing:
      description: "Visible declared parameters without a sysfs file."
      type: list
    unreadable:
      description: "Parameter files that could not be read."
      type: list
    params_args:
      description: "Wanted parameters as a shell-quoted modprobe string."
      type: str
    action:
      description: "load, reload, unload or none."
      type: str
    reasons:
      description: "Why the action is needed."
      type: list
    recorded:
      description: "This module's entry of the local fact, or null."
      type: dict
    previous:
      description: What the module runs with now (loaded, params, params_args), to
        load it again if loading the wanted parameters fails.
      type: dict
    files:
      description: Per path given in C(files) - exists, content, wanted (whether it
        should exist) and changed.
      type: dict
    files_changed:
      description: "Paths whose content differs from the wanted one."
      type: list
    installed:
      description: The installed module file (filename), its srcversion, version, name
        and GNU build ID, and the signer and key identifier (sig_key, C(1A:2B:...)) of
        its signature (null when unsigned).
      type: dict
    kernel_log:
      description: Kernel messages naming the module since O(kernel_log_since) (last 20).
      returned: when O(kernel_log_since) is set
      type: list
    kernel_explain:
      description: The kernel lines since O(kernel_log_since) that explain a refused
        load - the module's own lines and the warnings and errors around its failure,
        without stack frames and register dumps (last 6).
      returned: when O(kernel_log_since) is set
      type: list
    param_errors:
      description: Parameters the kernel refused or ignored (param, value, message).
      returned: when O(kernel_log_since) is set
      type: list
    messages_missing:
      description: Manifest dmesg patterns (load, unload) not seen since the cursor.
      returned: when O(kernel_log_since) is set
      type: dict
load:
  description: Modules to load or reload, in load order.
  returned: always
  type: list
  elements: str
unload:
  description: Modules to unload (reloads and absent ones), in reverse load order.
  returned: always
  type: list
  elements: str
blocked:
  description: Unloads that cannot happen (module in use), as messages.
  returned: always
  type: list
  elements: str
conflicts:
  description: Fixed majors taken by another driver in /proc/devices, as messages.
  returned: always
  type: list
  elements: str
refused:
  description:
    - Modules to load or reload whose installed file is not validly signed by the
      O(signing) certificate, as messages naming the module, the file, what was found
      and what was expected.
  returned: always
  type: list
  elements: str
kernel_log_cursor:
  description: Sequence number of the newest /dev/kmsg record, or null when unreadable.
  returned: always
  type: int
kernel_log_source:
  description: Where kernel messages came from (kmsg, dmesg, journalctl or none).
  returned: always
  type: str
fact:
  description: The local fact file (path, exists, content, data).
  returned: always
  type: dict
kernel_release:
  description: Release of the running kernel.
  returned: always
  type: str
"""

import base64
import json
import os
import platform
from collections.abc import Callable
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kmodlab.lab.plugins.module_utils.buildid import build_id
from ansible_collections.kmodlab.lab.plugins.module_utils.files import host_path, read_text
from ansible_collections.kmodlab.lab.plugins.module_utils.kernel_log import (
    failure_lines,
    logged_params,
    mention_regex,
    missing_patterns,
    param_errors,
    read_kernel_log,
)
from ansible_collections.kmodlab.lab.plugins.module_utils.kmod import (
    module_state,
    plan,
    previous_params,
)
from ansible_collections.kmodlab.lab.plugins.module_utils.modinfo import first, parse, signature
from ansible_collections.kmodlab.lab.plugins.module_utils.modsig import (
    problem_for_file,
    public_numbers_from_der,
)
from ansible_collections.kmodlab.lab.plugins.module_utils.nodes import (
    dev_node_problems,
    dev_node_state,
    dev_nodes,
)
from ansible_collections.kmodlab.lab.plugins.module_utils.params import (
    ParamError,
    args_from_texts,
    args_string,
    declarations,
    dynamic_major,
    normalise,
    visible,
)
from ansible_collections.kmodlab.lab.plugins.module_utils.proc_devices import (
    PROC_DEVICES,
    parse_proc_devices,
)

ARGUMENT_SPEC = dict(
    modules=dict(type="list", elements="dict", required=True),
    fact_path=dict(type="path", default="/etc/ansible/facts.d/kmodlab_kmod_load.fact"),
    kernel_log_since=dict(type="int"),
    signing=dict(type="dict"),
    root=dict(type="path", default="/"),
)

KERNEL_LOG_LINES = 20


def _installed(module: AnsibleModule, root: str, kmods: list[str]) -> dict[str, dict[str, Any]]:
    """srcversion, version, build ID, signer and sig_key of the module files modprobe would
    load, by kmod name.

    One modinfo call for all modules; its output is split at each "filename:" line
    (module_utils/modinfo.py). A module modinfo cannot find is left out (nothing to
    compare it with).
    """
    if not kmods:
        return {}
    modinfo = module.get_bin_path("modinfo")
    if not modinfo:
        return {}
    cmd = [modinfo]
    if root != "/":
        cmd += ["-b", root]
    out = module.run_command(cmd + sorted(kmods))[1]
    found = {}
    for fields in parse(out):
        filename = first(fields, "filename")
        if filename is None:
            continue
        kmod = os.path.basename(filename).split(".ko", 1)[0].replace("-", "_")
        info = found.setdefault(kmod, {"filename": filename})
        for key in ("srcversion", "version", "name"):
            if fields.get(key):
                info[key] = fields[key][-1]
        sig = signature(fields)
        info["signer"], info["sig_key"] = sig["signer"], sig["sig_key"]
    out = {}
    for kmod_name, entry in found.items():
        entry["build_id"] = build_id(host_path(root, entry["filename"])).get("build_id")
        out[entry.get("name", kmod_name).replace("-", "_")] = entry
    return {k: v for k, v in out.items() if k in kmods}


def _refused(
    module: AnsibleModule,
    root: str,
    records: list[dict[str, Any]],
    load: list[str],
    installed: dict[str, dict[str, Any]],
    signing: dict[str, Any] | None,
) -> list[str]:
    """Modules to load whose installed file the kernel would refuse: not signed, signed
    by another key, or altered after signing (checked as the kernel does, with modsig)."""
    if not signing or not load:
        return []
    try:
        n, e, serial = public_numbers_from_der(base64.b64decode(signing["der_b64"]))
    except (KeyError, TypeError, ValueError) as exc:
        module.fail_json(msg=f"signing: no usable certificate in der_b64 ({exc})")
    by_name = {rec["name"]: rec for rec in records}
    missing = [by_name[n]["kmod"] for n in load if n not in installed]
    files = _installed(module, root, missing)
    expected = (
        f"expected a signature by {signing.get('signer')} (key id {signing.get('sig_key')}, "
        f"SHA-256 {signing.get('fingerprint')})"
    )
    out = []
    for name in load:
        info = installed.get(name) or files.get(by_name[name]["kmod"])
        if not info:
            continue  # modprobe says it is not installed; the load itself reports it
        problem = problem_for_file(host_path(root, info["filename"]), n, e, serial)
        if problem:
            out.append(
                f"{name}: the kernel would refuse {info['filename']} under Secure Boot: "
                f"{problem}; {expected}. Nothing was unloaded: {name} stays as it runs. "
                "Rebuild it (dkms) or put back a file signed with the project key."
            )
    return out


def _runner(module: AnsibleModule) -> Callable[[list[str]], tuple[int, str, str]]:
    """run(argv) -> (rc, stdout, stderr) with the module's run_command; rc 127 when the
    program is not installed (run_command would fail the module)."""

    def run(argv: list[str]) -> tuple[int, str, str]:
        program = module.get_bin_path(argv[0])
        if not program:
            return 127, "", f"{argv[0]}: command not found"
        return module.run_command([program, *argv[1:]])

    return run


def _fact(root: str, path: str) -> dict[str, Any]:
    content = read_text(host_path(root, path))
    data = None
    if content is not None:
        try:
            data = json.loads(content)
        except ValueError:
            data = None
    return {"path": path, "exists": content is not None, "content": content, "data": data}


def _check_record(module: AnsibleModule, rec: dict[str, Any], index: int) -> None:
    for key in ("name", "kmod", "state"):
        if key not in rec:
            module.fail_json(
                msg=f"modules[{index}] lacks {key!r}; pass records of the kmodlab_modules lookup"
            )
    if rec["state"] not in ("present", "absent", "config"):
        module.fail_json(
            msg=f"{rec['name']}: state {rec['state']!r} is not present, absent or config"
        )


def run(module: AnsibleModule) -> dict[str, Any]:
    params = module.params
    root = params["root"]
    records = params["modules"]
    for index, rec in enumerate(records):
        _check_record(module, rec, index)

    fact = _fact(root, params["fact_path"])
    recorded_all = {}
    if isinstance(fact["data"], dict) and isinstance(fact["data"].get("modules"), dict):
        recorded_all = fact["data"]["modules"]

    states = {}
    wanted = {}
    files = {}
    errors = []
    for rec in records:
        decls = declarations(rec)
        try:
            wanted[rec["name"]] = normalise(decls, rec.get("params"))
            args_string(decls, rec.get("params"))
        except ParamError as exc:
            errors.append(f"{rec['name']}: {exc}")
            continue
        states[rec["name"]] = module_state(root, rec["kmod"], decls)
        if states[rec["name"]]["loaded"]:
            note = f"/sys/module/{rec['kmod']}/notes/.note.gnu.build-id"
            states[rec["name"]]["build_id"] = build_id(host_path(root, note)).get("build_id")
        entry = {}
        for path, content in sorted((rec.get("files") or {}).items()):
            current = read_text(host_path(root, path))
            entry[path] = {
                "exists": current is not None,
                "content": current,
                "wanted": content is not None,
                "changed": current != content,
            }
        files[rec["name"]] = entry
    if errors:
        module.fail_json(msg="; ".join(errors), errors=errors)
    # The installed file of every present module, in one modinfo call: its identity
    # (compared with a loaded module's own srcversion, build ID or version) and the key
    # it is signed with (recorded in the fact at load, so a file signed again is reloaded).
    by_kmod = _installed(
        module, root, [rec["kmod"] for rec in records if rec["state"] == "present"]
    )
    installed = {rec["name"]: by_kmod[rec["kmod"]] for rec in records if rec["kmod"] in by_kmod}

    proc_devices = parse_proc_devices(read_text(host_path(root, PROC_DEVICES)))
    kernel_log = read_kernel_log(root, _runner(module))
    log, source = kernel_log["records"], kernel_log["source"]
    messages = [record[2] for record in log]
    for rec in records:
        st = states[rec["name"]]
        st["logged"] = logged_params(rec, messages) if st["loaded"] else {}
        st["dev_nodes"] = {}
        if st["loaded"]:
            for node in dev_nodes(rec):
                st["dev_nodes"][node["path"]] = dev_node_state(root, node["path"])
    options_changed = {
        name: {
            "options_changed": any(
                f["changed"] for p, f in entry.items() if p.startswith("/etc/modprobe.d/")
            )
        }
        for name, entry in files.items()
    }
    decision = plan(records, states, recorded_all, options_changed, installed, proc_devices)
    refused = _refused(module, root, records, decision["load"], installed, params.get("signing"))

    seqs = [record[0] for record in log if record[0] is not None]
    cursor = seqs[-1] if seqs else None
    since = params["kernel_log_since"]
    recent_records = []
    if since is not None:
        recent_records = [(level, msg) for seq, level, msg in log if seq is None or seq > since]
    recent = [record[1] for record in recent_records]

    out = []
    for rec in records:
        name = rec["name"]
        decls = declarations(rec)
        st = states[name]
        mismatches = []
        if st["loaded"]:
            for pname, text in wanted[name].items():
                if not visible(decls[pname]) or dynamic_major(rec, pname, text):
                    continue
                live = st["live"].get(pname)
                if live is not None and live != text:
                    mismatches.append({"param": pname, "wanted": text, "live": live})
            for pname, text in wanted[name].items():
                logged = st["logged"].get(pname)
                if not visible(decls[pname]) and logged and logged["text"] != text:
                    mismatches.append(
                        {
                            "param": pname,
                            "wanted": text,
                            "live": logged["text"],
                            "source": "kernel log",
                            "line": logged["line"],
                        }
                    )
        recorded = recorded_all.get(name)
        before = previous_params(rec, st, recorded)
        item = {
            "name": name,
            "kmod": rec["kmod"],
            "state": rec["state"],
            "loaded": st["loaded"],
            "initstate": st["initstate"],
            "refcount": st["refcount"],
            "holders": st["holders"],
            "live": st["live"],
            "wanted": wanted[name],
            "mismatches": mismatches,
            "missing": st["missing"] if st["loaded"] else [],
            "unreadable": st["unreadable"],
            "params_args": args_string(decls, rec.get("params")),
            "action": decision["actions"][name],
            "reasons": decision["reasons"][name],
            "recorded": recorded,
            "previous": {
                "loaded": st["loaded"],
                "params": before,
                "params_args": args_from_texts(before),
            },
            "files": files[name],
            "files_changed": [p for p, f in files[name].items() if f["changed"]],
            "installed": installed.get(name, {}),
            "logged": st["logged"],
            "dev_nodes": st["dev_nodes"],
            "dev_nodes_foreign": [
                problem[0]
                for problem in dev_node_problems(rec, st["dev_nodes"], proc_devices)
                if problem[2]
            ],
        }
        if since is not None:
            regex = mention_regex(rec)
            mentioning = [line for line in recent if regex.search(line)]
            dmesg = ((rec.get("manifest") or {}).get("expect") or {}).get("dmesg") or {}
            item["kernel_log"] = mentioning[-KERNEL_LOG_LINES:]
            item["kernel_explain"] = failure_lines(recent_records, regex, dmesg.get("unload"))
            item["param_errors"] = param_errors(mentioning)
            item["messages_missing"] = {
                "load": missing_patterns(dmesg.get("load"), recent),
                "unload": missing_patterns(dmesg.get("unload"), recent),
            }
        out.append(item)

    return {
        "changed": False,
        "modules": out,
        "load": decision["load"],
        "unload": decision["unload"],
        "blocked": decision["blocked"],
        "conflicts": decision["conflicts"],
        "refused": refused,
        "kernel_log_cursor": cursor,
        "kernel_log_source": source,
        "fact": fact,
        "kernel_release": platform.release(),
    }


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module.exit_json(**run(module))


if __name__ == "__main__":
    main()
