# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The executor of ``kmodlab.lab.dkms``: gather a snapshot, plan, run the steps, report.

Runs on the managed host, inside the module's payload: standard library and Ansible's
``module_utils`` only (never the ``kmodlab`` package). The decisions are the planner's
(``dkms_plan.py``); this file reads the host into a ``Snapshot`` before planning, runs the
steps the plan gives, and reads the DKMS tree again for the result.

Concurrency, reasoned rather than measured:

* ``dkms build`` of different packages in parallel is safe: dkms 3.0.10 builds in
  ``$dkms_tree/NAME/VERSION/build`` and stores the result in
  ``$dkms_tree/NAME/VERSION/KERNEL/ARCH``, both per package; the kernel's build tree is
  only read. Each build is CPU-bound (gcc, modpost) and mostly serial, so one build per
  CPU uses an emulated guest's vCPUs. Builds of one package for several kernels share
  its ``build`` folder: they run one after the other (the next starts when the previous
  one is done), while other packages build alongside.
* The one shared write is the signing key dkms generates on its first build
  (``/var/lib/dkms/mok.key``, or the ``mok_signing_key`` framework.conf names; Ubuntu's
  ``MOK.priv`` from update-secureboot-policy): when it is missing, the first build runs
  alone and dkms creates it; the others start once it is done. This module never makes
  a key: the signing stage owns the key and tells dkms which one to use.
* The serial steps before a build (sources, ``dkms add``: 2 s each in a TCG guest) run in
  the main thread, package after package, and each build is handed to the pool as soon as
  its package is prepared, so they overlap with the first builds. ``dkms add`` only
  writes ``$dkms_tree/NAME/VERSION``, which no running build touches.
* A package that depends on others of the call (``packages[].depends``, its
  ``BUILD_DEPENDS``) links against their exported symbols: its build reads their
  ``Module.symvers`` from the DKMS tree of the version installed for the kernel. So it is
  prepared and built only once they are built *and installed* for every kernel, and not
  at all when one of them failed (its previous build then stays as it was).
* ``dkms install`` steps run one at a time in the main thread, with ``--no-depmod``: each
  would otherwise run ``depmod -a`` (tens of seconds in a TCG guest), and concurrent
  depmods rewrite the same ``modules.dep``. One ``depmod -a KERNEL`` per kernel runs at
  the end. Installs start as soon as their build is done, while other builds go on (an
  install only copies ``VERSION/KERNEL/ARCH`` to ``/lib/modules/KERNEL``).
* State is read from dkms's tree (``dkms_tree.read_tree``), not from ``dkms status``: the
  same facts in milliseconds, where ``dkms status`` costs about 3 s per package.
* Worker threads call ``AnsibleModule.run_command``: it builds its own environment copy,
  runs the argument list with ``subprocess.Popen`` (no shell) and touches no shared state;
  ``handle_exceptions=False`` keeps it from calling ``fail_json`` inside a thread. What a
  worker records goes to its own package, under that package's lock.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from ansible_collections.kmodlab.lab.plugins.module_utils.delivery import (
    PACKAGE_PATTERN,
    package_conflict,
    package_copies,
)
from ansible_collections.kmodlab.lab.plugins.module_utils.dkms_plan import (
    ABSENT,
    INSTALL,
    PRESENT,
    PRUNE,
    Add,
    Build,
    DeleteSource,
    Depmod,
    Install,
    Note,
    Package,
    PlanError,
    RecordDigest,
    RemoveVersion,
    Resign,
    Snapshot,
    Sources,
    Step,
    Uninstall,
    WriteSources,
    dependencies,
    dependency_order,
    missing_headers,
    plan,
    predict_entries,
    prunable,
    registered,
    source_dir,
    status_over,
    validate,
)
from ansible_collections.kmodlab.lab.plugins.module_utils.dkms_tree import (
    DEFAULT_DEST,
    conf_modules,
    entry_for,
    read_tail,
    read_tree,
    source_digest,
    status_lines,
    tail,
    versions_on_kernel,
)
from ansible_collections.kmodlab.lab.plugins.module_utils.dpkg_status import query_argv, read_query
from ansible_collections.kmodlab.lab.plugins.module_utils.files import write_atomic
from ansible_collections.kmodlab.lab.plugins.module_utils.modsig import SignatureError
from ansible_collections.kmodlab.lab.plugins.module_utils.modsig import read as read_signature

DIGEST_FILE = "kmodlab-source.sha256"
SIGNING_LINE = "signing-key "
# English, so dkms/make/gcc output (and our parsing of it) does not depend on the locale.
C_LOCALE = {"LC_ALL": "C", "LANG": "C", "LC_MESSAGES": "C"}
OUTPUT_LINES = 40
# strerror(ENOSPC) as dkms, make and gcc print it (they run in the C locale).
ENOSPC = "No space left on device"
_FRAMEWORK_SETTING = re.compile(r"""^\s*([a-z_]+)=["']?([^"'\s]+)""")
_PACKAGE_NAME = re.compile(r"""^\s*PACKAGE_NAME=["']?([^"'\s]+)""", re.MULTILINE)


@dataclass(frozen=True)
class Paths:
    """Where the host keeps what the module reads besides the two trees (tests move them)."""

    lib_modules: str = "/lib/modules"
    boot: str = "/boot"
    framework_confs: tuple[str, ...] = ("/etc/dkms/framework.conf", "/etc/dkms/framework.conf.d")
    os_release: str = "/etc/os-release"


def disk_full(*texts: str | Sequence[str] | None) -> bool:
    """Whether a failure's texts (strings or lists of lines) say a filesystem was full."""
    return any(ENOSPC in (t if isinstance(t, str) else "\n".join(t or [])) for t in texts)


def parse_record(text: str) -> tuple[str | None, str | None]:
    """``(digest, signing fingerprint)`` of a record file: the digest on the first line,
    then ``signing-key FINGERPRINT`` when dkms signed the build."""
    lines = text.strip().splitlines()
    digest = lines[0].strip() if lines and not lines[0].startswith(SIGNING_LINE) else None
    signing = next(
        (ln[len(SIGNING_LINE) :].strip() for ln in lines if ln.startswith(SIGNING_LINE)), None
    )
    return digest or None, signing or None


def certificate_fingerprint(data: bytes) -> str:
    """SHA-256 of a certificate's DER (given as DER or PEM), as ``AA:BB:...``."""
    if data.lstrip().startswith(b"-----BEGIN"):
        body = data.decode("ascii", "replace").split("-----")[2]
        data = base64.b64decode("".join(body.split()), validate=True)
    if not data:
        raise ValueError("empty certificate")
    return ":".join(f"{b:02X}" for b in hashlib.sha256(data).digest())


def package_name(conf: str) -> str | None:
    match = _PACKAGE_NAME.search(conf)
    return match.group(1) if match else None


class PackageRun:
    """One package during the run: its steps, what was done, its result."""

    def __init__(self, spec: Package, kernels: Sequence[str], steps: list[Step]) -> None:
        self.spec = spec
        self.name = spec.name
        self.version = spec.version
        self.kernels = list(kernels)
        self.steps = steps
        self.several = len(kernels) > 1
        self.lock = threading.Lock()
        self.before: dict[str, dict[str, str]] = {}
        self.after: dict[str, dict[str, str]] = {}
        self.files_changed: list[str] = []
        self.file_diffs: list[dict[str, str]] = []
        self.done: list[str] = []
        self.done_by_kernel: dict[str, list[str]] = {k: [] for k in kernels}
        self.removed_versions: list[str] = []
        self.failure: dict[str, Any] | None = None
        self.kernel_failures: dict[str, dict[str, str]] = {}
        self.notes: list[str] = []
        self.timing: dict[str, list[float]] = {}
        self.installs_done: set[str] = set()
        self.installed: set[str] = set()  # kernels with the install checked in the tree
        self.added_now = False
        self.prepared = False  # its serial steps (sources, removal, add) went through
        self.created_source = False
        self.reverted = False

    # -- the plan of this package ----------------------------------------------------------

    def planned(self, kind: type) -> list[Any]:
        return [s for s in self.steps if isinstance(s, kind)]

    @property
    def builds(self) -> list[Build]:
        return self.planned(Build)

    def build_for(self, kernel: str) -> Build | None:
        return next((s for s in self.builds if s.kernel == kernel), None)

    @property
    def rebuild(self) -> RemoveVersion | None:
        return next((s for s in self.planned(RemoveVersion) if s.rebuild), None)

    def label(self, step: Step) -> str | None:
        return step.label(self.several)

    # -- recording (thread-safe) -----------------------------------------------------------

    @property
    def failed(self) -> bool:
        return self.failure is not None

    def record(self, step: Step | str) -> None:
        label = step if isinstance(step, str) else self.label(step)
        with self.lock:
            if label:
                self.done.append(label)
            kernel = getattr(step, "kernel", None)
            if kernel in self.done_by_kernel and not isinstance(step, str):
                self.done_by_kernel[kernel].append(step.label())

    def time(self, label: str, start: float, started: float) -> None:
        end = time.monotonic()
        with self.lock:
            self.timing[label] = [round(start - started, 1), round(end - start, 1)]

    def fail(
        self,
        step: str,
        msg: str,
        rc: int | None = None,
        stdout: str | None = None,
        stderr: str | None = None,
        log_tail: list[str] | None = None,
        log_path: str | None = None,
        kernel: str | None = None,
    ) -> None:
        failure: dict[str, Any] = {"step": step, "msg": msg}
        if rc is not None:
            failure["rc"] = rc
            failure["stdout"] = "\n".join(tail(stdout, OUTPUT_LINES))
            failure["stderr"] = "\n".join(tail(stderr, OUTPUT_LINES))
        if log_tail is not None:
            failure["log_tail"] = log_tail
        if log_path is not None:
            failure["log_path"] = log_path
        with self.lock:
            if self.failure is None:
                self.failure = failure
            for k in [kernel] if kernel else self.kernels:
                self.kernel_failures.setdefault(k, {"step": step, "msg": msg})

    # -- result ----------------------------------------------------------------------------

    def visible(self) -> list[str]:
        return [label for s in self.steps if (label := self.label(s))]

    def changed(self, check_mode: bool) -> bool:
        if check_mode:
            return bool(self.visible()) or bool(self.files_changed)
        if self.files_changed or self.before != self.after:
            return True
        return bool(self.done) and not self.reverted

    def status(self, kernel: str) -> str:
        return self.after.get(kernel, {}).get(self.version, "absent")

    def result(self, check_mode: bool) -> dict[str, Any]:
        first = self.kernels[0]
        per_kernel = {}
        for k in self.kernels:
            planned = [s.label() for s in self.steps if getattr(s, "kernel", None) == k]
            item: dict[str, Any] = {
                "before": self.before.get(k, {}),
                "after": self.after.get(k, {}),
                "status": self.status(k),
                "actions": [a for a in planned if a] if check_mode else self.done_by_kernel[k],
                "failed": k in self.kernel_failures,
            }
            item.update(self.kernel_failures.get(k, {}))
            per_kernel[k] = item
        planned_removals = [s.version for s in self.planned(RemoveVersion) if not s.rebuild]
        rebuilds = [s.reason for s in self.planned(RemoveVersion) if s.rebuild]
        out = {
            "name": self.name,
            "version": self.version,
            "state": self.spec.state,
            "kernel": first,
            "kernels": per_kernel,
            "before": self.before.get(first, {}),
            "after": self.after.get(first, {}),
            "status": status_over(self.status(k) for k in self.kernels),
            "changed": self.changed(check_mode),
            "actions": self.visible() if check_mode else list(self.done),
            "files_changed": self.files_changed,
            "removed_versions": planned_removals if check_mode else self.removed_versions,
            "rebuilt_because": rebuilds[0] if rebuilds else None,
            "notes": self.notes,
            "failed": self.failed,
            "timing": self.timing,
        }
        if self.failure:
            out.update(self.failure)
        return out


class BuildQueue:
    """Builds on a thread pool; with ``first_alone``, the others wait for the first."""

    def __init__(self, pool: ThreadPoolExecutor, build: Callable, first_alone: bool) -> None:
        self.pool = pool
        self.build = build
        self.first_alone = first_alone
        self.futures: list[Future] = []
        self.held: list[tuple[PackageRun, Build]] = []
        self.gate: Future | None = None

    def add(self, run: PackageRun, step: Build) -> None:
        self.pump()
        if self.gate is not None:
            self.held.append((run, step))
            return
        future = self.pool.submit(self.build, run, step)
        self.futures.append(future)
        if self.first_alone:
            self.first_alone = False
            self.gate = future

    def pump(self) -> None:
        """Release the held builds once the first one is done."""
        if self.gate is not None and self.gate.done():
            self.gate = None
            held, self.held = self.held, []
            for run, step in held:
                self.add(run, step)


class Executor:
    """The run: snapshot, plan, act, report."""

    def __init__(self, module: Any, paths: Paths | None = None) -> None:
        self.module = module
        self.params = module.params
        self.paths = paths or Paths()
        self.check_mode = module.check_mode
        self.stage = self.params["stage"]
        self.kernels = list(dict.fromkeys(self.params["kernels"] or [os.uname()[2]]))
        self.arch = os.uname()[4]
        self.started = time.monotonic()
        self.dkms_tree = self.params["dkms_tree"]
        self.source_root = self.params["source_root"]
        self.log_lines = max(0, self.params["log_lines"])
        self.warnings: list[str] = []
        self.warn_lock = threading.Lock()
        self.depmod_kernels: set[str] = set()
        self.dkms_bin = module.get_bin_path("dkms", required=False)
        self.packages = [
            Package.from_params(spec, self.source_root) for spec in self.params["packages"]
        ]
        self.order: list[Package] = []
        self.runs: dict[str, PackageRun] = {}

    # -- commands --------------------------------------------------------------------------

    def warn(self, text: str) -> None:
        with self.warn_lock:
            self.warnings.append(text)

    def run_command(self, argv: list[str]) -> tuple[int, str, str]:
        """Run one command (argument list, never a shell); safe from threads (see top)."""
        return self.module.run_command(argv, environ_update=C_LOCALE, handle_exceptions=False)

    def dkms(self, *args: str) -> tuple[int, str, str]:
        return self.run_command([self.dkms_bin, *args])

    def timed(self, run: PackageRun, step: Step, *args: str) -> tuple[int, str, str]:
        """``dkms ARGS`` for ``step``, its start and duration kept in the package's timing."""
        start = time.monotonic()
        try:
            return self.dkms(*args)
        finally:
            run.time(run.label(step) or "", start, self.started)

    def workers(self, count: int) -> int:
        return max(1, min(self.params["jobs"] or os.cpu_count() or 1, count))

    def read_status(self, names: Iterable[str]) -> list[dict[str, Any]]:
        """The status entries of ``names`` for every kernel, read from the DKMS tree."""
        return read_tree(self.dkms_tree, list(names), self.paths.lib_modules)

    def disk_full_fix(self) -> str:
        """What to do when dkms, make or this module found a filesystem full."""
        where = f"{self.dkms_tree} {self.source_root} /tmp"
        return f"the disk is full: free space on it (df -h {where}) and re-run"

    # -- the snapshot ----------------------------------------------------------------------

    @staticmethod
    def file_mode(p: Package, rel: str) -> int:
        return 0o755 if rel in p.executables else 0o644

    def compare_files(self, p: Package) -> tuple[list[str], list[dict[str, str]]]:
        """The names of ``p.files`` that differ on disk, and their diffs."""
        changed, diffs = [], []
        for rel in sorted(p.files or {}):
            dest = os.path.join(p.source_path, rel)
            wanted = p.files[rel].encode("utf-8")
            try:
                with open(dest, "rb") as handle:
                    current: bytes | None = handle.read()
                mode_ok = (os.stat(dest).st_mode & 0o777) == self.file_mode(p, rel)
            except OSError:
                current, mode_ok = None, False
            if current != wanted or (rel in p.executables and not mode_ok):
                changed.append(rel)
                before = "" if current is None else current.decode("utf-8", "replace")
                diffs.append(
                    {
                        "before_header": dest,
                        "after_header": dest,
                        "before": before,
                        "after": p.files[rel],
                    }
                )
        return changed, diffs

    def digest_path(self, name: str, version: str, kernel: str, arch: str | None) -> str:
        return os.path.join(
            self.dkms_tree, name, version, kernel, arch or self.arch, "log", DIGEST_FILE
        )

    def recorded_digest(self, path: str) -> tuple[str | None, str | None]:
        """``(source digest, signing key fingerprint)`` recorded beside a build."""
        try:
            with open(path) as handle:
                return parse_record(handle.read())
        except OSError:
            return None, None

    def owned_folders(self, name: str) -> frozenset[str]:
        """Versions of ``name`` with a source folder, registered or not (failed builds).

        A folder counts only if its dkms.conf names this package, so ``foo`` never takes
        ``foo-bar-1.0`` (package foo-bar) for a version of itself.
        """
        found = set()
        prefix = name + "-"
        try:
            children = os.listdir(self.source_root)
        except OSError:
            return frozenset()
        for child in children:
            if not child.startswith(prefix):
                continue
            try:
                with open(os.path.join(self.source_root, child, "dkms.conf")) as handle:
                    conf = handle.read()
            except OSError:
                continue
            if package_name(conf) == name:
                found.add(child[len(prefix) :])
        return frozenset(found)

    def sources(self, p: Package, entries: list[dict[str, Any]], with_files: bool) -> Sources:
        folders = self.owned_folders(p.name)
        candidates = set(registered(entries, p.name)) | {p.version} | folders
        paths = frozenset(
            v for v in candidates if os.path.lexists(source_dir(self.source_root, p.name, v))
        )
        if p.state != PRESENT or self.stage != INSTALL or not with_files:
            return Sources(folders=folders, paths=paths)
        run = self.runs[p.name]
        run.files_changed, run.file_diffs = self.compare_files(p)
        recorded, signing = {}, {}
        for k in self.kernels:
            entry = entry_for(entries, p.name, p.version, k)
            if entry is not None:
                path = self.digest_path(p.name, p.version, k, entry["arch"])
                recorded[k], signing[k] = self.recorded_digest(path)
        return Sources(
            changed=tuple(run.files_changed),
            digest=source_digest(p.source_path),
            recorded=recorded,
            recorded_signing=signing,
            folders=folders,
            paths=paths,
        )

    def snapshot(self, entries: list[dict[str, Any]], with_files: bool = True) -> Snapshot:
        headers = frozenset(
            k
            for k in self.kernels
            if os.path.isdir(os.path.join(self.paths.lib_modules, k, "build"))
        )
        return Snapshot(
            entries=entries,
            sources={p.name: self.sources(p, entries, with_files) for p in self.packages},
            headers=headers,
            source_root=self.source_root,
            arch=self.arch,
            signing_key=self.signing_fingerprint(),
        )

    # -- signing key (only what concerns build concurrency) --------------------------------

    def framework_setting(self, name: str) -> str | None:
        """The last value framework.conf and framework.conf.d/*.conf give ``name``."""
        value = None
        for path in self.framework_files():
            try:
                with open(path) as handle:
                    for line in handle:
                        m = _FRAMEWORK_SETTING.match(line)
                        if m and m.group(1) == name:
                            value = m.group(2)
            except OSError:
                continue
        return value

    def framework_files(self) -> list[str]:
        files: list[str] = []
        for conf in self.paths.framework_confs:
            if os.path.isdir(conf):
                files += sorted(
                    os.path.join(conf, n) for n in os.listdir(conf) if n.endswith(".conf")
                )
            elif os.path.isfile(conf):
                files.append(conf)
        return files

    def signing_key(self) -> tuple[str, str]:
        """``(key, certificate)`` as dkms 3.0 picks them for signing."""
        key = self.framework_setting("mok_signing_key")
        cert = self.framework_setting("mok_certificate")
        if key is None:
            if self.is_ubuntu():
                # Ubuntu's dkms uses (and update-secureboot-policy creates) the shim's MOK.
                key = "/var/lib/shim-signed/mok/MOK.priv"
                cert = cert or "/var/lib/shim-signed/mok/MOK.der"
            else:
                key = os.path.join(self.dkms_tree, "mok.key")
        return key, cert or os.path.join(self.dkms_tree, "mok.pub")

    def signing_fingerprint(self) -> str | None:
        """SHA-256 fingerprint of the certificate dkms signs with (None: not there yet)."""
        _key, cert = self.signing_key()
        try:
            with open(cert, "rb") as handle:
                return certificate_fingerprint(handle.read())
        except (OSError, ValueError):
            return None

    def is_ubuntu(self) -> bool:
        try:
            with open(self.paths.os_release) as handle:
                return any(line.strip() == "ID=ubuntu" for line in handle)
        except OSError:
            return False

    def signing_key_missing(self) -> bool:
        """Whether dkms would create its signing key on the next build (a race if parallel)."""
        key, cert = self.signing_key()
        if key.startswith("pkcs11:"):
            return False
        return not (os.path.isfile(key) and os.path.isfile(cert))

    # -- steps -----------------------------------------------------------------------------

    def write_files(self, run: PackageRun, step: WriteSources) -> bool:
        p = run.spec
        run.created_source = not os.path.lexists(p.source_path)
        try:
            for rel in step.files:
                data = p.files[rel].encode("utf-8")
                write_atomic(
                    self.module, os.path.join(p.source_path, rel), data, self.file_mode(p, rel)
                )
        except OSError as exc:
            fix = (
                self.disk_full_fix()
                if exc.errno == errno.ENOSPC
                else "check that the folder is writable (the module needs root)"
            )
            run.fail(
                "sources",
                f"could not write the sources of {p.name} to {p.source_path}: {exc}; {fix}",
            )
            return False
        run.record(step)
        return True

    def remove_version(self, run: PackageRun, step: RemoveVersion) -> bool:
        v = step.version
        rc, out, err = self.dkms("remove", "-m", run.name, "-v", v, "--all", "--no-depmod")
        if rc != 0:
            run.fail(
                "remove",
                f"'dkms remove -m {run.name} -v {v} --all' failed: see stderr; remove it by "
                "hand and re-run",
                rc,
                out,
                err,
            )
            return False
        self.depmod_kernels.update(step.installed_on)
        run.record(step)
        if not step.rebuild:
            run.removed_versions.append(v)
        return True

    def delete_source(self, run: PackageRun, version: str) -> None:
        path = source_dir(self.source_root, run.name, version)
        if not os.path.lexists(path):
            return
        try:
            if os.path.islink(path) or not os.path.isdir(path):
                os.unlink(path)
            else:
                shutil.rmtree(path)
        except OSError as exc:
            self.warn(f"could not delete {path}: {exc}")
            return
        run.record(f"delete {path}")

    def add(self, run: PackageRun, step: Add) -> bool:
        p = run.spec
        if not os.path.isfile(os.path.join(p.source_path, "dkms.conf")):
            run.fail(
                "add",
                f"{p.source_path} has no dkms.conf: pass it in files or put the package's "
                "sources there",
            )
            return False
        rc, out, err = self.timed(run, step, "add", "-m", p.name, "-v", p.version)
        if rc != 0:
            run.fail(
                "add",
                f"'dkms add -m {p.name} -v {p.version}' failed: check {p.source_path}/dkms.conf "
                "(see stderr)",
                rc,
                out,
                err,
            )
            return False
        # A rebuild re-adds the version too: its old build is gone either way.
        run.added_now = True
        run.record(step)
        return True

    def prepare(self, run: PackageRun) -> None:
        """Serial steps before the builds: sources, removal for a rebuild, dkms add."""
        for step in run.steps:
            if isinstance(step, WriteSources):
                ok = self.write_files(run, step)
            elif isinstance(step, RemoveVersion) and step.rebuild:
                ok = self.remove_version(run, step)
            elif isinstance(step, Add):
                ok = self.add(run, step)
            elif isinstance(step, RecordDigest):
                ok = True
                self.write_digest(run, step.kernel)
            elif isinstance(step, Resign):
                ok = self.resign(run, step)
            else:
                continue
            if not ok:
                return
        run.prepared = True

    def resign(self, run: PackageRun, step: Resign) -> bool:
        """Sign the built modules of ``step.kernel`` again with the key dkms signs with now
        (its old signature stripped first, as sign-file would otherwise sign over it), and
        put them where the installed copies are; nothing is compiled, no depmod is needed
        (same files, same symbols)."""
        key, cert = self.signing_key()
        sign_file = self.sign_file(step.kernel)
        if sign_file is None:
            run.fail("re-sign", f"no sign-file for {step.kernel} (install its headers)")
            return False
        base = os.path.join(self.dkms_tree, run.name, run.version, step.kernel, self.arch)
        built_dir = os.path.join(base, "module")
        installed = os.path.islink(
            os.path.join(self.dkms_tree, run.name, f"kernel-{step.kernel}-{self.arch}")
        )
        conf = os.path.join(self.dkms_tree, run.name, run.version, "source", "dkms.conf")
        wanted = conf_modules(conf) or [
            (f[: -len(".ko")], f[: -len(".ko")], DEFAULT_DEST)
            for f in sorted(os.listdir(built_dir))
            if f.endswith(".ko")
        ]
        for built_name, dest_name, where in wanted:
            path = os.path.join(built_dir, built_name + ".ko")
            if not os.path.isfile(path):
                run.fail(
                    "re-sign",
                    f"{path} is not there (a compressed module cannot be signed again in "
                    f"place): remove {run.name} {run.version} from dkms to have it rebuilt",
                )
                return False
            with open(path, "rb") as handle:
                data = handle.read()
            try:
                sig = read_signature(data)
            except SignatureError:
                sig = None
            content = data[: sig.content_length] if sig else data
            work = path + ".kmodlab-sign"
            with open(work, "wb") as handle:
                handle.write(content)
            rc, out, err = self.module.run_command(
                [sign_file, self.sig_hash(step.kernel), key, cert, work],
                environ_update=C_LOCALE,
            )
            if rc != 0:
                os.unlink(work)
                run.fail("re-sign", f"sign-file failed for {path}", rc=rc, stdout=out, stderr=err)
                return False
            os.replace(work, path)
            if installed:
                dest = os.path.join(
                    self.paths.lib_modules, step.kernel, where.strip("/"), dest_name + ".ko"
                )
                if os.path.isfile(dest):
                    with open(path, "rb") as handle:
                        write_atomic(self.module, dest, handle.read(), 0o644)
        run.record(step)
        self.write_digest(run, step.kernel)
        return True

    def sign_file(self, kernel: str) -> str | None:
        """The sign-file program dkms 3.0 uses for ``kernel`` (framework.conf's sign_file,
        else Debian's linux-kbuild copy, else the headers')."""
        configured = self.framework_setting("sign_file")
        candidates = [configured] if configured else []
        candidates += [  # 6.1.0-28-amd64: linux-kbuild-6.1, as dkms's ${kernelver%.*}
            f"/usr/lib/linux-kbuild-{kernel.rsplit('.', 1)[0]}/scripts/sign-file",
            f"/usr/src/linux-headers-{kernel}/scripts/sign-file",
            os.path.join(self.paths.lib_modules, kernel, "build/scripts/sign-file"),
        ]
        return next((c for c in candidates if os.path.isfile(c) and os.access(c, os.X_OK)), None)

    def sig_hash(self, kernel: str) -> str:
        """CONFIG_MODULE_SIG_HASH of ``kernel`` (what dkms signs with), sha512 when unknown."""
        for config in (
            os.path.join(self.paths.lib_modules, kernel, "build/.config"),
            os.path.join(self.paths.boot, f"config-{kernel}"),
        ):
            try:
                with open(config) as handle:
                    for line in handle:
                        if line.startswith("CONFIG_MODULE_SIG_HASH="):
                            return line.split("=", 1)[1].strip().strip('"')
            except OSError:
                continue
        return "sha512"

    def build(self, run: PackageRun, step: Build) -> tuple[PackageRun, Build]:
        """Build one package for one kernel; runs in a worker thread."""
        argv = ["build", "-m", run.name, "-v", run.version, "-k", step.kernel]
        try:
            rc, out, err = self.timed(run, step, *argv)
        except Exception as exc:  # a thread must not take the module down
            run.fail(
                "build", f"could not run 'dkms build' for {run.name}: {exc}", kernel=step.kernel
            )
            return run, step
        if rc == 0:
            run.record(step)
            self.write_digest(run, step.kernel)
            return run, step
        log_path: str | None = os.path.join(
            self.dkms_tree, run.name, run.version, "build", "make.log"
        )
        log_tail = read_tail(log_path, self.log_lines)
        if log_tail is None:
            log_path = None
            log_tail = tail((out or "") + "\n" + (err or ""), self.log_lines)
        cause = (
            f"{ENOSPC}: {self.disk_full_fix()}"
            if disk_full(log_tail, out, err)
            else "fix the module's sources"
        )
        where = f"; the full log was {log_path}" if log_path else ""
        run.fail(
            "build",
            f"'dkms {' '.join(argv)}' failed (rc={rc}): {cause} (see log_tail){where}"
            f"{self.rebuild_note(run, step.kernel)}",
            rc,
            out,
            err,
            log_tail=log_tail,
            log_path=log_path,
            kernel=step.kernel,
        )
        return run, step

    @staticmethod
    def rebuild_note(run: PackageRun, kernel: str) -> str:
        rebuild = run.rebuild
        if rebuild is None or run.before.get(kernel, {}).get(run.version) != "installed":
            return ""
        if "which it depends on" in rebuild.reason:
            return f". Its installed build was removed first because {rebuild.reason}"
        return (
            f". Its installed build was removed first because {rebuild.reason} without a new "
            "version: give the module a new version to keep the old build until the new one "
            "works"
        )

    def write_digest(self, run: PackageRun, kernel: str) -> None:
        digest = source_digest(run.spec.source_path)
        path = self.digest_path(run.name, run.version, kernel, None)
        if digest is None or not os.path.isdir(os.path.dirname(path)):
            return
        signing = self.signing_fingerprint()
        try:
            with open(path, "w") as handle:
                handle.write(digest + "\n")
                if signing:
                    handle.write(f"{SIGNING_LINE}{signing}\n")
        except OSError as exc:
            self.warn(f"could not record the source digest in {path}: {exc}")

    def install(self, run: PackageRun, kernel: str) -> None:
        """Serial: (uninstall,) install, then check it in the DKMS tree."""
        name, version = run.name, run.version
        for step in run.planned(Uninstall):
            if step.kernel != kernel:
                continue
            rc, out, err = self.dkms(
                "uninstall", "-m", name, "-v", version, "-k", kernel, "--no-depmod"
            )
            if rc != 0:
                run.fail(
                    "uninstall",
                    f"'dkms uninstall' of {name}/{version} (installed module differs from its "
                    "build) failed: see stderr",
                    rc,
                    out,
                    err,
                    kernel=kernel,
                )
                return
            run.record(step)
            self.depmod_kernels.add(kernel)
        step = next(s for s in run.planned(Install) if s.kernel == kernel)
        argv = ["install", "-m", name, "-v", version, "-k", kernel, "--no-depmod"]
        if step.force_version:
            # Our list decides the version, also when it is a downgrade or the .ko carries
            # the same MODULE_VERSION: without this dkms may "install" (rc 0) without
            # copying the module.
            argv.append("--force-version-override")
        rc, out, err = self.timed(run, step, *argv)
        if rc != 0:
            run.fail(
                "install",
                f"'dkms {' '.join(argv)}' failed (rc={rc}): see stdout/stderr",
                rc,
                out,
                err,
                kernel=kernel,
            )
            return
        run.record(step)
        run.installs_done.add(kernel)
        self.depmod_kernels.add(kernel)
        entry = entry_for(self.read_status([name]), name, version, kernel)
        if entry is None or entry["status"] != "installed" or entry["diff"]:
            # dkms refuses to replace a module it finds newer in /lib/modules/KERNEL but
            # still exits 0: a prune must not drop the other versions in that case.
            said = (entry or {}).get("line", "not installed")
            run.fail(
                "install",
                f"'dkms install' of {name}/{version} exited 0 but the DKMS tree says {said!r}: "
                f"a module of that name elsewhere in /lib/modules/{kernel} probably won dkms's "
                "version check (see stdout/stderr); remove it, then re-run",
                rc,
                out,
                err,
                kernel=kernel,
            )
            return
        run.installed.add(kernel)

    def remove_all(self, run: PackageRun) -> None:
        """Removals (absent packages, prune): versions from DKMS, then source folders."""
        for step in run.planned(RemoveVersion):
            if not self.remove_version(run, step):
                return
        for step in run.planned(DeleteSource):
            self.delete_source(run, step.version)

    def cleanup(self, run: PackageRun) -> None:
        """Remove a version this run added but could build or install for no kernel; after a
        full disk, also the source folder this run created for it."""
        failure = run.failure
        if not (self.params["cleanup_failed"] and failure):
            return
        if run.added_now:
            if failure["step"] not in ("build", "install") or run.installed:
                return
            rc, _out, err = self.dkms(
                "remove", "-m", run.name, "-v", run.version, "--all", "--no-depmod"
            )
            if rc != 0:
                self.warn(
                    f"could not remove the failed {run.name}/{run.version} from DKMS (rc={rc}): "
                    f"{err.strip()}"
                )
                return
            run.reverted = True
            run.record(f"remove {run.version} (cleanup)")
        texts = (
            failure["msg"],
            failure.get("stdout"),
            failure.get("stderr"),
            failure.get("log_tail"),
        )
        if run.created_source and disk_full(*texts):
            self.delete_source(run, run.version)

    def depmod(self) -> None:
        depmod = self.module.get_bin_path("depmod", required=True)
        for kernel in sorted(self.depmod_kernels):
            if not os.path.isdir(os.path.join(self.paths.lib_modules, kernel)):
                continue
            argv = [depmod, "-a", kernel]
            system_map = os.path.join(self.paths.boot, f"System.map-{kernel}")
            if os.path.isfile(system_map):
                argv += ["-F", system_map]
            rc, out, err = self.run_command(argv)
            if rc == 0:
                continue
            # Every package installed for that kernel in this run is unusable until depmod
            # works: record it on each of them.
            command = " ".join(argv)
            for run in self.runs.values():
                if kernel in run.installs_done and not run.failed:
                    run.fail(
                        "depmod",
                        f"'{command}' failed: {run.name} is installed but modprobe cannot find "
                        f"it until 'depmod -a {kernel}' succeeds; fix the error in stderr and "
                        "re-run",
                        rc,
                        out,
                        err,
                        kernel=kernel,
                    )
            self.warn(f"'{command}' failed (rc={rc}): {err}")

    # -- scheduling ------------------------------------------------------------------------

    def deps(self, run: PackageRun) -> list[PackageRun]:
        return [self.runs[q.name] for q in dependencies(run.spec, self.order)]

    @staticmethod
    def settled(run: PackageRun) -> bool:
        """Whether the dkms work of this run on ``run`` is over (failed, installed, or none)."""
        if run.failed:
            return True
        return {s.kernel for s in run.planned(Install)} <= run.installs_done

    def start(self, run: PackageRun, queue: BuildQueue) -> None:
        """Serial steps of ``run`` (sources, removal for a rebuild, dkms add), then its first
        build (the next ones follow it, as they share the package's build folder)."""
        self.prepare(run)
        if run.builds and not run.failed:
            queue.add(run, run.builds[0])

    def install_unbuilt(self, run: PackageRun) -> None:
        """Installs for the kernels the package is built for already."""
        if not run.prepared:
            return  # a serial step failed, or a dependency did
        for step in run.planned(Install):
            if run.build_for(step.kernel) is None:
                self.install(run, step.kernel)

    def release(self, waiting: list[PackageRun], queue: BuildQueue) -> None:
        """Start the waiting packages whose dependencies are installed; give up those of
        which a dependency failed (their earlier build, if any, is left alone)."""
        progress = True
        while progress:
            progress = False
            for run in list(waiting):
                deps = self.deps(run)
                failed = [q.name for q in deps if q.failed]
                if failed:
                    waiting.remove(run)
                    kept = [
                        v
                        for v, s in sorted(run.before[self.kernels[0]].items())
                        if s == "installed"
                    ]
                    stays = f"; {run.name} {', '.join(kept)} stays installed" if kept else ""
                    run.fail(
                        "build",
                        f"not built: {', '.join(failed)}, which {run.name} depends on "
                        f"(BUILD_DEPENDS), failed; fix that first (see its result) and "
                        f"re-run{stays}",
                    )
                    progress = True
                elif all(self.settled(q) for q in deps):
                    waiting.remove(run)
                    self.start(run, queue)
                    self.install_unbuilt(run)
                    progress = True

    def built(self, run: PackageRun, step: Build, queue: BuildQueue) -> None:
        """A build is over: start the package's next one, install this one."""
        builds = run.builds
        index = builds.index(step)
        if index + 1 < len(builds):
            queue.add(run, builds[index + 1])
        if step.kernel not in run.kernel_failures:
            self.install(run, step.kernel)

    def execute_install(self) -> None:
        runs = [self.runs[p.name] for p in self.order]
        for run in runs:
            if run.spec.state == ABSENT:
                self.remove_all(run)
        present = [r for r in runs if r.spec.state == PRESENT]
        building = [r for r in present if r.builds]
        first_alone = len(building) > 1 and self.signing_key_missing()
        with ThreadPoolExecutor(max_workers=self.workers(len(building))) as pool:
            queue = BuildQueue(pool, self.build, first_alone)
            # Each build starts as soon as its package is prepared, so the serial steps of
            # the next packages overlap with the builds of the first ones. A build that
            # needs packages of this run installed first (depends) waits for them; so do its
            # serial steps, so that nothing of it is touched when one of them fails.
            waiting = [r for r in building if self.deps(r)]
            for run in present:
                if run not in waiting:
                    self.start(run, queue)
            for run in present:
                if run not in waiting:
                    self.install_unbuilt(run)
            self.release(waiting, queue)
            # Install each build as soon as it is done, one at a time, while the other
            # builds go on; start the builds that waited for it.
            handled: set[Future] = set()
            while True:
                queue.pump()
                pending = [f for f in queue.futures if f not in handled]
                if not pending:
                    break
                done, _pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in list(queue.futures):
                    if future in done and future not in handled:
                        handled.add(future)
                        self.built(*future.result(), queue)
                self.release(waiting, queue)
            for run in waiting:  # never left: each dependency settles or fails (no cycles)
                run.fail("build", "not built: its dependencies never finished")
        for run in present:
            self.cleanup(run)

    def execute(self) -> None:
        for run in self.runs.values():
            for step in run.planned(Note):
                run.notes.append(step.reason)
                self.warn(step.reason)
        if self.stage == PRUNE:
            for p in self.order:
                self.remove_all(self.runs[p.name])
        else:
            self.execute_install()
        if self.depmod_kernels:
            self.depmod()

    # -- facts -----------------------------------------------------------------------------

    def fact_entry(self, run: PackageRun) -> dict[str, Any]:
        first = run.after.get(self.kernels[0], {})
        version, status = run.version, first.get(run.version, "absent")
        if status != "installed":
            installed = [v for v, s in sorted(first.items()) if s == "installed"]
            if installed:
                version, status = installed[0], "installed"
        entry = {
            "version": version,
            "wanted_version": run.version,
            "kernel": self.kernels[0],
            "status": status,
            "result": "failed" if run.failed else "ok",
        }
        if len(self.kernels) > 1:
            entry["kernels"] = {k: run.status(k) for k in self.kernels}
        return entry

    def update_fact(self) -> bool:
        path = self.params["fact_path"]
        if not path:
            return False
        try:
            with open(path) as handle:
                current = json.load(handle)
            if not isinstance(current, dict):
                current = {}
        except (OSError, ValueError):
            current = {}
        wanted = dict(current)
        for run in self.runs.values():
            if run.spec.state == ABSENT:
                wanted.pop(run.name, None)
            else:
                wanted[run.name] = self.fact_entry(run)
        if wanted == current:
            return False
        if not self.check_mode:
            data = (json.dumps(wanted, indent=2, sort_keys=True) + "\n").encode("utf-8")
            try:
                write_atomic(self.module, path, data, 0o644)
            except OSError as exc:
                self.warn(f"could not write the local fact {path}: {exc}")
                return False
        return True

    # -- the whole run ---------------------------------------------------------------------

    def check_one_copy(self, names: list[str]) -> None:
        """Stop before anything changes when a module to build has a prebuilt package."""
        if not names or self.module.get_bin_path("dpkg-query", required=False) is None:
            return
        answer = read_query(*self.run_command(query_argv(PACKAGE_PATTERN)))
        if "error" in answer:
            self.fail(f"cannot list the prebuilt kmodlab packages: {answer['error']}")
        found = package_copies(names, answer["packages"])
        if found:
            self.fail(package_conflict(found))

    def fail(self, msg: str) -> None:
        self.module.fail_json(msg=msg, kernel=self.kernels[0], kernels=self.kernels)

    def check_headers(self, steps: list[Step], snapshot: Snapshot) -> None:
        missing = missing_headers(steps, snapshot)
        if not missing:
            return
        msg = "; ".join(
            f"no kernel headers for {k} ({os.path.join(self.paths.lib_modules, k, 'build')} is "
            f"missing), needed to build {', '.join(names)}: run the kernel_headers role, or "
            f"(re)install the headers package for that kernel (apt-get install --reinstall "
            f"linux-headers-{k} on Debian)"
            for k, names in missing.items()
        )
        if not self.check_mode:
            self.fail(msg)
        self.warn(msg)

    def main(self) -> None:
        try:
            validate(self.packages, self.source_root, self.kernels)
            self.order = dependency_order(self.packages)
        except PlanError as exc:
            self.fail(str(exc))
        self.check_one_copy([p.name for p in self.packages if p.state == PRESENT])
        if self.dkms_bin is None:
            if not self.check_mode:
                self.fail(
                    "dkms is not installed on this host: run the kernel_headers role first (it "
                    "installs dkms, the compiler and the headers), or install dkms"
                )
            self.warn("dkms is not installed; assuming no package is registered")
        entries = self.read_status(p.name for p in self.packages)
        self.runs = {p.name: PackageRun(p, self.kernels, []) for p in self.packages}
        snapshot = self.snapshot(entries)
        steps = plan(self.packages, snapshot, self.kernels, self.stage)
        for run in self.runs.values():
            run.steps = [s for s in steps if s.package == run.name]
            run.before = {k: versions_on_kernel(entries, run.name, k) for k in self.kernels}
        self.check_headers(steps, snapshot)
        before_lines = {p.name: status_lines(entries, p.name) for p in self.packages}
        if self.check_mode:
            after_entries = predict_entries(entries, steps, self.arch)
            for run in self.runs.values():
                run.notes = [s.reason for s in run.planned(Note)]
                self.warnings += run.notes
        else:
            self.execute()
            # Read again only what this run touched.
            touched = [r.name for r in self.runs.values() if r.done or r.failed]
            after_entries = [e for e in entries if e["name"] not in touched]
            after_entries += self.read_status(touched)
        for run in self.runs.values():
            run.after = {k: versions_on_kernel(after_entries, run.name, k) for k in self.kernels}
        self.report(steps, snapshot, before_lines, after_entries)

    def prunable(self, steps: list[Step], snapshot: Snapshot, after_entries: list) -> list[str]:
        if self.stage != INSTALL:
            return []
        if self.check_mode:
            names = prunable(self.packages, snapshot, self.kernels, steps)
        else:
            after = Snapshot(
                entries=after_entries,
                sources={p.name: self.sources(p, after_entries, False) for p in self.packages},
                source_root=self.source_root,
                arch=self.arch,
            )
            names = prunable(self.packages, after, self.kernels)
        return [n for n in names if not self.runs[n].failed]

    def report(
        self,
        steps: list[Step],
        snapshot: Snapshot,
        before_lines: dict[str, list[str]],
        after_entries: list,
    ) -> None:
        fact_changed = self.update_fact()
        runs = list(self.runs.values())
        results = [r.result(self.check_mode) for r in runs]
        planned_depmod = [s.kernel for s in steps if isinstance(s, Depmod)]
        out: dict[str, Any] = {
            "changed": any(r["changed"] for r in results) or fact_changed,
            "stage": self.stage,
            "kernel": self.kernels[0],
            "kernels": self.kernels,
            "packages": results,
            "failed_packages": [r.name for r in runs if r.failed],
            "prunable": self.prunable(steps, snapshot, after_entries),
            "held": [r.name for r in runs if self.stage == PRUNE and r.planned(Note)],
            "depmod": planned_depmod if self.check_mode else sorted(self.depmod_kernels),
            "fact_changed": fact_changed,
        }
        if self.module._diff:
            out["diff"] = self.diff(before_lines, after_entries)
        for warning in self.warnings:
            self.module.warn(warning)
        if out["failed_packages"]:
            details = "; ".join(
                f"{r.name} {r.version}: {r.failure['step']} failed" for r in runs if r.failure
            )
            out["msg"] = (
                f"DKMS failed for {len(out['failed_packages'])} of {len(runs)} package(s): "
                f"{details}. The other packages were handled; see packages[].msg and "
                "packages[].log_tail"
            )
            self.module.fail_json(**out)
        self.module.exit_json(**out)

    def diff(self, before_lines: dict[str, list[str]], after_entries: list) -> list[dict[str, str]]:
        diffs = []
        for run in self.runs.values():
            if not run.changed(self.check_mode):
                continue
            header = f"dkms status ({run.name})"
            diffs.append(
                {
                    "before_header": header,
                    "after_header": header,
                    "before": "".join(line + "\n" for line in before_lines[run.name]),
                    "after": "".join(line + "\n" for line in status_lines(after_entries, run.name)),
                }
            )
            diffs.extend(run.file_diffs)
        return diffs
