#!/usr/bin/python
# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""kmodlab.lab.dkms: add, build and install DKMS packages where needed; prune old versions.

Runs on the managed host. It must not import ``kmodlab`` (not installed there); its code
lives in ``plugins/module_utils``: ``dkms_plan.py`` (the pure planner: a snapshot of the
host in, typed steps out), ``dkms_exec.py`` (gathers the snapshot, runs the steps with the
build concurrency described there, reports) and ``dkms_tree.py`` (reads dkms's tree).

Installing and pruning are two calls (O(stage)), so that a health gate can sit between
them: the install leaves the previous version registered and built, a rollback target.

Signing: this module makes no key; it re-signs in place when the certificate dkms signs
with changes. When the key dkms itself generates on its first build
(``/var/lib/dkms/mok.key``, or the ``mok_signing_key`` of framework.conf) is missing, the
first build runs alone, so that dkms creates it once; the other builds follow together.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: dkms
short_description: Add, build and install DKMS packages where needed, and prune old versions
description:
  - Brings a list of DKMS packages to their wanted state for one or more kernels in a single
    module invocation, because every task round trip to a slow (emulated) guest costs seconds
    and a DKMS build there costs minutes.
  - Reads the state of its packages from dkms's own tree (O(dkms_tree)), the way
    C(dkms status) does, without forking C(dkms) (seconds per package in an emulated guest),
    and acts only on a difference. It tells the states and warnings C(dkms status) shows
    (added, built, installed, missing built modules, an installed copy that differs from
    its build); a version with nothing built whose source folder is gone is C(broken), as
    dkms 3.1 says.
  - Fails before changing anything when a package to be present is also installed on the
    host as a prebuilt kmodlab package (C(kmodlab-NAME-modules-ABI), the deb delivery), as
    DKMS would put a second copy beside it.
  - The work is split in two stages (O(stage)), so that a health check can run between them.
    V(install) puts the wanted versions in place; V(prune) then removes the versions they
    replaced, once the wanted ones are installed.
  - With O(stage=install), for a package with O(packages[].state=present) it writes the given
    O(packages[].files) into O(packages[].source_path) when they differ, then runs C(dkms add),
    C(dkms build) and C(dkms install) only for the steps that are missing for each kernel of
    O(kernels). A package already built or installed is rebuilt when its sources changed since
    that build (a digest of the source folder is recorded beside each build), when dkms
    reports a built module missing, or when its source folder is gone; an installed module
    that dkms reports as different from its build is reinstalled.
  - The fingerprint of the certificate dkms signs with (C(mok_certificate) in
    C(framework.conf) and C(framework.conf.d/*.conf)) is recorded beside each build too.
    When it changes (a new project key), every built module is signed again in place with
    the kernel's C(sign-file) and the new key (old signature stripped), built and installed
    copies alike; nothing is compiled and no C(depmod) runs. The same key changes nothing.
  - When another version of the same package is registered, the wanted version is installed
    with C(--force-version-override) (so a downgrade is honoured) and checked in the DKMS tree
    and C(/lib/modules). The other versions stay registered (built, no longer installed) with
    their sources, as a rollback target; RV(prunable) names the packages that have such
    versions or stale source folders. When the new version fails to build or install, the
    old one stays installed.
  - With O(stage=prune), for each present package whose wanted version is installed (and does
    not differ from its build) for every kernel of O(kernels), the other versions are removed
    from DKMS (all kernels) and their source folders deleted, with the source folders of
    versions no longer registered (such as one whose build failed). A package whose wanted
    version is not installed everywhere is left alone and named in RV(held). Absent packages
    are left to the install stage.
  - Builds of different packages run concurrently in a thread pool (each build works in its
    own C(/var/lib/dkms/NAME/VERSION/build) folder); the builds of one package for several
    kernels run one after the other. When the signing key that dkms would generate on its
    first build (C(/var/lib/dkms/mok.key), or the C(mok_signing_key) of C(framework.conf)) is
    missing, the first build runs alone so that dkms creates it once. The module itself never
    creates a key.
  - A package with O(packages[].depends) (the C(BUILD_DEPENDS) of its C(dkms.conf)) builds
    against the symbols the packages it names export. It is prepared and built only after
    those of them in O(packages) are built and installed for the kernels, and it is not built
    when one of them failed (its earlier build, if any, is left as it was). When a package is
    built again, the installed or built packages that depend on it are rebuilt too, since
    their build recorded the symbols' CRCs of the old one.
  - Installs run one at a time with C(--no-depmod), and C(depmod) runs once per affected
    kernel at the end, instead of once per package (in a TCG guest each depmod costs tens
    of seconds, and concurrent depmods would write the same C(modules.dep)).
  - A package that fails does not stop the others. Its result carries the tail of
    C(make.log); the module fails at the end naming every failed package, and returns
    RV(failed_packages) so a role can record the failure and carry on with the good ones.
  - A version this run added and then could build or install for none of the kernels is
    removed from DKMS again (O(cleanup_failed)), so a later kernel upgrade's
    C(dkms autoinstall) does not trip over it. Its sources stay in O(source_root) for
    debugging, unless the failure was a full disk (C(No space left on device)), in which case
    the source folder this run created goes too (nothing to debug in it, and it takes space
    on the full filesystem).
  - O(packages[].state=absent) (install stage) removes every registered version of the
    package from DKMS (all kernels) and deletes their source folders.
  - Optionally records what is deployed in a static local fact (JSON).
version_added: "0.1.0"
author:
  - kmodlab (@kmodlab)
options:
  packages:
    description: The DKMS packages to manage, one entry per package name.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: DKMS package name (C(PACKAGE_NAME) in C(dkms.conf)).
        type: str
        required: true
      version:
        description:
          - Wanted version (C(PACKAGE_VERSION)).
          - With O(packages[].state=absent) every version is removed, not only this one.
        type: str
        required: true
      state:
        description:
          - V(present) to have it built and installed for O(kernels).
          - V(absent) to remove it from DKMS entirely.
        type: str
        choices: [present, absent]
        default: present
      source_path:
        description:
          - Folder holding the sources and C(dkms.conf).
          - dkms adds sources only from C(SOURCE_ROOT/NAME-VERSION), so this must be that
            folder; defaults to it.
        type: path
      files:
        description:
          - Text files to place in O(packages[].source_path), relative name to content
            (C(dkms.conf) included).
          - Files whose content already matches are not touched; other files in the folder
            are left alone. Omit to use whatever is in the folder.
          - Not used with O(stage=prune).
        type: dict
      executables:
        description:
          - Names in O(packages[].files) to write with mode 0755 instead of 0644, such as a
            C(POST_BUILD) script of C(dkms.conf) (dkms runs it only when it is executable).
          - A file whose content matches but whose mode is not 0755 is written again.
        type: list
        elements: str
        default: []
      depends:
        description:
          - Names of the packages this one builds against (the C(BUILD_DEPENDS) of its
            C(dkms.conf)). Those of them in O(packages) are built and installed first; when
            one of them fails, this one is not built; when one of them is built again, this
            one is rebuilt too.
          - Names not in O(packages) only document the dependency; a cycle fails the call.
        type: list
        elements: str
        default: []
  kernels:
    description:
      - Kernel releases to build and install for (install stage), or on which the wanted
        versions must be installed before the others go (prune stage).
      - Empty means the running kernel.
    type: list
    elements: str
    default: []
  stage:
    description:
      - V(install) writes the sources, adds, builds and installs the wanted versions and
        removes absent packages; other versions of a present package stay registered.
      - V(prune) removes the other versions and stale source folders of the present packages
        whose wanted version is installed for every kernel of O(kernels).
    type: str
    choices: [install, prune]
    default: install
  jobs:
    description: Most builds to run at the same time. V(0) means the number of CPUs.
    type: int
    default: 0
  log_lines:
    description: Trailing lines of C(make.log) (or of the dkms output) a failed package returns.
    type: int
    default: 40
  cleanup_failed:
    description:
      - Remove from DKMS a version that this run added but could build or install for none of
        the kernels.
      - After a full disk, also delete the source folder this run created for it.
    type: bool
    default: true
  fact_path:
    description:
      - Static local fact file to record deployed packages in (JSON, name to version,
        kernel, status), for example C(/etc/ansible/facts.d/kmodlab_dkms_module.fact).
      - Entries of packages not in O(packages) are kept; absent packages are dropped.
      - Not written when omitted.
    type: path
  source_root:
    description: dkms's source tree (C(source_tree) in C(/etc/dkms/framework.conf)).
    type: path
    default: /usr/src
  dkms_tree:
    description: dkms's own tree (C(dkms_tree) in C(/etc/dkms/framework.conf)).
    type: path
    default: /var/lib/dkms
attributes:
  check_mode:
    description: Reports what would change; only reads the DKMS tree and the sources.
    support: full
  diff_mode:
    description: C(dkms status) lines of each changed package before and after, and changed sources.
    support: full
  platform:
    description: Linux hosts with dkms 2.3 or newer (C(--no-depmod)); checked with dkms 3.0.10.
    support: full
    platforms: posix
notes:
  - A same-version rebuild (sources changed, version not bumped) removes that version
    (for every kernel) before building it again, so a failing rebuild leaves no module
    installed. Bump the version to get the keep-the-old-one guarantee.
  - Pruning removes an old version for every kernel; other kernels get the new one from
    dkms's own C(autoinstall) when their turn comes.
  - The module makes no signing key; the signing stage owns it and tells dkms which to use.
"""

EXAMPLES = r"""
- name: Build and install two packages for the running kernel
  kmodlab.lab.dkms:
    packages:
      - name: hello-5
        version: "1.2"
        files:
          hello-5.c: "{{ lookup('ansible.builtin.file', 'hello-5/hello-5.c', rstrip=false) }}"
          Kbuild: "obj-m := hello-5.o\n"
          dkms.conf: "{{ lookup('ansible.builtin.template', 'usr/src/dkms.conf.j2') }}"
      - name: chardev
        version: "0.3"
    fact_path: /etc/ansible/facts.d/kmodlab_dkms_module.fact
  register: dkms_run

- name: Once the new versions are checked, remove the versions they replaced
  kmodlab.lab.dkms:
    stage: prune
    packages:
      - name: hello-5
        version: "1.2"
      - name: chardev
        version: "0.3"
  when: dkms_run.prunable | length > 0

- name: Build a package that calls a function another one exports, after that one
  kmodlab.lab.dkms:
    packages:
      - name: symexport
        version: "1.0.0"
      - name: symuse
        version: "1.0.0"
        depends: [symexport]

- name: Remove a package from DKMS entirely
  kmodlab.lab.dkms:
    packages:
      - name: hello-5
        version: "1.2"
        state: absent

- name: Build for the running kernel and for one that is installed but not running
  kmodlab.lab.dkms:
    kernels:
      - "{{ ansible_facts.kernel }}"
      - 6.1.0-56-amd64
    packages:
      - name: hello-5
        version: "1.2"
"""

RETURN = r"""
stage:
  description: The stage that ran (O(stage)).
  returned: always
  type: str
  sample: install
kernel:
  description: The first (or only) kernel release of RV(kernels).
  returned: always
  type: str
  sample: 6.1.0-56-amd64
kernels:
  description: Kernel releases the packages were managed for (O(kernels), or the running one).
  returned: always
  type: list
  elements: str
  sample: [6.1.0-56-amd64]
packages:
  description: One result per package, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Package name.
      type: str
      returned: always
    version:
      description: Wanted version.
      type: str
      returned: always
    state:
      description: Wanted state.
      type: str
      returned: always
    kernel:
      description: The first kernel release of RV(kernels).
      type: str
      returned: always
    kernels:
      description:
        - What happened for each kernel, keyed by kernel release.
        - C(before), C(after) and C(status) as the package's own keys, for that kernel;
          C(actions) the kernel's own steps (C(build), C(uninstall), C(install)); C(failed),
          and C(step) and C(msg) when a step failed for that kernel.
      type: dict
      returned: always
      sample: {"6.1.0-56-amd64": {"before": {}, "after": {"1.2": "installed"},
               "status": "installed", "actions": [build, install], "failed": false}}
    before:
      description:
        - Every registered version's status for the first kernel before the run.
        - C(added), C(built), C(installed) or C(broken).
      type: dict
      returned: always
      sample: {"1.1": "installed"}
    after:
      description: The same after the run (predicted in check mode).
      type: dict
      returned: always
      sample: {"1.1": "built", "1.2": "installed"}
    status:
      description:
        - Status of the wanted version after the run, or C(absent).
        - With several kernels, the lowest of them (C(absent), C(broken), C(added),
          C(built), C(installed)).
      type: str
      returned: always
      sample: installed
    changed:
      description: Whether this package changed (or would change, in check mode).
      type: bool
      returned: always
    actions:
      description:
        - Steps taken, in order (planned ones, in check mode).
        - For example C(sources), C(add), C(build), C(install), C(remove 1.1), C(delete PATH).
        - With several kernels, the steps for one kernel name it, as C(build KERNEL).
      type: list
      elements: str
      returned: always
      sample: [sources, add, build, install]
    files_changed:
      description: Source files written (or that would be written).
      type: list
      elements: str
      returned: always
    removed_versions:
      description: Versions removed from DKMS (absent packages, prune).
      type: list
      elements: str
      returned: always
    rebuilt_because:
      description:
        - Why the wanted version, already built, was built again (its sources changed, a
          dependency was rebuilt, the signing certificate dkms uses changed); null when it
          was not.
      type: str
      returned: always
    notes:
      description:
        - Why something was left alone, such as sources gone under a working build, or a
          prune held back because the wanted version is not installed everywhere.
        - Each is also a warning.
      type: list
      elements: str
      returned: always
    timing:
      description:
        - For each dkms step this run took (C(add), C(build), C(install)), when it started
          (seconds after the module started) and how long it took, in seconds.
        - Shows where a slow run spends its time, such as builds waiting for each other.
      type: dict
      returned: always
      sample: {"add": [0.4, 2.1], "build": [2.5, 33.0], "install": [35.6, 3.7]}
    failed:
      description: Whether this package failed (for any kernel).
      type: bool
      returned: always
    step:
      description: The step that failed (the first failure).
      type: str
      returned: when failed
      sample: build
    msg:
      description: What went wrong and what to do.
      type: str
      returned: when failed
    rc:
      description: Exit status of the failed command.
      type: int
      returned: when a command failed
    stdout:
      description: Last lines of the failed command's standard output.
      type: str
      returned: when a command failed
    stderr:
      description: Last lines of the failed command's standard error.
      type: str
      returned: when a command failed
    log_tail:
      description: Last O(log_lines) lines of C(make.log), or of dkms's output if make never ran.
      type: list
      elements: str
      returned: when the build failed
    log_path:
      description: Where the full C(make.log) was (gone if O(cleanup_failed) removed the version).
      type: str
      returned: when the build failed
failed_packages:
  description: Names of the packages that failed.
  returned: always
  type: list
  elements: str
  sample: [broken-mod]
prunable:
  description:
    - Install stage; present packages, not failed, whose wanted version is installed for every
      kernel and that have other registered versions or stale source folders, which a call
      with O(stage=prune) would remove (predicted in check mode).
    - Always empty with O(stage=prune).
  returned: always
  type: list
  elements: str
  sample: [hello-5]
held:
  description:
    - Prune stage; packages left alone because their wanted version is not installed (or
      differs from its build) for every kernel. Their C(notes) say why.
    - Always empty with O(stage=install).
  returned: always
  type: list
  elements: str
depmod:
  description: Kernels C(depmod -a) ran (or would run) for.
  returned: always
  type: list
  elements: str
fact_changed:
  description: Whether the local fact file changed (or would change).
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kmodlab.lab.plugins.module_utils.dkms_exec import Executor, Paths

ARGUMENT_SPEC = {
    "packages": {
        "type": "list",
        "elements": "dict",
        "required": True,
        "options": {
            "name": {"type": "str", "required": True},
            "version": {"type": "str", "required": True},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "source_path": {"type": "path"},
            "files": {"type": "dict"},
            "executables": {"type": "list", "elements": "str", "default": []},
            "depends": {"type": "list", "elements": "str", "default": []},
        },
    },
    "kernels": {"type": "list", "elements": "str", "default": []},
    "stage": {"type": "str", "default": "install", "choices": ["install", "prune"]},
    "jobs": {"type": "int", "default": 0},
    "log_lines": {"type": "int", "default": 40},
    "cleanup_failed": {"type": "bool", "default": True},
    "fact_path": {"type": "path"},
    "source_root": {"type": "path", "default": "/usr/src"},
    "dkms_tree": {"type": "path", "default": "/var/lib/dkms"},
}

# Where kernels keep their modules and System.map, and where dkms's signing settings are;
# module-level so tests can point them at a scratch folder.
LIB_MODULES = "/lib/modules"
BOOT = "/boot"
FRAMEWORK_CONFS = ("/etc/dkms/framework.conf", "/etc/dkms/framework.conf.d")
OS_RELEASE = "/etc/os-release"


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    paths = Paths(
        lib_modules=LIB_MODULES,
        boot=BOOT,
        framework_confs=tuple(FRAMEWORK_CONFS),
        os_release=OS_RELEASE,
    )
    Executor(module, paths).main()


if __name__ == "__main__":
    main()
