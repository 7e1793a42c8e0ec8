#!/usr/bin/python
# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Load many kernel modules with their parameters in one call, one modprobe each."""

from __future__ import annotations

DOCUMENTATION = r"""
module: kmod_modprobe
short_description: Load many kernel modules with their parameters in one call
description:
  - Runs C(modprobe -- KMOD ARG...) for each module of O(modules), in the order given,
    as an argument list (never through a shell) and with C(LC_ALL=C), so that the
    messages are the ones the role's failure messages quote.
  - The arguments are O(modules[].params) split as M(community.general.modprobe) splits
    its C(params) (Python's C(shlex.split)), so a shell-quoted value with spaces
    (C('mystring=hello lab')) reaches the kernel as one argument.
  - Does not stop at a module modprobe refuses - the modules after it are still loaded -
    and does not fail for it either - each module's outcome is data (RV(modules),
    RV(failed_modules)), for the caller to put the refused ones back as they were.
    The task fails only for bad arguments or when C(modprobe) cannot be found.
  - One call for all modules, because every task round trip to an emulated guest costs
    seconds, and a loop of M(community.general.modprobe) costs one per module.
  - Like C(modprobe) itself, does nothing for a module that is already loaded (and
    reports it loaded); it does not compare parameters (M(kmodlab.lab.kmod_params)
    does).
  - Runs on the target; needs root.
author:
  - kmodlab (@kmodlab)
attributes:
  check_mode:
    support: full
    description: Runs nothing; reports the commands that would run, and changed when
      there is any module to load.
  diff_mode:
    support: none
    description: Loads modules; there is no file content to show a difference of.
options:
  modules:
    description:
      - The modules to load, in load order.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description:
          - Name the caller knows the module by (the manifest name), as given back in
            RV(modules[].name) and RV(failed_modules).
        type: str
        required: true
      kmod:
        description:
          - Name C(modprobe) loads (the kernel's name of the module).
        type: str
        required: true
      params:
        description:
          - The module's parameters as one shell-quoted string of C(name=value) words, as
            M(community.general.modprobe) takes them (what the C(kmodlab.lab.kmod_args)
            filter gives).
        type: str
        default: ""
notes:
  - Modules that depend on each other must not be given together when the dependency
    may fail (C(modprobe) would load the dependency with its defaults for its user);
    the C(kmodlab.lab.kmod_load) role loads those one at a time, and only the others
    with this module.
seealso:
  - module: community.general.modprobe
  - module: kmodlab.lab.kmod_params
"""

EXAMPLES = r"""
- name: Load two modules in one call
  kmodlab.lab.kmod_modprobe:
    modules:
      - name: hello-5
        kmod: hello_5
        params: "myint=7 'mystring=hello lab'"
      - name: memory
        kmod: memory
  register: loaded

- name: Show what the kernel refused
  ansible.builtin.debug:
    msg: >-
      {{ loaded.modules | selectattr('name', 'in', loaded.failed_modules)
         | map(attribute='msg') }}
  when: loaded.failed_modules | length > 0
"""

RETURN = r"""
modules:
  description: One entry per module of O(modules), in the same order.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: O(modules[].name).
      type: str
    kmod:
      description: O(modules[].kmod).
      type: str
    cmd:
      description: The command run (or, in check mode, that would run), as a list.
      type: list
      elements: str
    rc:
      description: The exit status of C(modprobe); null in check mode.
      type: int
    stdout:
      description: What C(modprobe) printed on its standard output.
      type: str
    stderr:
      description: What C(modprobe) printed on its standard error.
      type: str
    msg:
      description: C(modprobe)'s standard error without surrounding white space, else its
        standard output, else C(modprobe exited with N) when it failed; empty when it
        succeeded silently (and in check mode).
      type: str
  sample:
    - name: hello-5
      kmod: hello_5
      cmd: [/usr/sbin/modprobe, "--", hello_5, myint=7, mystring=hello lab]
      rc: 1
      stdout: ""
      stderr: "modprobe: ERROR: could not insert 'hello_5': Invalid argument\n"
      msg: "modprobe: ERROR: could not insert 'hello_5': Invalid argument"
failed_modules:
  description: O(modules[].name) of the modules C(modprobe) failed for, in order.
  returned: always
  type: list
  elements: str
  sample: [hello-5]
"""

import shlex
from typing import Any

from ansible.module_utils.basic import AnsibleModule

ARGUMENT_SPEC = dict(
    modules=dict(
        type="list",
        elements="dict",
        required=True,
        options=dict(
            name=dict(type="str", required=True),
            kmod=dict(type="str", required=True),
            params=dict(type="str", default=""),
        ),
    ),
)


def commands(modprobe: str, modules: list[dict[str, Any]]) -> list[list[str]]:
    """``modprobe -- KMOD ARG...`` per module; ValueError names a module whose params do
    not split (community.general.modprobe: ``shlex.split(params)``)."""
    out = []
    for entry in modules:
        try:
            args = shlex.split(entry["params"] or "")
        except ValueError as exc:
            raise ValueError(f"{entry['name']}: params {entry['params']!r}: {exc}") from None
        out.append([modprobe, "--", entry["kmod"], *args])
    return out


def outcome(rc: int, stdout: str, stderr: str) -> str:
    """The message of one modprobe run: its stderr, else its stdout, else its status."""
    return stderr.strip() or stdout.strip() or (f"modprobe exited with {rc}" if rc else "")


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    modules = module.params["modules"]
    modprobe = module.get_bin_path("modprobe", required=True)
    try:
        cmds = commands(modprobe, modules)
    except ValueError as exc:
        module.fail_json(msg=str(exc))
        return
    results = []
    for entry, cmd in zip(modules, cmds, strict=True):
        result = dict(name=entry["name"], kmod=entry["kmod"], cmd=cmd)
        if module.check_mode:
            result.update(rc=None, stdout="", stderr="", msg="")
        else:
            rc, stdout, stderr = module.run_command(cmd, environ_update={"LC_ALL": "C"})
            result.update(rc=rc, stdout=stdout, stderr=stderr, msg=outcome(rc, stdout, stderr))
        results.append(result)
    failed = [r["name"] for r in results if r["rc"]]
    changed = bool(results) if module.check_mode else any(r["rc"] == 0 for r in results)
    module.exit_json(changed=changed, modules=results, failed_modules=failed)


if __name__ == "__main__":
    main()
