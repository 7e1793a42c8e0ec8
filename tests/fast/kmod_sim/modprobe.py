# Stand-in for community.general.modprobe in the kmod_load simulation tests: the same
# options and results, acting on the pretend kernel (simkernel.py) instead of a real one.
# No shebang: Ansible runs a Python module without one as if it had #!/usr/bin/python
# (interpreter discovery), and ansible-test allows that shebang only under plugins/modules/.
from __future__ import annotations

DOCUMENTATION = r"""
module: modprobe
short_description: Simulation stand-in for community.general.modprobe
description: Loads and unloads modules of the kmodlab pretend kernel (tests only).
options:
  name: {type: str, required: true, description: Module name.}
  state: {type: str, choices: [absent, present], default: present, description: State.}
  params: {type: str, default: '', description: Parameters.}
  persistent:
    type: str
    choices: [disabled, absent, present]
    default: disabled
    description: Ignored.
"""

import os  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["absent", "present"]),
            params=dict(type="str", default=""),
            persistent=dict(
                type="str", default="disabled", choices=["disabled", "absent", "present"]
            ),
        ),
        supports_check_mode=True,
    )
    name = module.params["name"]
    kmod = name.replace("-", "_")
    result = dict(
        changed=False, name=name, params=module.params["params"], state=module.params["state"]
    )
    loaded = os.path.exists(f"/sys/module/{kmod}/initstate")
    kernel = os.environ["KMODLAB_SIM_KERNEL"]
    if module.params["state"] == "present" and not loaded:
        if not module.check_mode:
            cmd = [sys.executable, kernel, "load", kmod, *shlex.split(module.params["params"])]
            rc, out, err = module.run_command(cmd)
            if rc != 0:
                module.fail_json(msg=err, rc=rc, stdout=out, stderr=err, **result)
        result["changed"] = True
    elif module.params["state"] == "absent" and loaded:
        if not module.check_mode:
            rc, out, err = module.run_command([sys.executable, kernel, "unload", kmod])
            if rc != 0:
                module.fail_json(msg=err, rc=rc, stdout=out, stderr=err, **result)
        result["changed"] = True
    module.exit_json(**result)


if __name__ == "__main__":
    main()
