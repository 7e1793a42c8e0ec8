# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The DKMS planner of ``kmodlab.lab.dkms``: a snapshot of the host in, typed steps out.

Pure: it reads nothing from disk and runs nothing. The executor (``dkms_exec.py``) gathers
a ``Snapshot`` first (dkms's tree as ``dkms_tree.read_tree`` reads it, which of the given
source files differ on disk, the source digests, the source folders, the kernels with
headers), asks ``plan`` for the steps, and runs them. Tests feed it plain data.

Two stages:

* ``install``: write the sources, ``dkms add``, build and install the wanted version for
  each kernel; remove the packages whose state is absent. Other versions of a present
  package stay registered (the install leaves them built: a rollback target) and keep
  their sources.
* ``prune``: for each present package whose wanted version is installed, and not
  different from its build, on every kernel of the call, remove its other versions from
  DKMS and delete their source folders (also those of versions no longer registered). A
  package not that far is left alone, with a ``Note`` saying why.

Standard library only (plus the pure helpers of ``dkms_tree``), Python 3.10+.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.kmodlab.lab.plugins.module_utils.dkms_tree import (
    entry,
    entry_for,
    kernels_installed,
    versions_on_kernel,
)

PRESENT = "present"
ABSENT = "absent"
INSTALL = "install"
PRUNE = "prune"
STAGES = (INSTALL, PRUNE)
# Worst first: the status of a package over several kernels is the worst of them.
_STATUS_RANK = ("absent", "broken", "added", "built", "installed")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+~-]*$")

Entry = Mapping[str, Any]


class PlanError(ValueError):
    """The input cannot be planned (bad names, a dependency cycle); the message says why."""


# -- input ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Package:
    """One entry of the module's ``packages`` option."""

    name: str
    version: str
    state: str = PRESENT
    source_path: str = ""
    files: Mapping[str, str] | None = None
    executables: frozenset[str] = frozenset()
    depends: tuple[str, ...] = ()

    @classmethod
    def from_params(cls, spec: Mapping[str, Any], source_root: str) -> Package:
        name, version = spec["name"], spec["version"]
        return cls(
            name=name,
            version=version,
            state=spec.get("state") or PRESENT,
            source_path=spec.get("source_path") or source_dir(source_root, name, version),
            files=spec.get("files"),
            executables=frozenset(spec.get("executables") or ()),
            depends=tuple(spec.get("depends") or ()),
        )


def source_dir(source_root: str, name: str, version: str) -> str:
    """Where dkms takes the sources of ``name/version`` from: ``SOURCE_ROOT/NAME-VERSION``."""
    return posixpath.join(source_root, f"{name}-{version}")


@dataclass(frozen=True)
class Sources:
    """What the executor found of one package's sources before the run."""

    # Names of packages[].files whose content (or, for an executable, mode) differs on disk.
    changed: tuple[str, ...] = ()
    # Digest of the wanted version's source folder as it is (None: no such folder).
    digest: str | None = None
    # Digest recorded beside the wanted version's build, per kernel (None: none recorded).
    recorded: Mapping[str, str | None] = field(default_factory=dict)
    # Fingerprint of the certificate the build was signed with, recorded beside it.
    recorded_signing: Mapping[str, str | None] = field(default_factory=dict)
    # Versions with a source folder of this package (its dkms.conf names it).
    folders: frozenset[str] = frozenset()
    # Versions whose SOURCE_ROOT/NAME-VERSION exists at all (folder, file or link).
    paths: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Snapshot:
    """The state of the host the plan starts from."""

    entries: Sequence[Entry] = ()
    sources: Mapping[str, Sources] = field(default_factory=dict)
    headers: frozenset[str] = frozenset()  # kernels whose headers (/lib/modules/K/build) exist
    source_root: str = "/usr/src"
    arch: str = "x86_64"
    # SHA-256 fingerprint of the certificate dkms signs with now (None: no key yet).
    signing_key: str | None = None

    def of(self, name: str) -> Sources:
        return self.sources.get(name) or Sources()


# -- steps ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Step:
    """One thing to do for a package; ``reason`` says why."""

    package: str
    reason: str = ""

    def label(self, several_kernels: bool = False) -> str | None:
        """How the step shows in ``actions`` (None: it does not show)."""
        return None


@dataclass(frozen=True, kw_only=True)
class KernelStep(Step):
    """A step for one kernel; its label names the kernel when the call has several."""

    version: str
    kernel: str
    verb = ""

    def label(self, several_kernels: bool = False) -> str | None:
        return f"{self.verb} {self.kernel}" if several_kernels else self.verb


@dataclass(frozen=True, kw_only=True)
class WriteSources(Step):
    files: tuple[str, ...]

    def label(self, several_kernels: bool = False) -> str | None:
        return "sources"


@dataclass(frozen=True, kw_only=True)
class RemoveVersion(Step):
    """``dkms remove --all``: the version goes for every kernel."""

    version: str
    installed_on: tuple[str, ...] = ()  # kernels that need a depmod afterwards
    rebuild: bool = False  # removed to be added and built again (same version)

    def label(self, several_kernels: bool = False) -> str | None:
        return f"remove {self.version}"


@dataclass(frozen=True, kw_only=True)
class Add(Step):
    version: str

    def label(self, several_kernels: bool = False) -> str | None:
        return "add"


@dataclass(frozen=True, kw_only=True)
class Build(KernelStep):
    verb = "build"


@dataclass(frozen=True, kw_only=True)
class Uninstall(KernelStep):
    verb = "uninstall"


@dataclass(frozen=True, kw_only=True)
class Install(KernelStep):
    verb = "install"
    # Another version is registered: our list decides, also on a downgrade.
    force_version: bool = False


@dataclass(frozen=True, kw_only=True)
class Resign(KernelStep):
    """Sign the built (and installed) modules again, with the key dkms signs with now: the
    sources did not change, only the key did, so nothing is compiled."""

    verb = "re-sign"


@dataclass(frozen=True, kw_only=True)
class RecordDigest(KernelStep):
    """Adopt a build made outside kmodlab: record its source digest from now on."""

    def label(self, several_kernels: bool = False) -> str | None:
        return None


@dataclass(frozen=True, kw_only=True)
class DeleteSource(Step):
    version: str
    path: str

    def label(self, several_kernels: bool = False) -> str | None:
        return f"delete {self.path}"


@dataclass(frozen=True, kw_only=True)
class Depmod(Step):
    """``depmod -a KERNEL`` once, after every install and removal (``package`` is empty)."""

    kernel: str

    def label(self, several_kernels: bool = False) -> str | None:
        return f"depmod {self.kernel}"


@dataclass(frozen=True, kw_only=True)
class Note(Step):
    """Nothing done, for the reason given (a warning for the user)."""


# -- input checks -----------------------------------------------------------------------


def validate(packages: Sequence[Package], source_root: str, kernels: Sequence[str]) -> None:
    """Raise PlanError on input the executor must not act on."""
    for kernel in kernels:
        if not SAFE_NAME.match(kernel):
            raise PlanError(f"kernels: {kernel!r} is not a kernel release")
    seen: set[str] = set()
    for p in packages:
        for what, value in (("name", p.name), ("version", p.version)):
            if not SAFE_NAME.match(value):
                raise PlanError(
                    f"packages: {what} {value!r} is not a valid DKMS {what} (letters, "
                    "digits and '_.+~-', starting with a letter or digit)"
                )
        if p.name in seen:
            raise PlanError(f"packages: {p.name} is listed twice; list each once")
        seen.add(p.name)
        wanted = source_dir(source_root, p.name, p.version)
        if posixpath.normpath(p.source_path) != posixpath.normpath(wanted):
            raise PlanError(
                f"packages: source_path of {p.name} is {p.source_path}, but dkms adds sources "
                f"only from {wanted}: drop source_path or point it there"
            )
        for rel, content in (p.files or {}).items():
            norm = posixpath.normpath(rel)
            if posixpath.isabs(rel) or norm.startswith("..") or norm in (".", ""):
                raise PlanError(
                    f"packages: file name {rel!r} of {p.name} must be relative to its source "
                    "folder and stay inside it"
                )
            if not isinstance(content, str):
                raise PlanError(f"packages: content of {p.name}/{rel} must be text")
        unknown = sorted(p.executables - set(p.files or {}))
        if unknown:
            raise PlanError(
                f"packages: executables of {p.name} name {', '.join(unknown)}, which its "
                "files do not have"
            )
    dependency_order(packages)


def dependency_order(packages: Sequence[Package]) -> list[Package]:
    """The packages, each after those of the call it depends on (stable otherwise)."""
    by_name = {p.name: p for p in packages}
    order: list[Package] = []
    visiting: list[Package] = []

    def visit(p: Package) -> None:
        if any(q is p for q in order):
            return
        if any(q is p for q in visiting):
            cycle = [*visiting[visiting.index(p) :], p]
            raise PlanError(
                f"packages: dependency cycle {' -> '.join(q.name for q in cycle)}; a package "
                "cannot depend on itself, even through others"
            )
        visiting.append(p)
        for name in p.depends:
            if name in by_name:
                visit(by_name[name])
        visiting.pop()
        order.append(p)

    for p in packages:
        visit(p)
    return order


def dependencies(p: Package, order: Sequence[Package]) -> list[Package]:
    """The packages of the call that ``p`` depends on and that are to be present."""
    return [q for q in order if q.name in p.depends and q.state == PRESENT]


# -- planning ---------------------------------------------------------------------------


def registered(entries: Iterable[Entry], name: str) -> list[str]:
    """Every version of ``name`` registered in DKMS, sorted."""
    return sorted({e["version"] for e in entries if e["name"] == name})


def plan(
    packages: Sequence[Package],
    snapshot: Snapshot,
    kernels: Sequence[str],
    stage: str = INSTALL,
) -> list[Step]:
    """The steps that bring ``packages`` to their wanted state for ``kernels``.

    Packages come in dependency order (PlanError on a cycle), each with its steps in the
    order they are to run; one ``Depmod`` per kernel that needs it ends the list.
    """
    if stage not in STAGES:
        raise PlanError(f"stage must be one of {', '.join(STAGES)}, not {stage!r}")
    order = dependency_order(packages)
    steps: list[Step] = []
    builds: dict[str, set[str]] = {}
    for p in order:
        if stage == PRUNE:
            found = _prune(p, snapshot, kernels)
        elif p.state == ABSENT:
            found = _absent(p, snapshot)
        else:
            found = _present(p, snapshot, kernels, order, builds)
        builds[p.name] = {s.kernel for s in found if isinstance(s, Build)}
        steps += found
    return steps + [Depmod(package="", kernel=k, reason="modules changed") for k in depmod(steps)]


def depmod(steps: Iterable[Step]) -> list[str]:
    """Kernels whose modules the steps change: installs and removals of installed versions."""
    kernels: set[str] = set()
    for s in steps:
        if isinstance(s, Install):
            kernels.add(s.kernel)
        elif isinstance(s, RemoveVersion):
            kernels.update(s.installed_on)
    return sorted(kernels)


def _absent(p: Package, snap: Snapshot) -> list[Step]:
    versions = registered(snap.entries, p.name)
    out: list[Step] = [
        RemoveVersion(
            package=p.name,
            version=v,
            installed_on=tuple(kernels_installed(snap.entries, p.name, v)),
            reason="the package is to be absent",
        )
        for v in versions
    ]
    src = snap.of(p.name)
    for v in sorted(set(versions) | {p.version} | src.folders):
        if v in src.paths:
            path = source_dir(snap.source_root, p.name, v)
            out.append(DeleteSource(package=p.name, version=v, path=path, reason="absent"))
    return out


def _rebuild_reason(
    p: Package, snap: Snapshot, kernel: str, current: str | None, notes: list[str]
) -> str | None:
    """Why the wanted version, built or installed for ``kernel``, must be built again."""
    src = snap.of(p.name)
    if current == "broken":
        return "its source folder is gone"
    if current not in ("built", "installed"):
        return None
    found = entry_for(snap.entries, p.name, p.version, kernel)
    if src.changed:
        return "its sources changed"
    if found and found["missing"]:
        return "dkms reports built modules missing"
    if src.digest is None:
        # Never tear down a working module because its sources went missing.
        note = f"{p.source_path} is missing; {p.name} {p.version} stays as it is"
        if note not in notes:
            notes.append(note)
        return None
    recorded = src.recorded.get(kernel)
    if recorded is not None and recorded != src.digest:
        return "its sources changed since it was built"
    return None


def _resign_reason(p: Package, snap: Snapshot, kernel: str) -> str | None:
    """Why a build whose sources did not change must be signed again: dkms now signs with
    another certificate than the one recorded beside it (a new key re-signs every
    module; the same key, nothing)."""
    src = snap.of(p.name)
    signed = src.recorded_signing.get(kernel)
    if src.recorded.get(kernel) is None or snap.signing_key is None:
        return None
    if signed == snap.signing_key:
        return None
    was = f"the key {short_fingerprint(signed)}" if signed else "a key it did not record"
    return f"it was signed with {was}; dkms now signs with {short_fingerprint(snap.signing_key)}"


def short_fingerprint(fingerprint: str | None) -> str:
    """The first 8 bytes of a ``AA:BB:...`` fingerprint, enough to tell keys apart."""
    return ":".join((fingerprint or "").split(":")[:8]) + ("..." if fingerprint else "")


def _present(
    p: Package,
    snap: Snapshot,
    kernels: Sequence[str],
    order: Sequence[Package],
    builds: Mapping[str, set[str]],
) -> list[Step]:
    src = snap.of(p.name)
    out: list[Step] = []
    notes: list[str] = []
    if src.changed:
        out.append(
            WriteSources(
                package=p.name, files=src.changed, reason="they differ from the given files"
            )
        )
    versions = set(registered(snap.entries, p.name))
    others = sorted(versions - {p.version})
    status = {k: versions_on_kernel(snap.entries, p.name, k).get(p.version) for k in kernels}
    reasons: dict[str, str] = {}
    adopt: list[str] = []
    for k in kernels:
        reason = _rebuild_reason(p, snap, k, status[k], notes)
        if reason is None and status[k] in ("built", "installed") and src.digest is not None:
            # Its build recorded the CRCs of the symbols it uses from the old build.
            rebuilt = [q.name for q in dependencies(p, order) if k in builds.get(q.name, ())]
            if rebuilt:
                reason = f"{', '.join(rebuilt)}, which it depends on, is built again"
            elif src.recorded.get(k) is None and not src.changed:
                # Built outside kmodlab (dkms autoinstall after a kernel upgrade, or by
                # hand): take it as it is and record its digest from now on.
                adopt.append(k)
        if reason is not None:
            reasons[k] = reason
    out += [Note(package=p.name, reason=n) for n in notes]
    why: dict[str, str] = {}
    if reasons:
        first = reasons[next(k for k in kernels if k in reasons)]
        out.append(
            RemoveVersion(
                package=p.name,
                version=p.version,
                installed_on=tuple(kernels_installed(snap.entries, p.name, p.version)),
                rebuild=True,
                reason=first,
            )
        )
        versions.discard(p.version)
        status = dict.fromkeys(kernels)
        why = dict.fromkeys(kernels, f"rebuilt: {first}")
        adopt = []
    if p.version not in versions:
        out.append(Add(package=p.name, version=p.version, reason="not registered in DKMS"))
    out += [RecordDigest(package=p.name, version=p.version, kernel=k) for k in adopt]
    force = bool(others)
    for k in kernels:
        kw = {"package": p.name, "version": p.version, "kernel": k}
        found = entry_for(snap.entries, p.name, p.version, k)
        if status[k] in ("built", "installed") and k not in adopt:
            resign = _resign_reason(p, snap, k)
            if resign is not None:
                out.append(Resign(**kw, reason=resign))
        if status[k] in (None, "added"):
            out.append(Build(**kw, reason=why.get(k) or f"not built for {k}"))
            out.append(Install(**kw, force_version=force, reason="built now"))
        elif status[k] == "built":
            out.append(Install(**kw, force_version=force, reason=f"built, not installed for {k}"))
        elif found and found["diff"]:
            diff = "the installed module differs from its build"
            out += [Uninstall(**kw, reason=diff), Install(**kw, force_version=force, reason=diff)]
    return out


def _prune(p: Package, snap: Snapshot, kernels: Sequence[str]) -> list[Step]:
    if p.state != PRESENT:
        return []  # the install stage removes absent packages
    src = snap.of(p.name)
    others = [v for v in registered(snap.entries, p.name) if v != p.version]
    stale = sorted(v for v in src.folders if v != p.version)
    if not others and not stale:
        return []
    not_ready = [k for k in kernels if not _installed_clean(snap.entries, p, k)]
    if not_ready:
        left = ", ".join(others or stale)
        return [
            Note(
                package=p.name,
                reason=f"{p.name} {p.version} is not installed (or differs from its build) "
                f"for {', '.join(not_ready)}: {left} of {p.name} stay until it is",
            )
        ]
    out: list[Step] = [
        RemoveVersion(
            package=p.name,
            version=v,
            installed_on=tuple(kernels_installed(snap.entries, p.name, v)),
            reason=f"{p.version} is installed",
        )
        for v in others
    ]
    # Source folders of versions that are no longer (or never were) registered too, such
    # as that of a version whose build failed.
    out += [
        DeleteSource(
            package=p.name,
            version=v,
            path=source_dir(snap.source_root, p.name, v),
            reason=f"{p.version} is installed",
        )
        for v in stale
    ]
    return out


def _installed_clean(entries: Sequence[Entry], p: Package, kernel: str) -> bool:
    found = entry_for(entries, p.name, p.version, kernel)
    return bool(found) and found["status"] == "installed" and not found["diff"]


# -- what the plan needs and leaves -------------------------------------------------------


def missing_headers(steps: Iterable[Step], snapshot: Snapshot) -> dict[str, list[str]]:
    """Kernels without headers that builds are planned for, with those packages."""
    out: dict[str, list[str]] = {}
    for s in steps:
        if isinstance(s, Build) and s.kernel not in snapshot.headers:
            names = out.setdefault(s.kernel, [])
            if s.package not in names:
                names.append(s.package)
    return out


def predict_entries(entries: Sequence[Entry], steps: Iterable[Step], arch: str) -> list[Entry]:
    """The DKMS tree's entries once ``steps`` are done (check mode, diffs)."""
    out: list[Entry] = list(entries)

    def same(e: Entry, s: Step, version: str) -> bool:
        return e["name"] == s.package and e["version"] == version

    for s in steps:
        if isinstance(s, RemoveVersion):
            out = [e for e in out if not same(e, s, s.version)]
        elif isinstance(s, Add) and not any(same(e, s, s.version) for e in out):
            out.append(entry(s.package, s.version, None, None, "added"))
        elif isinstance(s, Build):
            out = [
                e for e in out if not (same(e, s, s.version) and e["kernel"] in (None, s.kernel))
            ]
            out.append(entry(s.package, s.version, s.kernel, arch, "built"))
        elif isinstance(s, Install):
            demoted = []
            for e in out:
                if e["name"] == s.package and e["kernel"] == s.kernel:
                    if e["version"] == s.version:
                        continue
                    if e["status"] == "installed":
                        e = entry(e["name"], e["version"], e["kernel"], e["arch"], "built")
                demoted.append(e)
            demoted.append(entry(s.package, s.version, s.kernel, arch, "installed"))
            out = demoted
    return sorted(out, key=lambda e: (e["name"], e["version"], e["kernel"] or "", e["arch"] or ""))


def status_over(statuses: Iterable[str]) -> str:
    """The status of a version over several kernels: the worst of them."""
    found = list(statuses)
    if not found:
        return "absent"
    return min(found, key=lambda s: _STATUS_RANK.index(s) if s in _STATUS_RANK else 0)


def prunable(
    packages: Sequence[Package],
    snapshot: Snapshot,
    kernels: Sequence[str],
    steps: Sequence[Step] | None = None,
) -> list[str]:
    """Names of the present packages a prune would act on, in the order given.

    Without ``steps``: as the host is in ``snapshot``. With them (the planned install
    stage, in check mode): as it will be once they are done.
    """
    if steps is not None:
        snapshot = Snapshot(
            entries=predict_entries(snapshot.entries, steps, snapshot.arch),
            sources=snapshot.sources,
            headers=snapshot.headers,
            source_root=snapshot.source_root,
            arch=snapshot.arch,
        )
    acting = {
        s.package
        for s in plan(packages, snapshot, kernels, PRUNE)
        if isinstance(s, (RemoveVersion, DeleteSource))
    }
    return [p.name for p in packages if p.name in acting]
