#!/usr/bin/python
# GPL-2.0-only
"""kmodlab_dkms: add, build and install a list of DKMS packages, only where needed.

Runs on the managed host. It must not import ``kmodlab`` (not installed there); shared
target-side code lives in ``plugins/module_utils/dkms_tree.py``.

Concurrency, reasoned rather than measured:

* ``dkms build`` of different packages in parallel is safe: dkms 3.0.10 builds in
  ``$dkms_tree/NAME/VERSION/build`` and stores the result in
  ``$dkms_tree/NAME/VERSION/KERNEL/ARCH``, both per package; the kernel's build tree is
  only read. Each build is CPU-bound (gcc, modpost) and mostly serial, so one build per
  CPU uses an emulated guest's vCPUs. The one shared write is the signing key dkms
  generates on its first build (``/var/lib/dkms/mok.key``): when it is missing, the first
  build runs alone.
* The serial steps before a build (sources, ``dkms add``: 2 s each in a TCG guest) run in
  the main thread, package after package, and each build is handed to the pool as soon as
  its package is prepared, so they overlap with the first builds. ``dkms add`` only
  writes ``$dkms_tree/NAME/VERSION``, which no running build touches.
* A package that depends on others of the call (``packages[].depends``, its
  ``BUILD_DEPENDS``) links against their exported symbols: its build reads their
  ``Module.symvers`` from the DKMS tree of the version installed for the kernel. So it
  is prepared and built only once they are built *and installed*, and not at all when
  one of them failed (its previous build then stays as it was). Independent packages
  still build concurrently.
* ``dkms install`` steps run one at a time, with ``--no-depmod``: each would otherwise run
  ``depmod -a`` (tens of seconds in a TCG guest), and concurrent depmods rewrite the same
  ``modules.dep``. One ``depmod -a KERNEL`` runs at the end. Installs start as soon as
  their build is done, while other builds go on (an install only copies files).
* State is read from dkms's tree (``module_utils``' ``read_tree``), not from ``dkms
  status``: the same facts (source link, built modules, ``kernel-KERNEL-ARCH`` link,
  installed copy) in milliseconds, where ``dkms status`` costs about 3 s per package and
  25 s for ten in a TCG guest.
* Worker threads call ``AnsibleModule.run_command``: it builds its own environment copy,
  runs the argument list with ``subprocess.Popen`` (no shell) and touches no shared state;
  its ``preexec_fn`` only sets a umask when one is asked for (never here), and
  ``handle_exceptions=False`` keeps it from calling ``fail_json`` inside a thread. Results
  are written by each worker to its own package only; everything else happens in the
  main thread.
"""

DOCUMENTATION = r"""
---
module: dkms
short_description: Add, build and install DKMS packages, only where needed, in one call
description:
  - Brings a list of DKMS packages to their wanted state for one kernel in a single module
    invocation, because every task round trip to a slow (emulated) guest costs seconds and a
    DKMS build there costs minutes.
  - Reads the state of its packages from dkms's own tree (O(dkms_tree)), the way
    C(dkms status) does, without forking C(dkms) (seconds per package in an emulated guest),
    and acts only on a difference. It tells the states and warnings C(dkms status) shows
    (added, built, installed, missing built modules, an installed copy that differs from
    its build); a version with nothing built whose source folder is gone is C(broken), as
    dkms 3.1 says.
  - For a package with O(packages[].state=present) it writes the given O(packages[].files)
    into O(packages[].source_path) when they differ, then runs C(dkms add), C(dkms build) and
    C(dkms install) only for the steps that are missing for the kernel. A package already
    built or installed is rebuilt when its sources changed since that build (a digest of the
    source folder is recorded beside each build), when dkms reports a built module missing,
    or when its source folder is gone; an installed module that dkms reports as different
    from its build is reinstalled.
  - Builds of different packages run concurrently in a thread pool (each build works in its
    own C(/var/lib/dkms/NAME/VERSION/build) folder). When the signing key that dkms would
    generate on its first build is still missing, the first build runs alone so two builds
    cannot race to create it.
  - A package with O(packages[].depends) (the C(BUILD_DEPENDS) of its C(dkms.conf)) builds
    against the symbols the packages it names export. It is prepared and built only after
    those of them in O(packages) are built and installed for the kernel, and it is not
    built when one of them failed (its earlier build, if any, is left as it was). When a
    package is built again, the installed or built packages that depend on it are rebuilt
    too, since their build recorded the symbols' CRCs of the old one.
  - Installs run one at a time with C(--no-depmod), and C(depmod) runs once per affected
    kernel at the end, instead of once per package (in a TCG guest each depmod costs tens
    of seconds, and concurrent depmods would write the same C(modules.dep)).
  - When another version of the same package is registered, the wanted version is installed
    first (with C(--force-version-override), so a downgrade is honoured), checked in the
    DKMS tree and C(/lib/modules), and only then are the other versions removed with their
    source folders. When the new version fails to build or install, the old one stays installed.
  - A package that fails does not stop the others. Its result carries the tail of
    C(make.log); the module fails at the end naming every failed package, and returns
    RV(failed_packages) so a role can record the failure and carry on with the good ones.
  - A version this run added and then failed to build or install is removed from DKMS
    again (O(cleanup_failed)), so a later kernel upgrade's C(dkms autoinstall) does not trip
    over it. Its sources stay in O(source_root) for debugging, unless the failure was a
    full disk (C(No space left on device)), in which case the source folder this run
    created goes too (nothing to debug in it, and it takes space on the full filesystem).
  - O(packages[].state=absent) removes every registered version of the package from DKMS
    (all kernels) and deletes their source folders.
  - Optionally records what is deployed in a static local fact (JSON).
version_added: "0.1.0"
author: kmodlab
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
          - V(present) to have it built and installed for O(kernel).
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
  kernel:
    description: Kernel release to build and install for; defaults to the running kernel.
    type: str
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
      - Remove from DKMS a version that this run added but could not build or install.
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
    description: Reports what would change; only reads the DKMS tree.
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
    before building it again, so a failing rebuild leaves no module installed. Bump the
    version to get the keep-the-old-one guarantee.
  - Removing an old version removes it for every kernel; other kernels get the new one
    from dkms's own C(autoinstall) when their turn comes.
"""

EXAMPLES = r"""
- name: Build and install two packages for the running kernel
  kmodlab_dkms:
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

- name: Build a package that calls a function another one exports, after that one
  kmodlab_dkms:
    packages:
      - name: symexport
        version: "1.0.0"
      - name: symuse
        version: "1.0.0"
        depends: [symexport]

- name: Remove a package from DKMS entirely
  kmodlab_dkms:
    packages:
      - name: hello-5
        version: "1.2"
        state: absent

- name: Build for a kernel that is installed but not running
  kmodlab_dkms:
    kernel: 6.1.0-56-amd64
    packages:
      - name: hello-5
        version: "1.2"
"""

RETURN = r"""
kernel:
  description: Kernel release the packages were managed for.
  returned: always
  type: str
  sample: 6.1.0-56-amd64
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
      description: Kernel release.
      type: str
      returned: always
    before:
      description:
        - Every registered version's status for O(kernel) before the run.
        - C(added), C(built), C(installed) or C(broken).
      type: dict
      returned: always
      sample: {"1.1": "installed"}
    after:
      description: The same after the run (predicted in check mode).
      type: dict
      returned: always
      sample: {"1.2": "installed"}
    status:
      description: Status of the wanted version for O(kernel) after the run, or C(absent).
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
      type: list
      elements: str
      returned: always
      sample: [sources, add, build, install, remove 1.1]
    files_changed:
      description: Source files written (or that would be written).
      type: list
      elements: str
      returned: always
    removed_versions:
      description: Versions removed from DKMS.
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
      description: Whether this package failed.
      type: bool
      returned: always
    step:
      description: The step that failed.
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

import errno
import json
import os
import re
import shutil
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kmodlab.lab.plugins.module_utils.dkms_tree import (
    entry_for,
    kernels_installed,
    read_tail,
    read_tree,
    source_digest,
    status_line,
    status_lines,
    tail,
    versions_on_kernel,
)

ARGUMENT_SPEC = dict(
    packages=dict(
        type="list",
        elements="dict",
        required=True,
        options=dict(
            name=dict(type="str", required=True),
            version=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            source_path=dict(type="path"),
            files=dict(type="dict"),
            executables=dict(type="list", elements="str", default=[]),
            depends=dict(type="list", elements="str", default=[]),
        ),
    ),
    kernel=dict(type="str"),
    jobs=dict(type="int", default=0),
    log_lines=dict(type="int", default=40),
    cleanup_failed=dict(type="bool", default=True),
    fact_path=dict(type="path"),
    source_root=dict(type="path", default="/usr/src"),
    dkms_tree=dict(type="path", default="/var/lib/dkms"),
)

# Where kernels keep their modules and System.map; module-level so tests can point them
# at a scratch folder.
LIB_MODULES = "/lib/modules"
BOOT = "/boot"
FRAMEWORK_CONFS = ("/etc/dkms/framework.conf", "/etc/dkms/framework.conf.d")
OS_RELEASE = "/etc/os-release"
DIGEST_FILE = "kmodlab-source.sha256"
# English, so dkms/make/gcc output (and our parsing of it) does not depend on the locale.
C_LOCALE = {"LC_ALL": "C", "LANG": "C", "LC_MESSAGES": "C"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+~-]*$")
_OUTPUT_LINES = 40
# strerror(ENOSPC) as dkms, make and gcc print it (they run in the C locale).
_ENOSPC = "No space left on device"
_SIGNING_SETTING = re.compile(r"""^\s*(mok_signing_key|mok_certificate)=["']?([^"'\s]+)""")
_PACKAGE_NAME = re.compile(r"""^\s*PACKAGE_NAME=["']?([^"'\s]+)""", re.MULTILINE)


def _disk_full(*texts):
    """Whether a failure's texts (strings or lists of lines) say a filesystem was full."""
    return any(_ENOSPC in (t if isinstance(t, str) else "\n".join(t or [])) for t in texts)


def _package_name(conf):
    match = _PACKAGE_NAME.search(conf)
    return match.group(1) if match else None


class Package:
    """One package: its plan, then its result."""

    def __init__(self, spec, kernel, source_root):
        self.name = spec["name"]
        self.version = spec["version"]
        self.state = spec["state"]
        self.kernel = kernel
        self.source_path = spec["source_path"] or os.path.join(
            source_root, f"{self.name}-{self.version}"
        )
        self.files = spec["files"]
        self.executables = set(spec.get("executables") or [])
        self.depends = list(spec.get("depends") or [])
        self.before = {}
        self.after = {}
        self.entry = None
        self.files_changed = []
        self.file_diffs = []
        self.rebuild_reason = None
        self.repair = False
        self.others = []
        self.stale = []
        self.planned_removals = []
        self.steps = []
        self.done = []
        self.removed_versions = []
        self.failure = None
        self.reverted = False
        self.added_now = False
        self.adopt_digest = False
        self.timing = {}
        self.created_source = False

    @property
    def failed(self):
        return self.failure is not None

    def fail(self, step, msg, rc=None, stdout=None, stderr=None, log_tail=None, log_path=None):
        self.failure = {"step": step, "msg": msg}
        if rc is not None:
            self.failure["rc"] = rc
            self.failure["stdout"] = "\n".join(tail(stdout, _OUTPUT_LINES))
            self.failure["stderr"] = "\n".join(tail(stderr, _OUTPUT_LINES))
        if log_tail is not None:
            self.failure["log_tail"] = log_tail
        if log_path is not None:
            self.failure["log_path"] = log_path

    def has(self, step):
        return step in self.steps

    def changed(self, check_mode):
        if check_mode:
            return bool(self.steps) or bool(self.files_changed)
        if self.files_changed or self.before != self.after:
            return True
        return bool(self.done) and not self.reverted

    def result(self, check_mode):
        out = {
            "name": self.name,
            "version": self.version,
            "state": self.state,
            "kernel": self.kernel,
            "before": self.before,
            "after": self.after,
            "status": self.after.get(self.version, "absent"),
            "changed": self.changed(check_mode),
            "actions": list(self.steps if check_mode else self.done),
            "files_changed": self.files_changed,
            "removed_versions": self.planned_removals if check_mode else self.removed_versions,
            "failed": self.failed,
            "timing": self.timing,
        }
        if self.failure:
            out.update(self.failure)
        return out


class BuildQueue:
    """Builds on a thread pool, held back while a gate is open.

    The gate is the creation of dkms's signing key (a future returning whether the key is
    there), or a first build that creates it; held builds start once it is done.
    """

    def __init__(self, pool, build):
        self.pool = pool
        self.build = build
        self.futures = []
        self.held = []
        self.gate = None
        self.first_alone = False

    def add(self, p):
        self.pump()
        if self.gate is not None:
            self.held.append(p)
            return
        future = self.pool.submit(self.build, p)
        self.futures.append(future)
        if self.first_alone:
            self.first_alone = False
            self.gate = future

    def pump(self, wait=False):
        """Release the held builds once the gate is done (``wait``: wait for it)."""
        while self.gate is not None and (wait or self.gate.done()):
            # The key gate returns False when no key could be made: a build makes it.
            self.first_alone = self.gate.result() is False
            self.gate = None
            held, self.held = self.held, []
            for p in held:
                self.add(p)


class Dkms:
    """The run: read state, plan, act, report."""

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.check_mode = module.check_mode
        self.kernel = self.params["kernel"] or os.uname()[2]
        self.arch = os.uname()[4]
        self.started = time.monotonic()
        self.dkms_tree = self.params["dkms_tree"]
        self.source_root = self.params["source_root"]
        self.log_lines = max(0, self.params["log_lines"])
        self.warnings = []
        self.depmod_kernels = set()
        self.planned_depmod = set()
        self.dkms_bin = module.get_bin_path("dkms", required=False)
        self.packages = [Package(s, self.kernel, self.source_root) for s in self.params["packages"]]

    # -- commands ---------------------------------------------------------------------

    def run(self, argv):
        """Run one command (argument list, never a shell); safe from threads (see top)."""
        return self.module.run_command(argv, environ_update=C_LOCALE, handle_exceptions=False)

    def dkms(self, *args):
        return self.run([self.dkms_bin, *args])

    def timed(self, p, step, *args):
        """``dkms ARGS`` for package ``p``, its start and duration kept as ``p.timing[step]``."""
        start = time.monotonic()
        try:
            return self.dkms(*args)
        finally:
            end = time.monotonic()
            p.timing[step] = [round(start - self.started, 1), round(end - start, 1)]

    def workers(self, count):
        return max(1, min(self.params["jobs"] or os.cpu_count() or 1, count))

    def read_status(self, names):
        """The status entries of ``names`` for every kernel, read from the DKMS tree."""
        return read_tree(self.dkms_tree, names, LIB_MODULES)

    # -- input checks -----------------------------------------------------------------

    def validate(self):
        seen = set()
        for p in self.packages:
            for field, value in (("name", p.name), ("version", p.version)):
                if not _SAFE_NAME.match(value):
                    self.module.fail_json(
                        msg=f"packages: {field} {value!r} is not a valid DKMS {field} (letters, digits and "
                        "'_.+~-', starting with a letter or digit)"
                    )
            if p.name in seen:
                self.module.fail_json(msg=f"packages: {p.name} is listed twice; list each once")
            seen.add(p.name)
            wanted = os.path.join(self.source_root, f"{p.name}-{p.version}")
            if os.path.normpath(p.source_path) != os.path.normpath(wanted):
                self.module.fail_json(
                    msg=f"packages: source_path of {p.name} is {p.source_path}, but dkms adds sources only from "
                    f"{wanted}: drop source_path or point it there"
                )
            for rel, content in (p.files or {}).items():
                norm = os.path.normpath(rel)
                if os.path.isabs(rel) or norm.startswith("..") or norm in (".", ""):
                    self.module.fail_json(
                        msg=f"packages: file name {rel!r} of {p.name} must be relative to its source "
                        "folder and stay inside it"
                    )
                if not isinstance(content, str):
                    self.module.fail_json(msg=f"packages: content of {p.name}/{rel} must be text")
            unknown = sorted(p.executables - set(p.files or {}))
            if unknown:
                self.module.fail_json(
                    msg="packages: executables of {} name {}, which its files do not have".format(
                        p.name, ", ".join(unknown)
                    )
                )
        self.order = self.dependency_order()

    def dependency_order(self):
        """The packages with each after those of the call it depends on (stable)."""
        by_name = {p.name: p for p in self.packages}
        order, visiting = [], []

        def visit(p):
            if p in order:
                return
            if p in visiting:
                cycle = [*visiting[visiting.index(p) :], p]
                self.module.fail_json(
                    msg="packages: dependency cycle {}; a package cannot depend on itself, "
                    "even through others".format(" -> ".join(q.name for q in cycle))
                )
            visiting.append(p)
            for name in p.depends:
                if name in by_name:
                    visit(by_name[name])
            visiting.pop()
            order.append(p)

        for p in self.packages:
            visit(p)
        return order

    def dependencies(self, p):
        """The packages of the call that ``p`` depends on and that are to be present."""
        return [q for q in self.order if q.name in p.depends and q.state == "present"]

    # -- planning ---------------------------------------------------------------------

    def compare_files(self, p):
        for rel in sorted(p.files or {}):
            dest = os.path.join(p.source_path, rel)
            wanted = p.files[rel].encode("utf-8")
            try:
                with open(dest, "rb") as handle:
                    current = handle.read()
                mode_ok = (os.stat(dest).st_mode & 0o777) == self.file_mode(p, rel)
            except OSError:
                current = None
                mode_ok = False
            if current != wanted or (rel in p.executables and not mode_ok):
                p.files_changed.append(rel)
                p.file_diffs.append(
                    {
                        "before_header": dest,
                        "after_header": dest,
                        "before": "" if current is None else current.decode("utf-8", "replace"),
                        "after": p.files[rel],
                    }
                )

    @staticmethod
    def file_mode(p, rel):
        return 0o755 if rel in p.executables else 0o644

    def digest_path(self, p):
        arch = (p.entry or {}).get("arch") or self.arch
        return os.path.join(self.dkms_tree, p.name, p.version, p.kernel, arch, "log", DIGEST_FILE)

    def recorded_digest(self, p):
        try:
            with open(self.digest_path(p)) as handle:
                return handle.read().strip() or None
        except OSError:
            return None

    def source_versions(self, p):
        """Versions of ``p`` with a source folder, registered or not (failed builds).

        A folder counts only if its dkms.conf names this package, so ``foo`` never takes
        ``foo-bar-1.0`` (package foo-bar) for a version of itself.
        """
        found = []
        prefix = p.name + "-"
        try:
            names = os.listdir(self.source_root)
        except OSError:
            return found
        for entry in sorted(names):
            if not entry.startswith(prefix):
                continue
            try:
                with open(os.path.join(self.source_root, entry, "dkms.conf")) as handle:
                    conf = handle.read()
            except OSError:
                continue
            if _package_name(conf) == p.name:
                found.append(entry[len(prefix) :])
        return found

    def plan(self, p, entries):
        p.before = versions_on_kernel(entries, p.name, p.kernel)
        if p.state == "absent":
            for version in sorted(p.before):
                p.steps.append(f"remove {version}")
                p.planned_removals.append(version)
                self.planned_depmod.update(kernels_installed(entries, p.name, version))
            for version in sorted(set(p.before) | {p.version} | set(self.source_versions(p))):
                path = self.source_dir(p, version)
                if os.path.lexists(path):
                    p.stale.append(version)
                    p.steps.append(f"delete {path}")
            return
        self.compare_files(p)
        if p.files_changed:
            p.steps.append("sources")
        current = p.before.get(p.version)
        p.entry = entry_for(entries, p.name, p.version, p.kernel)
        p.others = sorted(v for v in p.before if v != p.version)
        if current == "broken":
            p.rebuild_reason = "its source folder is gone"
        elif current in ("built", "installed"):
            if p.files_changed:
                p.rebuild_reason = "its sources changed"
            elif p.entry and p.entry["missing"]:
                p.rebuild_reason = "dkms reports built modules missing"
            else:
                recorded = self.recorded_digest(p)
                digest = source_digest(p.source_path)
                if digest is None:
                    # Never tear down a working module because its sources went missing.
                    self.warnings.append(
                        f"{p.source_path} is missing; {p.name} {p.version} stays as it is"
                    )
                elif recorded is None:
                    # Built outside kmodlab (dkms autoinstall after a kernel upgrade, or by
                    # hand): take it as it is and record its digest from now on.
                    p.adopt_digest = True
                elif recorded != digest:
                    p.rebuild_reason = "its sources changed since it was built"
            if p.rebuild_reason is None and os.path.isdir(p.source_path):
                # Its build recorded the CRCs of the symbols it uses from the old build.
                rebuilt = [q.name for q in self.dependencies(p) if q.has("build")]
                if rebuilt:
                    p.rebuild_reason = "{}, which it depends on, is built again".format(
                        ", ".join(rebuilt)
                    )
                    p.adopt_digest = False
        if p.rebuild_reason:
            p.steps.append(f"remove {p.version}")
            current = None
        if current is None:
            p.steps.append("add")
        if current in (None, "added"):
            p.steps += ["build", "install"]
        elif current == "built":
            p.steps.append("install")
        elif p.entry and p.entry["diff"]:
            p.repair = True
            p.steps += ["uninstall", "install"]
        if p.has("install"):
            self.planned_depmod.add(p.kernel)
        for version in p.others:
            p.steps.append(f"remove {version}")
            p.planned_removals.append(version)
            self.planned_depmod.update(kernels_installed(entries, p.name, version))
        # Source folders of versions that are no longer (or never were) registered, such as
        # a version whose build failed: dropped once the wanted version is installed.
        for version in self.source_versions(p):
            if version != p.version:
                p.stale.append(version)
                p.steps.append(f"delete {self.source_dir(p, version)}")

    def predict_after(self, p):
        """Check mode: the state the plan will leave."""
        if p.state == "absent":
            return {}
        # A present package ends up installed, the other versions removed.
        return {p.version: "installed"}

    # -- acting -----------------------------------------------------------------------

    def write_files(self, p):
        p.created_source = not os.path.lexists(p.source_path)
        try:
            for rel in p.files_changed:
                dest = os.path.join(p.source_path, rel)
                folder = os.path.dirname(dest)
                if not os.path.isdir(folder):
                    os.makedirs(folder, 0o755)
                fd, tmp = tempfile.mkstemp(prefix=".kmodlab-", dir=folder)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(p.files[rel].encode("utf-8"))
                os.chmod(tmp, self.file_mode(p, rel))
                self.module.atomic_move(tmp, dest)
                # atomic_move gives a new file the umask's mode and an old one its own
                os.chmod(dest, self.file_mode(p, rel))
        except OSError as exc:
            p.fail(
                "sources",
                "could not write the sources of {} to {}: {}; {}".format(
                    p.name,
                    p.source_path,
                    exc,
                    self.disk_full_fix()
                    if exc.errno == errno.ENOSPC
                    else "check that the folder is writable (the module needs root)",
                ),
            )
            return False
        p.done.append("sources")
        return True

    def remove_version(self, p, version, entries):
        rc, out, err = self.dkms("remove", "-m", p.name, "-v", version, "--all", "--no-depmod")
        if rc != 0:
            p.fail(
                "remove",
                f"'dkms remove -m {p.name} -v {version} --all' failed: see stderr; remove it by hand "
                "and re-run",
                rc,
                out,
                err,
            )
            return False
        self.depmod_kernels.update(kernels_installed(entries, p.name, version))
        p.done.append(f"remove {version}")
        if version != p.version or p.state == "absent":
            p.removed_versions.append(version)
        return True

    def source_dir(self, p, version):
        return os.path.join(self.source_root, f"{p.name}-{version}")

    def delete_source(self, p, version):
        path = self.source_dir(p, version)
        if not os.path.lexists(path):
            return
        try:
            if os.path.islink(path) or not os.path.isdir(path):
                os.unlink(path)
            else:
                shutil.rmtree(path)
        except OSError as exc:
            self.warnings.append(f"could not delete {path}: {exc}")
            return
        p.done.append(f"delete {path}")

    def prepare(self, p, entries):
        """Serial steps before the build: sources, removal for a rebuild, dkms add."""
        if p.files_changed and not self.write_files(p):
            return
        if p.rebuild_reason and not self.remove_version(p, p.version, entries):
            return
        if p.has("add"):
            if not os.path.isfile(os.path.join(p.source_path, "dkms.conf")):
                p.fail(
                    "add",
                    f"{p.source_path} has no dkms.conf: pass it in files or put the package's sources "
                    "there",
                )
                return
            rc, out, err = self.timed(p, "add", "add", "-m", p.name, "-v", p.version)
            if rc != 0:
                p.fail(
                    "add",
                    f"'dkms add -m {p.name} -v {p.version}' failed: check {p.source_path}/dkms.conf (see stderr)",
                    rc,
                    out,
                    err,
                )
                return
            # A rebuild re-adds the version too: its old build is gone either way.
            p.added_now = p.before.get(p.version) is None or bool(p.rebuild_reason)
            p.done.append("add")

    def build(self, p):
        """Build one package; runs in a worker thread, touches only its own Package."""
        try:
            rc, out, err = self.timed(
                p, "build", "build", "-m", p.name, "-v", p.version, "-k", p.kernel
            )
        except Exception as exc:  # a thread must not take the module down
            p.fail("build", f"could not run 'dkms build' for {p.name}: {exc}")
            return p
        if rc != 0:
            log_path = os.path.join(self.dkms_tree, p.name, p.version, "build", "make.log")
            log_tail = read_tail(log_path, self.log_lines)
            if log_tail is None:
                log_path = None
                log_tail = tail((out or "") + "\n" + (err or ""), self.log_lines)
            p.fail(
                "build",
                "'dkms build -m %s -v %s -k %s' failed (rc=%d): %s (see log_tail)%s%s"
                % (
                    p.name,
                    p.version,
                    p.kernel,
                    rc,
                    _ENOSPC + ": " + self.disk_full_fix()
                    if _disk_full(log_tail, out, err)
                    else "fix the module's sources",
                    f"; the full log was {log_path}" if log_path else "",
                    self.rebuild_note(p),
                ),
                rc,
                out,
                err,
                log_tail=log_tail,
                log_path=log_path,
            )
            return p
        p.done.append("build")
        self.write_digest(p)
        return p

    @staticmethod
    def rebuild_note(p):
        if p.rebuild_reason and p.before.get(p.version) == "installed":
            if "which it depends on" in p.rebuild_reason:
                return f". Its installed build was removed first because {p.rebuild_reason}"
            return (
                f". Its installed build was removed first because {p.rebuild_reason} without a new version: "
                "give the module a new version to keep the old build until the new one "
                "works"
            )
        return ""

    def write_digest(self, p):
        digest = source_digest(p.source_path)
        path = self.digest_path(p)
        if digest is None or not os.path.isdir(os.path.dirname(path)):
            return
        try:
            with open(path, "w") as handle:
                handle.write(digest + "\n")
        except OSError as exc:
            self.warnings.append(f"could not record the source digest in {path}: {exc}")

    def install(self, p, entries):
        """Serial: (uninstall,) install, check, then drop the other versions."""
        if p.repair:
            rc, out, err = self.dkms(
                "uninstall", "-m", p.name, "-v", p.version, "-k", p.kernel, "--no-depmod"
            )
            if rc != 0:
                p.fail(
                    "uninstall",
                    f"'dkms uninstall' of {p.name}/{p.version} (installed module differs from its build) "
                    "failed: see stderr",
                    rc,
                    out,
                    err,
                )
                return
            p.done.append("uninstall")
            self.depmod_kernels.add(p.kernel)
        argv = ["install", "-m", p.name, "-v", p.version, "-k", p.kernel, "--no-depmod"]
        if p.others:
            # Our manifest decides the version, also when it is a downgrade or the .ko
            # carries the same MODULE_VERSION: without this dkms may "install" (rc 0)
            # without copying the module.
            argv.append("--force-version-override")
        rc, out, err = self.timed(p, "install", *argv)
        if rc != 0:
            p.fail(
                "install",
                "'dkms %s' failed (rc=%d): see stdout/stderr" % (" ".join(argv), rc),
                rc,
                out,
                err,
            )
            return
        p.done.append("install")
        self.depmod_kernels.add(p.kernel)
        entry = entry_for(self.read_status([p.name]), p.name, p.version, p.kernel)
        if entry is None or entry["status"] != "installed" or entry["diff"]:
            # dkms refuses to replace a module it finds newer in /lib/modules/KERNEL but
            # still exits 0; never drop the other versions in that case.
            p.fail(
                "install",
                "'dkms install' of {}/{} exited 0 but the DKMS tree says {!r}: a module of "
                "that name elsewhere in /lib/modules/{} probably won dkms's version check "
                "(see stdout/stderr); remove it, then re-run".format(
                    p.name, p.version, (entry or {}).get("line", "not installed"), p.kernel
                ),
                rc,
                out,
                err,
            )
            return
        self.drop_others(p, entries)

    def drop_others(self, p, entries):
        """The wanted version is installed: remove the other versions and their sources."""
        for version in p.others:
            if not self.remove_version(p, version, entries):
                return
        for version in p.stale:
            self.delete_source(p, version)

    def disk_full_fix(self):
        """What to do when dkms, make or this module found a filesystem full."""
        where = f"{self.dkms_tree} {self.source_root} /tmp"
        return f"the disk is full: free space on it (df -h {where}) and re-run"

    def cleanup(self, p):
        """Remove a version this run added but could not build or install; after a full
        disk, also the source folder this run created for it."""
        if not (self.params["cleanup_failed"] and p.failure):
            return
        if p.added_now and p.failure["step"] in ("build", "install"):
            rc, _out, err = self.dkms(
                "remove", "-m", p.name, "-v", p.version, "--all", "--no-depmod"
            )
            if rc != 0:
                self.warnings.append(
                    "could not remove the failed %s/%s from DKMS (rc=%d): %s"
                    % (p.name, p.version, rc, err.strip())
                )
                return
            p.reverted = True
            p.done.append(f"remove {p.version} (cleanup)")
        elif p.added_now:
            return
        failure = p.failure
        if p.created_source and _disk_full(
            failure["msg"], failure.get("stdout"), failure.get("stderr"), failure.get("log_tail")
        ):
            self.delete_source(p, p.version)

    def signing_key(self):
        """``(key, certificate, generate)`` as dkms 3.0 picks them for signing.

        ``generate`` is whether dkms itself would create a missing pair with openssl (its
        own default key, or a key framework.conf names); on Ubuntu its default pair comes
        from update-secureboot-policy instead, and a pkcs11 key is never a file.
        """
        key = cert = None
        paths = []
        for conf in FRAMEWORK_CONFS:
            if os.path.isdir(conf):
                paths += sorted(
                    os.path.join(conf, n) for n in os.listdir(conf) if n.endswith(".conf")
                )
            elif os.path.isfile(conf):
                paths.append(conf)
        for path in paths:
            try:
                with open(path) as handle:
                    for line in handle:
                        m = _SIGNING_SETTING.match(line)
                        if m and m.group(1) == "mok_signing_key":
                            key = m.group(2)
                        elif m:
                            cert = m.group(2)
            except OSError:
                continue
        generate = True
        if key is None:
            ubuntu = False
            try:
                with open(OS_RELEASE) as handle:
                    ubuntu = any(line.strip() == "ID=ubuntu" for line in handle)
            except OSError:
                pass
            if ubuntu:
                key = "/var/lib/shim-signed/mok/MOK.priv"
                cert = cert or "/var/lib/shim-signed/mok/MOK.der"
                generate = False
            else:
                key = os.path.join(self.dkms_tree, "mok.key")
        if cert is None:
            cert = os.path.join(self.dkms_tree, "mok.pub")
        if key.startswith("pkcs11:"):
            generate = False
        return key, cert, generate

    def signing_key_missing(self):
        """Whether dkms would create its signing key on the next build (a race if parallel)."""
        key, cert, _generate = self.signing_key()
        if key.startswith("pkcs11:"):
            return False
        return not (os.path.isfile(key) and os.path.isfile(cert))

    def generate_signing_key(self):
        """Create the signing key dkms would create on its first build, as dkms does.

        Same openssl command, files and modes, so the builds that follow find it and can
        all run at once, rather than the first one alone (a whole build, about 35 s in an
        emulated guest). Returns whether the key is there now; when it is not, the first
        build runs alone and dkms tries itself.
        """
        key, cert, generate = self.signing_key()
        openssl = self.module.get_bin_path("openssl", required=False)
        if not generate or openssl is None:
            return False
        for path in (key, cert):
            folder = os.path.dirname(path)
            if not os.path.isdir(folder):
                os.makedirs(folder, 0o755)
        argv = [openssl, "req", "-new", "-x509", "-nodes", "-days", "36500"]
        argv += ["-subj", "/CN=DKMS module signing key", "-newkey", "rsa:2048"]
        argv += ["-keyout", key, "-outform", "DER", "-out", cert]
        rc, _out, err = self.run(argv)
        if rc != 0 or self.signing_key_missing():
            self.warnings.append(
                "could not create dkms's signing key %s (rc=%d): %s; the first build runs "
                "alone and lets dkms try" % (key, rc, err.strip())
            )
            return False
        os.chmod(key, 0o600)
        return True

    def depmod(self):
        depmod = self.module.get_bin_path("depmod", required=True)
        for kernel in sorted(self.depmod_kernels):
            if not os.path.isdir(os.path.join(LIB_MODULES, kernel)):
                continue
            argv = [depmod, "-a", kernel]
            system_map = os.path.join(BOOT, f"System.map-{kernel}")
            if os.path.isfile(system_map):
                argv += ["-F", system_map]
            rc, out, err = self.run(argv)
            if rc != 0:
                # Every package installed for that kernel in this run is unusable until
                # depmod works: record it on each of them.
                for p in self.packages:
                    if p.kernel == kernel and "install" in p.done and not p.failed:
                        p.fail(
                            "depmod",
                            "'{}' failed: {} is installed but modprobe cannot find it until "
                            "'depmod -a {}' succeeds; fix the error in stderr and re-run".format(
                                " ".join(argv), p.name, kernel
                            ),
                            rc,
                            out,
                            err,
                        )
                self.warnings.append("'%s' failed (rc=%d): %s" % (" ".join(argv), rc, err))

    @staticmethod
    def settled(p):
        """Whether the dkms work of this run on ``p`` is over (failed, installed, or none)."""
        if p.failed:
            return True
        if p.has("build") or p.has("install"):
            return "install" in p.done
        return True

    def start(self, p, entries, queue):
        """Serial steps of ``p`` (sources, removal for a rebuild, dkms add), then its build."""
        if p.steps or p.adopt_digest:
            self.prepare(p, entries)
        if p.adopt_digest and not p.failed:
            self.write_digest(p)
        if p.has("build") and not p.failed:
            queue.add(p)

    def finish_unbuilt(self, p, entries):
        """A package with nothing to build: install it, or drop its other versions."""
        if p.failed or p.has("build"):
            return
        if p.has("install"):
            self.install(p, entries)
        else:
            # Already installed: only leftovers of other versions to drop.
            self.drop_others(p, entries)

    def release(self, waiting, entries, queue):
        """Start the waiting builds whose dependencies are installed; give up those of
        which a dependency failed (their earlier build, if any, is left alone)."""
        progress = True
        while progress:
            progress = False
            for p in list(waiting):
                deps = self.dependencies(p)
                failed = [q.name for q in deps if q.failed]
                if failed:
                    waiting.remove(p)
                    kept = [v for v, st in sorted(p.before.items()) if st == "installed"]
                    p.fail(
                        "build",
                        "not built: {}, which {} depends on (BUILD_DEPENDS), failed; fix "
                        "that first (see its result) and re-run{}".format(
                            ", ".join(failed),
                            p.name,
                            "; {} {} stays installed".format(p.name, ", ".join(kept))
                            if kept
                            else "",
                        ),
                    )
                    progress = True
                elif all(self.settled(q) for q in deps):
                    waiting.remove(p)
                    self.start(p, entries, queue)
                    progress = True

    def execute(self, entries):
        present = [p for p in self.order if p.state == "present"]
        for p in self.packages:
            if (
                p.state == "absent"
                and p.steps
                and all(self.remove_version(p, v, entries) for v in sorted(p.before))
            ):
                for version in p.stale:
                    self.delete_source(p, version)
        builds_wanted = [p for p in present if p.has("build")]
        with ThreadPoolExecutor(max_workers=self.workers(len(builds_wanted))) as pool:
            queue = BuildQueue(pool, self.build)
            if len(builds_wanted) > 1 and self.signing_key_missing():
                # dkms creates its signing key on the first build that finds none; two
                # builds at once would both create it. Make it first, in the pool while
                # the packages are prepared; where that cannot be done, the first build
                # runs alone.
                queue.gate = pool.submit(self.generate_signing_key)
            # Each build starts as soon as its package is prepared, so the serial steps
            # (sources, dkms add: seconds each in an emulated guest) of the next
            # packages overlap with the builds of the first ones. A build that needs
            # packages of this run installed first (depends) waits for them; so do its
            # serial steps, so that nothing of it is touched when one of them fails.
            waiting = []
            for p in present:
                if p.has("build") and self.dependencies(p):
                    waiting.append(p)
                else:
                    self.start(p, entries, queue)
            for p in present:
                if p not in waiting:
                    self.finish_unbuilt(p, entries)
            self.release(waiting, entries, queue)
            queue.pump(wait=True)
            # Install each package as soon as its build is done, one at a time, while
            # the other builds go on; start the builds that waited for it.
            handled = set()
            while True:
                queue.pump(wait=False)
                pending = [f for f in queue.futures if f not in handled]
                if not pending and queue.held:
                    queue.pump(wait=True)
                    pending = [f for f in queue.futures if f not in handled]
                if not pending:
                    break
                if queue.gate is not None and queue.gate not in pending:
                    pending.append(queue.gate)
                done, _pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in queue.futures:
                    if future in done and future not in handled:
                        handled.add(future)
                        p = future.result()
                        if not p.failed:
                            self.install(p, entries)
                self.release(waiting, entries, queue)
            for p in waiting:  # never left: each dependency settles or fails (no cycles)
                p.fail("build", "not built: its dependencies never finished")
        for p in present:
            self.cleanup(p)
        if self.depmod_kernels:
            self.depmod()

    # -- facts ------------------------------------------------------------------------

    def update_fact(self):
        path = self.params["fact_path"]
        if not path:
            return False
        current = {}
        try:
            with open(path) as handle:
                current = json.load(handle)
            if not isinstance(current, dict):
                current = {}
        except (OSError, ValueError):
            current = {}
        wanted = dict(current)
        for p in self.packages:
            if p.state == "absent":
                wanted.pop(p.name, None)
                continue
            status = p.after.get(p.version, "absent")
            version = p.version
            if status != "installed":
                installed = [v for v, s in sorted(p.after.items()) if s == "installed"]
                if installed:
                    version, status = installed[0], "installed"
            wanted[p.name] = {
                "version": version,
                "wanted_version": p.version,
                "kernel": p.kernel,
                "status": status,
                "result": "failed" if p.failed else "ok",
            }
        if wanted == current:
            return False
        if not self.check_mode:
            try:
                folder = os.path.dirname(path)
                if not os.path.isdir(folder):
                    os.makedirs(folder, 0o755)
                fd, tmp = tempfile.mkstemp(prefix=".kmodlab-", dir=folder)
                with os.fdopen(fd, "w") as handle:
                    json.dump(wanted, handle, indent=2, sort_keys=True)
                    handle.write("\n")
                os.chmod(tmp, 0o644)
                self.module.atomic_move(tmp, path)
            except OSError as exc:
                self.warnings.append(f"could not write the local fact {path}: {exc}")
                return False
        return True

    # -- the whole run ----------------------------------------------------------------

    def main(self):
        self.validate()
        if self.dkms_bin is None:
            if not self.check_mode:
                self.module.fail_json(
                    msg="dkms is not installed on this host: run the kernel_headers role first "
                    "(it installs dkms, the compiler and the headers), or install dkms",
                    kernel=self.kernel,
                )
            self.warnings.append("dkms is not installed; assuming no package is registered")
        entries = self.read_status([p.name for p in self.packages])
        # Dependencies first: a package is rebuilt when one it depends on is.
        for p in self.order:
            self.plan(p, entries)
        needs_build = [p.name for p in self.packages if p.has("build")]
        headers = os.path.join(LIB_MODULES, self.kernel, "build")
        if needs_build and not os.path.isdir(headers):
            msg = (
                "no kernel headers for {} ({} is missing), needed to build {}: run the "
                "kernel_headers role, or (re)install the headers package for that kernel "
                "(apt-get install --reinstall linux-headers-{} on Debian)".format(
                    self.kernel, headers, ", ".join(needs_build), self.kernel
                )
            )
            if not self.check_mode:
                self.module.fail_json(msg=msg, kernel=self.kernel)
            self.warnings.append(msg)
        before_lines = {p.name: status_lines(entries, p.name) for p in self.packages}
        if self.check_mode:
            after_entries = None
            for p in self.packages:
                p.after = self.predict_after(p)
        else:
            self.execute(entries)
            # Read again only what this run touched.
            touched = [p.name for p in self.packages if p.done or p.failed]
            after_entries = [e for e in entries if e["name"] not in touched]
            after_entries += self.read_status(touched)
            for p in self.packages:
                p.after = versions_on_kernel(after_entries, p.name, p.kernel)
        fact_changed = self.update_fact()
        results = [p.result(self.check_mode) for p in self.packages]
        changed = any(r["changed"] for r in results) or fact_changed
        out = {
            "changed": changed,
            "kernel": self.kernel,
            "packages": results,
            "failed_packages": [p.name for p in self.packages if p.failed],
            "depmod": sorted(self.planned_depmod if self.check_mode else self.depmod_kernels),
            "fact_changed": fact_changed,
        }
        if self.module._diff:
            out["diff"] = self.diff(before_lines, after_entries)
        for warning in self.warnings:
            self.module.warn(warning)
        if out["failed_packages"]:
            details = "; ".join(
                "{} {}: {} failed".format(p.name, p.version, p.failure["step"])
                for p in self.packages
                if p.failed
            )
            out["msg"] = (
                "DKMS failed for %d of %d package(s): %s. The other packages were handled; "
                "see packages[].msg and packages[].log_tail"
                % (len(out["failed_packages"]), len(self.packages), details)
            )
            self.module.fail_json(**out)
        self.module.exit_json(**out)

    def diff(self, before_lines, after_entries):
        diffs = []
        for p in self.packages:
            if not p.changed(self.check_mode):
                continue
            if after_entries is None:
                after = [
                    status_line(p.name, v, None, None, s)
                    if s == "added"
                    else status_line(p.name, v, p.kernel, self.arch, s)
                    for v, s in sorted(p.after.items())
                ]
            else:
                after = status_lines(after_entries, p.name)
            diffs.append(
                {
                    "before_header": f"dkms status ({p.name})",
                    "after_header": f"dkms status ({p.name})",
                    "before": "".join(line + "\n" for line in before_lines[p.name]),
                    "after": "".join(line + "\n" for line in after),
                }
            )
            diffs.extend(p.file_diffs)
        return diffs


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    Dkms(module).main()


if __name__ == "__main__":
    main()
