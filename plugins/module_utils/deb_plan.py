# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The planner of ``kmodlab.lab.kmod_packages``: a snapshot of the host in, a ``Plan`` out.

Pure: it reads nothing from disk and runs nothing. The executor (``deb_exec.py``) gathers a
``Snapshot`` (which kernels are installed, what dpkg says of the kmodlab packages, which
files the package store holds and their digests, the rollout state file), asks one of
``plan_present``, ``plan_commit``, ``plan_rollback`` for the plan, and carries it out.

The rollout state (the local fact ``kmodlab_rollout``) has ``good`` (the last set that
passed its health gate), ``pending`` (installed by the current rollout, not yet gated, or
null) and ``history``. An entry of ``pending`` whose ``version`` is null records a module
the rollout removed; commit drops it from ``good``.

Standard library only, Python 3.10+.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.kmodlab.lab.plugins.module_utils.dpkg_status import status

SCHEMA = 1
# Set non-empty, a kmodlab package's postinst/postrm skip their ``depmod -a ABI``: the
# installer sets it and runs one depmod per kernel after installing every package.
DEFER_DEPMOD_ENV = "KMODLAB_DEFER_DEPMOD"
HISTORY = 20
MODULE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,54}$")
VERSION = re.compile(r"^[0-9][0-9A-Za-z.+~-]*$")
# A kernel ABI (uname -r) starts with MAJOR.MINOR; module names have no dot, so the ABI
# part of a package name is never confused with the end of a longer module name.
ABI = re.compile(r"^[0-9]+\.[0-9]+[0-9A-Za-z.+~_-]*$")
ARCH = re.compile(r"^[a-z0-9][a-z0-9-]*$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")

State = dict[str, Any]


class PlanError(ValueError):
    """The input cannot be planned; the message says why and what to do."""


# -- names (the same rules as kmodlab.fleet.debpkg on the controller) ---------------------


def package_prefix(module: str) -> str:
    return f"kmodlab-{module.replace('_', '-')}-modules-"


def package_name(module: str, abi: str) -> str:
    return package_prefix(module) + abi


def split_deb(file: str) -> tuple[str, str, str] | None:
    """``(package, version, arch)`` of a ``PACKAGE_VERSION_ARCH.deb`` name, else None."""
    if not file.endswith(".deb") or "/" in file:
        return None
    parts = file[: -len(".deb")].split("_")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


def abi_of(module: str, package: str) -> str | None:
    """The kernel ABI of one of ``module``'s packages, None when ``package`` is not one."""
    prefix = package_prefix(module)
    if not package.startswith(prefix):
        return None
    abi = package[len(prefix) :]
    return abi if ABI.match(abi) else None


# -- Debian version order (dpkg's verrevcmp) ----------------------------------------------


def _order(char: str) -> int:
    if char.isdigit():
        return 0
    if char.isalpha():
        return ord(char)
    if char == "~":
        return -1
    return ord(char) + 256


def _verrevcmp(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        first_diff = 0
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def _split_version(v: str) -> tuple[int, str, str]:
    epoch, _colon, rest = v.rpartition(":") if ":" in v else ("0", "", v)
    upstream, dash, revision = rest.rpartition("-")
    if not dash:
        upstream, revision = rest, ""
    return int(epoch or 0), upstream, revision


def compare_versions(a: str, b: str) -> int:
    """Negative, zero or positive as Debian version ``a`` is lower, equal or higher."""
    ea, ua, ra = _split_version(a)
    eb, ub, rb = _split_version(b)
    if ea != eb:
        return ea - eb
    return _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


# -- input --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Descriptor:
    """One built package (fleet-spec's package descriptor), as the module gets it."""

    module: str
    version: str
    abi: str
    package: str
    file: str
    sha256: str
    kmod: str = ""
    depends: tuple[str, ...] = ()
    signer: str | None = None
    sig_key: str | None = None
    has_content: bool = False

    @classmethod
    def from_params(cls, spec: Mapping[str, Any]) -> Descriptor:
        return cls(
            module=spec["module"],
            version=spec["version"],
            abi=spec["abi"],
            package=spec["package"],
            file=spec["file"],
            sha256=(spec["sha256"] or "").lower(),
            kmod=spec.get("kmod") or spec["module"].replace("-", "_"),
            depends=tuple(spec.get("depends") or ()),
            signer=spec.get("signer"),
            sig_key=spec.get("sig_key"),
            has_content=spec.get("content") is not None,
        )


@dataclass(frozen=True)
class Installed:
    """What dpkg says of one package: its version and ``db:Status-Abbrev`` (``ii ``)."""

    version: str
    status: str = "ii "

    @property
    def ok(self) -> bool:
        """Installed and configured, no error flag (``ii``, or ``hi``: held there)."""
        return bool(status(self.status)["installed"])

    @property
    def present(self) -> bool:
        """dpkg still records it (installed, unpacked, half-done, config files): a purge
        has something to do."""
        return status(self.status)["state"] != "not-installed"


@dataclass(frozen=True)
class Snapshot:
    """The host as the plan starts from it."""

    kernels: frozenset[str] = frozenset()  # ABIs whose kernel is installed
    dpkg: Mapping[str, Installed] = field(default_factory=dict)  # kmodlab-* packages
    store: Mapping[tuple[str, str], str] = field(default_factory=dict)  # (abi, file) -> sha256
    state: Mapping[str, Any] = field(default_factory=dict)
    now: str = "1970-01-01T00:00:00Z"


# -- output -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Install:
    package: str
    version: str
    abi: str
    file: str
    depends: tuple[str, ...] = ()


@dataclass(frozen=True)
class Purge:
    package: str
    version: str
    abi: str


@dataclass
class Plan:
    """What to do, and the state file afterwards."""

    state: State
    writes: list[Descriptor] = field(default_factory=list)  # store files to write
    installs: list[Install] = field(default_factory=list)  # one dpkg -i, in this order
    purges: list[Purge] = field(default_factory=list)  # one dpkg --purge
    depmod: list[str] = field(default_factory=list)  # ABIs, once each
    prune: list[tuple[str, str]] = field(default_factory=list)  # (abi, file) to delete
    skipped_abis: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def touches_packages(self) -> bool:
        return bool(self.installs or self.purges)


# -- the state ----------------------------------------------------------------------------


def empty_state() -> State:
    return {"schema": SCHEMA, "good": {}, "pending": None, "history": []}


def normalise(state: Mapping[str, Any] | None) -> State:
    """A state file's content with every key present; PlanError for a foreign schema."""
    if not state:
        return empty_state()
    if state.get("schema", SCHEMA) != SCHEMA:
        raise PlanError(
            f"the rollout state has schema {state.get('schema')!r}; this module knows "
            f"schema {SCHEMA}: upgrade the collection"
        )
    out = empty_state()
    out["good"] = dict(state.get("good") or {})
    out["pending"] = dict(state["pending"]) if state.get("pending") is not None else None
    out["history"] = list(state.get("history") or [])
    return out


def _history(state: State, when: str, action: str, modules: Mapping[str, str | None]) -> None:
    state["history"] = [
        *state["history"],
        {"when": when, "action": action, "modules": dict(modules)},
    ][-HISTORY:]


def _same_entry(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Equal but for ``when``."""
    if a is None or b is None:
        return a is b
    return {k: v for k, v in a.items() if k != "when"} == {
        k: v for k, v in b.items() if k != "when"
    }


def is_removal(entry: Mapping[str, Any]) -> bool:
    return entry.get("version") is None


def _recorded_sha(state: State, module: str, abi: str, version: str) -> str | None:
    """The digest the state recorded for ``module``'s package on ``abi`` at ``version``."""
    for entry in ((state["pending"] or {}).get(module), state["good"].get(module)):
        if entry and entry.get("version") == version:
            pkg = (entry.get("packages") or {}).get(abi)
            if pkg:
                return pkg.get("sha256")
    return None


def _needs_install(snap: Snapshot, state: State, d: Descriptor) -> bool:
    """Not installed at ``d``'s version, or installed with other content than ``d``'s."""
    cur = snap.dpkg.get(d.package)
    if cur is None or not cur.ok or cur.version != d.version:
        return True
    return _recorded_sha(state, d.module, d.abi, d.version) != d.sha256


def _module_packages(snap: Snapshot, module: str) -> list[Purge]:
    """Every package of ``module`` dpkg knows (in any state but not-installed)."""
    out = []
    for package, cur in sorted(snap.dpkg.items()):
        abi = abi_of(module, package)
        if abi is not None and cur.present:
            out.append(Purge(package, cur.version, abi))
    return out


def _depmod(snap: Snapshot, plan: Plan) -> list[str]:
    abis = [i.abi for i in plan.installs] + [p.abi for p in plan.purges]
    return [a for a in dict.fromkeys(abis) if a in snap.kernels]


def _dependency_order(installs: list[Install]) -> list[Install]:
    """Packages others of the batch depend on first (dpkg would cope; the list reads better)."""
    by_name = {i.package: i for i in installs}
    out: list[Install] = []
    seen: set[str] = set()

    def visit(item: Install, path: tuple[str, ...]) -> None:
        if item.package in seen or item.package in path:
            return
        for dep in item.depends:
            if dep in by_name:
                visit(by_name[dep], (*path, item.package))
        seen.add(item.package)
        out.append(item)

    for item in installs:
        visit(item, ())
    return out


def record_order(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records with the modules others depend on (``manifest.depends``) first."""
    by_name = {r["name"]: dict(r) for r in records}
    out: list[dict[str, Any]] = []
    seen: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in seen or name in path or name not in by_name:
            return
        manifest = by_name[name].get("manifest") or {}
        for dep in manifest.get("depends") or ():
            visit(dep, (*path, name))
        seen.add(name)
        out.append(by_name[name])

    for name in by_name:
        visit(name, ())
    return out


# -- validation ---------------------------------------------------------------------------


def validate(descriptors: Sequence[Descriptor], records: Sequence[Mapping[str, Any]]) -> None:
    """PlanError naming the first descriptor or record that breaks the naming rules."""
    seen: set[str] = set()
    versions: dict[str, str] = {}
    for d in descriptors:
        where = f"package {d.package or d.file!r} (module {d.module!r})"
        if not MODULE_NAME.match(d.module):
            raise PlanError(f"{where}: module name must match {MODULE_NAME.pattern}")
        if not VERSION.match(d.version):
            raise PlanError(f"{where}: version {d.version!r} must match {VERSION.pattern}")
        if not ABI.match(d.abi):
            raise PlanError(f"{where}: abi {d.abi!r} is not a kernel release (uname -r)")
        if d.package != package_name(d.module, d.abi):
            raise PlanError(f"{where}: the package name must be {package_name(d.module, d.abi)}")
        parts = split_deb(d.file)
        if parts is None or parts[:2] != (d.package, d.version) or not ARCH.match(parts[2]):
            raise PlanError(f"{where}: file {d.file!r} must be {d.package}_{d.version}_ARCH.deb")
        if not SHA256.match(d.sha256):
            raise PlanError(f"{where}: sha256 must be 64 hex digits")
        if d.package in seen:
            raise PlanError(f"{where}: given twice")
        seen.add(d.package)
        if versions.setdefault(d.module, d.version) != d.version:
            raise PlanError(
                f"module {d.module}: packages of two versions ({versions[d.module]} and "
                f"{d.version}) in one call"
            )
    for r in records:
        name = r.get("name") or ""
        if not MODULE_NAME.match(name):
            raise PlanError(f"record {name!r}: name must match {MODULE_NAME.pattern}")
        if r.get("state") == "absent" and name in versions:
            raise PlanError(f"module {name}: its record says absent but packages were given")


# -- present ------------------------------------------------------------------------------


def plan_present(
    descriptors: Sequence[Descriptor],
    records: Sequence[Mapping[str, Any]],
    snap: Snapshot,
) -> Plan:
    """Install what is not installed as given, purge modules whose record is absent, and
    record the rollout as ``pending``."""
    validate(descriptors, records)
    state = copy.deepcopy(normalise(snap.state))
    plan = Plan(state=state)
    by_record = {r["name"]: dict(r) for r in records}
    touched: dict[str, str | None] = {}
    entries: dict[str, dict[str, Any]] = {}
    for d in descriptors:
        if d.abi not in snap.kernels:
            if d.abi not in plan.skipped_abis:
                plan.skipped_abis.append(d.abi)
            continue
        if snap.store.get((d.abi, d.file)) != d.sha256:
            if not d.has_content:
                raise PlanError(
                    f"package {d.package} {d.version}: no content given and the store has "
                    f"no {d.abi}/{d.file} with sha256 {d.sha256}: pass the .deb's content "
                    "(the kmod_packages action does)"
                )
            plan.writes.append(d)
        if _needs_install(snap, state, d):
            plan.installs.append(Install(d.package, d.version, d.abi, d.file, d.depends))
            touched[d.module] = d.version
        entry = entries.setdefault(
            d.module,
            {
                "version": d.version,
                "signer": d.signer,
                "sig_key": d.sig_key,
                "when": snap.now,
                "packages": {},
                "record": by_record.get(d.module),
            },
        )
        entry["signer"] = entry["signer"] or d.signer
        entry["sig_key"] = entry["sig_key"] or d.sig_key
        entry["packages"][d.abi] = {"package": d.package, "file": d.file, "sha256": d.sha256}
    plan.installs = _dependency_order(plan.installs)
    pending = dict(state["pending"] or {})
    for r in records:
        if r.get("state") != "absent":
            continue
        name = r["name"]
        purges = _module_packages(snap, name)
        plan.purges += purges
        if purges:
            touched[name] = None
        if purges or name in pending or name in state["good"]:
            entries[name] = {
                "version": None,
                "signer": None,
                "sig_key": None,
                "when": snap.now,
                "packages": {},
                "record": dict(r),
            }
    for name, entry in entries.items():
        old = pending.get(name)
        if _same_entry(old, entry):
            continue  # keeps its first "when"
        if name in pending or name in touched or not _same_entry(state["good"].get(name), entry):
            pending[name] = entry
    if pending or state["pending"] is not None:
        state["pending"] = pending
    plan.depmod = _depmod(snap, plan)
    if touched:
        _history(state, snap.now, "install", touched)
    return plan


# -- commit -------------------------------------------------------------------------------


def _prune(snap: Snapshot, good: Mapping[str, Any], keep: int) -> list[tuple[str, str]]:
    kept = {
        (abi, p["file"])
        for entry in good.values()
        for abi, p in (entry.get("packages") or {}).items()
    }
    others: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for abi, file in snap.store:
        parts = split_deb(file)
        if parts is None or (abi, file) in kept:
            continue
        others.setdefault((abi, parts[0]), []).append((parts[1], file))
    out = []
    for (abi, _package), files in sorted(others.items()):
        files.sort(key=functools.cmp_to_key(lambda a, b: compare_versions(b[0], a[0])))
        out += [(abi, file) for _v, file in files[max(keep, 0) :]]
    return out


def plan_commit(snap: Snapshot, keep: int = 1) -> Plan:
    """``good`` = ``pending`` merged over it (removals drop out), ``pending`` = null; store
    files neither good nor among the newest ``keep`` others of their package are pruned."""
    state = copy.deepcopy(normalise(snap.state))
    plan = Plan(state=state)
    pending = state["pending"]
    if pending is not None:
        good = dict(state["good"])
        for name, entry in pending.items():
            if is_removal(entry):
                good.pop(name, None)
            else:
                good[name] = entry
        state["good"] = good
        state["pending"] = None
        _history(state, snap.now, "commit", {n: e.get("version") for n, e in pending.items()})
    plan.prune = _prune(snap, state["good"], keep)
    return plan


# -- rollback -----------------------------------------------------------------------------


def _absent_record(name: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    record = entry.get("record") or {}
    out = {
        "name": name,
        "kmod": record.get("kmod") or name.replace("-", "_"),
        "version": record.get("version") or entry.get("version"),
        "state": "absent",
        "params": {},
        "persist": True,
        "manifest": record.get("manifest"),
    }
    if record.get("source_dir") is not None:
        out["source_dir"] = record["source_dir"]
    return out


def plan_rollback(snap: Snapshot) -> Plan:
    """The good versions back for every module of ``pending``; modules only in ``pending``
    purged; ``pending`` cleared. ``records`` says what the load stage is to do."""
    state = copy.deepcopy(normalise(snap.state))
    plan = Plan(state=state)
    pending = state["pending"]
    good = state["good"]
    absent: list[dict[str, Any]] = []
    if pending is not None:
        for name, entry in pending.items():
            target = good.get(name)
            if target is None:
                plan.purges += _module_packages(snap, name)
                absent.append(_absent_record(name, entry))
                continue
            wanted = target.get("packages") or {}
            for abi, p in wanted.items():
                if abi not in snap.kernels:
                    if abi not in plan.skipped_abis:
                        plan.skipped_abis.append(abi)
                    continue
                if snap.store.get((abi, p["file"])) != p["sha256"]:
                    raise PlanError(
                        f"cannot roll {name} back to {target['version']}: the store has no "
                        f"{abi}/{p['file']} with sha256 {p['sha256']}; nothing was changed. "
                        "Run the rollout again with that version's packages"
                    )
                cur = snap.dpkg.get(p["package"])
                if (
                    cur is None
                    or not cur.ok
                    or cur.version != target["version"]
                    or _recorded_sha(state, name, abi, target["version"]) != p["sha256"]
                ):
                    plan.installs.append(Install(p["package"], target["version"], abi, p["file"]))
            for p in _module_packages(snap, name):
                if p.abi not in wanted:
                    plan.purges.append(p)
        state["pending"] = None
        _history(
            state, snap.now, "rollback", {n: (good.get(n) or {}).get("version") for n in pending}
        )
    plan.depmod = _depmod(snap, plan)
    plan.records = record_order(e["record"] for e in good.values() if e.get("record")) + absent
    return plan
