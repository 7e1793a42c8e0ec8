#!/usr/bin/python
# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""kmodlab.lab.kmod_packages: install, commit or roll back prebuilt kernel module packages.

Runs on the managed host (Debian, dpkg; no compiler, headers or DKMS needed). The action
plugin of the same name (plugins/action/kmod_packages.py) reads the .deb files on the
controller and passes their content. The decisions are in ``module_utils/deb_plan.py``
(pure), the work in ``module_utils/deb_exec.py``.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: kmod_packages
short_description: Install, commit or roll back prebuilt kernel module packages on a host
description:
  - The host side of the fleet rollout. Takes the Debian packages the container builder made
    (one per module and kernel ABI), keeps them in a package store on the host, installs them
    with C(dpkg) and records the rollout in a local fact, so that a health gate can decide
    between O(state=commit) and O(state=rollback) without the controller.
  - One call per host and phase, because every task round trip to an emulated guest costs
    seconds. The action plugin of the same name (controller side) reads each O(packages[].path),
    checks its sha256 and passes the content; the module itself never contacts the controller.
  - O(state=present) writes each package whose kernel ABI is installed on the host
    (C(/lib/modules/ABI/modules.order) exists, or dpkg has C(linux-image-ABI) installed) to
    C(STORE/ABI/FILE) (atomically, 0644) unless the store has it with that digest; installs, in
    one C(dpkg -i) call with C(KMODLAB_DEFER_DEPMOD=1), every package not installed at that
    version with that content (dpkg's version and the digest the state recorded); purges the
    packages of every module whose record says V(absent); then runs C(depmod -a ABI) once per
    kernel touched. Packages for kernels not installed are skipped (RV(skipped_abis)). The
    modules are recorded as C(pending) in the state; C(good) is not touched.
  - Fails before changing anything when DKMS has a module to install registered
    (C(/var/lib/dkms/NAME)), as a package would put a second copy beside it.
  - When C(dpkg -i) fails, the packages of that batch are put back as they were (purged when
    they were not installed, the previous version installed again from the store when they
    were); the failure names each package dpkg refused with dpkg's message, and says whether
    the host is back where it was. The state is not changed.
  - O(state=commit) makes C(pending) the new C(good) (merged over it; modules not in
    C(pending) stay; modules C(pending) removed go) and clears C(pending); then prunes the store
    files that are neither C(good) nor among the newest O(keep) others of their package.
  - O(state=rollback) installs the C(good) versions of the modules in C(pending) again from
    the store (a downgrade, with the same deferred C(depmod)), purges the modules that have no
    C(good) version, clears C(pending), and returns RV(records) for the load stage. Without
    C(pending) it changes nothing.
  - The state is a static local fact (JSON), readable as C(ansible_local.kmodlab_rollout),
    written atomically; its last 20 actions are kept in C(history).
version_added: "0.3.0"
author:
  - kmodlab (@kmodlab)
options:
  state:
    description:
      - V(present) installs the packages and records them as pending.
      - V(commit) makes the pending set good and prunes the store.
      - V(rollback) puts the good set back and clears pending.
    type: str
    choices: [present, commit, rollback]
    default: present
  packages:
    description:
      - Package descriptors, as the container builder returns them (fleet-spec), with
        C(content) in place of C(path) (the action plugin does that).
      - Used with O(state=present) only.
    type: list
    elements: dict
    default: []
    suboptions:
      module:
        description: Module name (the manifest's C(name)).
        type: str
        required: true
      kmod:
        description: The kernel's name of the module (C(name) with C(-) as C(_)).
        type: str
      version:
        description: The module's version, also the package's version.
        type: str
        required: true
      abi:
        description: Kernel release (C(uname -r)) the package is built for.
        type: str
        required: true
      package:
        description: Debian package name, C(kmodlab-MODULE-modules-ABI).
        type: str
        required: true
      file:
        description: File name in the store, C(PACKAGE_VERSION_ARCH.deb).
        type: str
        required: true
      sha256:
        description: SHA-256 of the .deb file.
        type: str
        required: true
      content:
        description:
          - The .deb file, base64. The action plugin sets it from O(packages[].path).
          - May be left out when the store already has the file with that digest.
        type: str
      path:
        description: Controller path of the .deb; read by the action plugin, ignored here.
        type: str
      depends:
        description: kmodlab packages this one depends on; they are installed in the same call.
        type: list
        elements: str
        default: []
      signer:
        description: Signer of the module file (recorded).
        type: str
      sig_key:
        description: Key id of the module file's signature (recorded).
        type: str
      cache_key:
        description: The builder's cache key (not used on the host).
        type: str
      compiled:
        description: Whether the builder compiled it or took it from its cache (not used).
        type: bool
  records:
    description:
      - Selection records (C(kmodlab.lab.selection)) of the modules being rolled out; each is
        stored as its module's C(record), and a record with C(state=absent) has that module's
        packages purged.
      - Used with O(state=present) only.
    type: list
    elements: dict
    default: []
  store:
    description: Folder of the package store on the host, one subfolder per kernel ABI.
    type: path
    default: /var/cache/kmodlab/packages
  fact_path:
    description: The rollout state file (a static local fact).
    type: path
    default: /etc/ansible/facts.d/kmodlab_rollout.fact
  keep:
    description: Store files kept per package on commit besides the good (and pending) ones.
    type: int
    default: 1
attributes:
  check_mode:
    description: Reports what would be installed, removed, pruned and recorded; changes nothing.
    support: full
  diff_mode:
    description: Shows no diff.
    support: none
  platform:
    description: Debian hosts (dpkg 1.19 or newer), run as root.
    support: full
    platforms: posix
notes:
  - V(changed) with O(state=present) means packages were installed or removed; writing only
    the store or the state (RV(state_changed)) does not count.
  - The packages' maintainer scripts run C(depmod) themselves unless C(KMODLAB_DEFER_DEPMOD) is
    set; this module sets it and runs C(depmod) once per kernel (tens of seconds each under
    emulation).
"""

EXAMPLES = r"""
- name: Install the built packages and record them as pending
  kmodlab.lab.kmod_packages:
    packages: "{{ kmodlab_built_packages }}"
    records: "{{ kmodlab_selection }}"
  register: rollout

- name: The health gate passed
  kmodlab.lab.kmod_packages:
    state: commit

- name: The health gate failed
  kmodlab.lab.kmod_packages:
    state: rollback
  register: back

- name: Load the previous versions with their previous parameters again
  ansible.builtin.include_role:
    name: kmodlab.lab.kmod_load
  vars:
    kmod_load_selection: "{{ back.records }}"
"""

RETURN = r"""
rollout:
  description: The state file's content after the call (predicted in check mode).
  returned: always
  type: dict
  contains:
    schema:
      description: Format version, 1.
      type: int
      returned: always
    good:
      description: Module name to entry of the last set that passed its health gate.
      type: dict
      returned: always
    pending:
      description: Module name to entry installed by the current rollout, or null.
      type: dict
      returned: always
    history:
      description: The last 20 actions, each with C(when), C(action), C(modules).
      type: list
      elements: dict
      returned: always
  sample:
    schema: 1
    good: {}
    pending:
      hello-5:
        version: 1.1.0
        signer: kmodlab lab module signing key
        sig_key: "AA:BB"
        when: "2025-01-01T00:00:00Z"
        packages:
          6.1.0-57-amd64:
            package: kmodlab-hello-5-modules-6.1.0-57-amd64
            file: kmodlab-hello-5-modules-6.1.0-57-amd64_1.1.0_amd64.deb
            sha256: "0f0e"
        record: {name: hello-5, state: present}
    history: [{when: "2025-01-01T00:00:00Z", action: install, modules: {hello-5: 1.1.0}}]
installed:
  description: Packages installed (or that would be), each with C(package), C(version), C(abi).
  returned: always
  type: list
  elements: dict
  sample: [{package: kmodlab-hello-5-modules-6.1.0-57-amd64, version: 1.1.0, abi: 6.1.0-57-amd64}]
removed:
  description: Packages purged (or that would be), each with C(package), C(version), C(abi).
  returned: always
  type: list
  elements: dict
depmod:
  description: Kernel ABIs C(depmod -a) ran (or would run) for.
  returned: always
  type: list
  elements: str
skipped_abis:
  description: Kernel ABIs given packages (or good versions) for that are not installed here.
  returned: always
  type: list
  elements: str
records:
  description:
    - O(state=rollback) only (empty otherwise); the records of the good modules, dependencies
      first, plus a record with C(state=absent) for each module that had no good version.
    - Pass them to the C(kmod_load) role as its selection.
  returned: always
  type: list
  elements: dict
written:
  description: Store files written (or that would be), as C(ABI/FILE).
  returned: always
  type: list
  elements: str
pruned:
  description: Store files deleted on commit (or that would be), as C(ABI/FILE).
  returned: always
  type: list
  elements: str
state_changed:
  description: Whether the state file changed (or would change).
  returned: always
  type: bool
host_packages:
  description: After a failed C(dpkg -i), each package of the batch and its version and status now.
  returned: failure of dpkg
  type: dict
restored:
  description: After a failed C(dpkg -i), whether the host has the packages it had before.
  returned: failure of dpkg
  type: bool
dpkg_output:
  description: The last lines of dpkg's output when dpkg failed.
  returned: failure of dpkg
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kmodlab.lab.plugins.module_utils.deb_exec import Executor, Paths

ARGUMENT_SPEC = {
    "state": {"type": "str", "default": "present", "choices": ["present", "commit", "rollback"]},
    "packages": {
        "type": "list",
        "elements": "dict",
        "default": [],
        "options": {
            "module": {"type": "str", "required": True},
            "kmod": {"type": "str"},
            "version": {"type": "str", "required": True},
            "abi": {"type": "str", "required": True},
            "package": {"type": "str", "required": True},
            "file": {"type": "str", "required": True},
            "sha256": {"type": "str", "required": True},
            # no_log: the base64 of a .deb is not secret, but echoing it back in the task's
            # result (invocation) would make the result as big as the packages.
            "content": {"type": "str", "no_log": True},
            "path": {"type": "str"},
            "depends": {"type": "list", "elements": "str", "default": []},
            "signer": {"type": "str"},
            "sig_key": {"type": "str", "no_log": False},
            "cache_key": {"type": "str", "no_log": False},
            "compiled": {"type": "bool"},
        },
    },
    "records": {"type": "list", "elements": "dict", "default": []},
    "store": {"type": "path", "default": "/var/cache/kmodlab/packages"},
    "fact_path": {"type": "path", "default": "/etc/ansible/facts.d/kmodlab_rollout.fact"},
    "keep": {"type": "int", "default": 1},
}

# Where kernels keep their modules and DKMS its own; module-level so tests can move them.
LIB_MODULES = "/lib/modules"
DKMS_TREE = "/var/lib/dkms"


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    Executor(module, Paths(lib_modules=LIB_MODULES, dkms_tree=DKMS_TREE)).main()


if __name__ == "__main__":
    main()
