"""The container builder: every selected module compiled once per kernel ABI in that
ABI's builder container, signed centrally, packaged as a .deb, kept in the artifact store.

Entry point: :func:`build`. Per ABI (ABIs in parallel, at most ``jobs``):

1. the builder image (:func:`kmodlab.fleet.docker.builder_image`);
2. the cache key of each module: sha256 over its package files (the same files DKMS gets,
   :func:`kmodlab.package.render`), the ABI, the builder image id (headers and compiler),
   the signing certificate's fingerprint, :data:`BUILDER_VERSION` and the cache keys of
   the modules it depends on (their symbol CRCs go into its .ko). A key found in the
   store is not compiled again;
3. one ``docker run --rm --network none`` compiles the rest with kbuild, dependencies
   first (one dependency level at a time, a level's modules in parallel), each module
   in ``/w/NAME`` with ``KBUILD_EXTRA_SYMBOLS=/w/DEP/Module.symvers``; ``modinfo -F
   vermagic`` of each .ko must start with the ABI;
4. a second container run signs them with ``sign-file``: only the key and the
   certificate files are bind-mounted (read-only); the key is never copied anywhere;
   the signer and key id read from each signed file must be the certificate's;
5. one .deb per module (:mod:`kmodlab.fleet.debpkg`) into ``pool/ABI``, its descriptor
   under its cache key, one line in ``compilations.jsonl``.

Work folders are made under the cache (never the repository) and removed after use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ansible_collections.kmodlab.lab.plugins.module_utils import modsig

from kmodlab import keys
from kmodlab import package as package_mod
from kmodlab.fleet import debpkg
from kmodlab.fleet import docker as docker_mod
from kmodlab.fleet.artifacts import Store
from kmodlab.lab.errors import LabError
from kmodlab.lab.paths import cache_dir

Progress = Callable[[str], None]

#: Bump when the way modules are compiled, signed or packaged changes: every cache key changes.
BUILDER_VERSION = 1
LOG_TAIL = 25
_META = ".kmodlab"  # scripts, logs and results inside a work folder (/w/.kmodlab)


class BuildError(LabError):
    """Input the builder refuses, or a missing prerequisite; nothing was built."""


# --- inputs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyMaterial:
    """The signing key and certificate on the controller (paths; the key is never read
    here beyond the check that it matches the certificate)."""

    key_path: Path
    cert_path: Path
    cert: keys.CertInfo

    @classmethod
    def from_store(cls, name: str = keys.DEFAULT_NAME, root: Path | None = None) -> KeyMaterial:
        """Key NAME of the project key store (``kmodlab.keys``), checked."""
        pair = keys.load(name, root)
        assert pair.cert.pem_path is not None
        return cls(pair.key_path, pair.cert.pem_path, pair.cert)

    @classmethod
    def from_paths(cls, key_path: Path, cert_path: Path) -> KeyMaterial:
        """A key and certificate given by path (PEM key; PEM or DER certificate), checked."""
        info = keys.cert_info(Path(cert_path))
        keys.check_key_file(Path(key_path), info)
        return cls(Path(key_path).resolve(), Path(cert_path).resolve(), info)

    @property
    def fingerprint(self) -> str:
        return self.cert.fingerprint


@dataclass(frozen=True)
class Unit:
    """One module to build: its record, rendered package and what the .deb says."""

    name: str
    kmod: str
    version: str
    description: str
    depends: tuple[str, ...]
    package: package_mod.Package
    make: str  # the kbuild command line, with /w/NAME and the ABI as @ABI@

    @property
    def digest(self) -> str:
        return package_digest(self.package)


def package_digest(pkg: package_mod.Package) -> str:
    """sha256 over a package's files (paths, texts, which are executable)."""
    blob = json.dumps(
        {"files": sorted(pkg.files.items()), "executables": sorted(pkg.executables)},
        sort_keys=True,
    ).encode()
    return hashlib.sha256(blob).hexdigest()


def cache_key(
    pkg_digest: str,
    abi: str,
    image_id: str,
    key_fingerprint: str,
    dep_keys: Sequence[str] = (),
) -> str:
    """The cache key of one module build (see the module docstring)."""
    blob = json.dumps(
        [BUILDER_VERSION, pkg_digest, abi, image_id, key_fingerprint, sorted(dep_keys)]
    ).encode()
    return hashlib.sha256(blob).hexdigest()


def shipped_make(name: str, version: str, dkms_conf: str) -> str:
    """The MAKE[0] line of a module's own dkms.conf, with the kernel folder as @KDIR@, the
    kernel as @ABI@ and the build folder as /w/NAME; BuildError when it has none or uses
    a variable the builder does not know."""
    line = package_mod.read_dkms_conf(dkms_conf).get("MAKE[0]")
    if not line:
        raise BuildError(
            f'module {name}: its own dkms.conf has no MAKE[0]="..." line the container '
            "builder can run: add one (make -C ${kernel_source_dir} M=... modules)"
        )
    build_dir = f"/w/{name}"
    for var, value in (
        ("dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build", build_dir),
        ("dkms_tree}/" + name + "/" + version + "/build", build_dir),
        ("kernel_source_dir}", "@KDIR@"),
        ("kernelver}", "@ABI@"),
        ("PACKAGE_NAME}", name),
        ("PACKAGE_VERSION}", version),
    ):
        line = line.replace("${" + var, value)
    for var, value in (("kernel_source_dir", "@KDIR@"), ("kernelver", "@ABI@")):
        line = re.sub(rf"\${var}\b", value, line)
    if "$" in line or "`" in line:
        raise BuildError(
            f"module {name}: the MAKE[0] line of its own dkms.conf uses variables the "
            f"container builder does not set ({line!r}); it knows ${{kernel_source_dir}}, "
            "${kernelver}, ${PACKAGE_NAME}, ${PACKAGE_VERSION} and the dkms build folder"
        )
    return line


def _units(records: Sequence[Mapping[str, Any]]) -> list[Unit]:
    """The records to build (state absent skipped) in build order, checked."""
    units: dict[str, Unit] = {}
    problems: list[str] = []
    for record in records:
        if not isinstance(record, Mapping):
            problems.append(f"a record is a mapping, got {type(record).__name__}")
            continue
        if record.get("state", "present") == "absent":
            continue
        if ((record.get("manifest") or {}).get("package") or {}).get("source"):
            problems.append(
                f"module {record.get('name')} is built in the third-party package "
                f"{record.get('package')} (its own dkms.conf): the container builder does not "
                "build those; deliver it with DKMS (kmodlab_delivery: dkms for the hosts "
                "that select it)"
            )
            continue
        try:
            pkg = package_mod.render(record)
        except package_mod.PackageError as exc:
            problems.append(str(exc))
            continue
        manifest = record.get("manifest") or {}
        if pkg.name in units:
            problems.append(f"module {pkg.name} is given twice")
            continue
        if package_mod.DKMS_CONF in (manifest.get("sources") or []):
            try:
                make = shipped_make(pkg.name, pkg.version, pkg.files[package_mod.DKMS_CONF])
            except BuildError as exc:
                problems.append(str(exc))
                continue
            if "modules" not in make.split():
                make += " modules"
        else:
            make = f"make -C @KDIR@ M=/w/{pkg.name}"
            if pkg.depends:
                symvers = " ".join(f"/w/{dep}/Module.symvers" for dep in pkg.depends)
                make += f" KBUILD_EXTRA_SYMBOLS={shlex.quote(symvers)}"
            make += " modules"
        units[pkg.name] = Unit(
            name=pkg.name,
            kmod=str(record.get("kmod") or pkg.name.replace("-", "_")),
            version=pkg.version,
            description=str(manifest.get("description") or ""),
            depends=pkg.depends,
            package=pkg,
            make=make,
        )
    for unit in units.values():
        for dep in unit.depends:
            if dep not in units:
                problems.append(
                    f"module {unit.name} depends on {dep}, which is not among the modules "
                    f"to build: select {dep} too"
                )
    if problems:
        raise BuildError("\n".join(problems))
    return [units[name] for level in levels(units) for name in level]


def levels(units: Mapping[str, Unit]) -> list[list[str]]:
    """The modules by dependency level: level 0 depends on nothing, level n on lower ones."""
    depth: dict[str, int] = {}

    def level(name: str, seen: tuple[str, ...] = ()) -> int:
        if name in seen:
            raise BuildError(f"dependency cycle: {' -> '.join((*seen, name))}")
        if name not in depth:
            deps = units[name].depends
            depth[name] = 1 + max((level(d, (*seen, name)) for d in deps), default=-1)
        return depth[name]

    for name in units:
        level(name)
    out: list[list[str]] = [[] for _level in range(max(depth.values(), default=-1) + 1)]
    for name in units:
        out[depth[name]].append(name)
    return out


# --- result ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """A module that could not be built for an ABI."""

    module: str
    abi: str
    message: str
    log_tail: str = ""


@dataclass
class BuildResult:
    """What :func:`build` did: descriptors per ABI (fleet-spec format), counts, failures,
    and seconds spent per phase (image: wall time; compile, sign, package: summed over
    the ABIs; total: wall time)."""

    descriptors: dict[str, list[dict[str, Any]]]
    compiled: int = 0
    cached: int = 0
    failures: list[Failure] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    store: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {
            "descriptors": self.descriptors,
            "compiled": self.compiled,
            "cached": self.cached,
            "failures": [asdict(f) for f in self.failures],
            "timings": self.timings,
            "store": str(self.store) if self.store else None,
        }


@dataclass
class _AbiOutcome:
    descriptors: list[dict[str, Any]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    compiled: int = 0
    cached: int = 0
    timings: dict[str, float] = field(default_factory=dict)


# --- work folders ----------------------------------------------------------------------


def _work_root() -> Path:
    return cache_dir() / "tmp"


@contextlib.contextmanager
def _work_folder() -> Iterator[Path]:
    """A fresh folder under the cache, removed afterwards (stale ones of dead builds too)."""
    root = _work_root()
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("fleet-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix="fleet-", dir=root))
    work = work.rename(work.with_name(f"{work.name}-{os.getpid()}"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _tail(text: str, lines: int = LOG_TAIL) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _user() -> str:
    return f"{os.getuid()}:{os.getgid()}"


# --- one ABI ---------------------------------------------------------------------------


def _compile_script(units: Sequence[Unit], abi: str) -> str:
    """The driver run in the compile container: levels in order, a level in parallel."""
    kdir = f"/lib/modules/{abi}/build"
    by_name = {u.name: u for u in units}
    meta = f"/w/{_META}"
    lines = ["#!/bin/sh", "set -u"]
    for level in levels(by_name):
        for name in level:
            unit = by_name[name]
            make = unit.make.replace("@KDIR@", kdir).replace("@ABI@", abi)
            module_sh = (
                "set -eu\n"
                f"cd /w/{name}\n"
                f"{make}\n"
                "ko=\n"
                f"for c in {name}.ko {unit.kmod}.ko; do "
                'if [ -f "$c" ]; then ko=$c; break; fi; done\n'
                f'[ -n "$ko" ] || {{ echo "kmodlab: no {name}.ko or {unit.kmod}.ko after '
                'the build" >&2; exit 1; }\n'
                'test -f Module.symvers || { echo "kmodlab: no Module.symvers" >&2; exit 1; }\n'
                f'modinfo -F vermagic "$ko" > {meta}/{name}.vermagic\n'
                f'printf "%s\\n" "$ko" > {meta}/{name}.ko\n'
            )
            lines.append(f"cat > {meta}/{name}.sh <<'KMODLAB_EOF'\n{module_sh}KMODLAB_EOF")
            inner_deps = [d for d in unit.depends if d in by_name]
            guard = " && ".join(f"[ -e {meta}/{d}.ok ]" for d in inner_deps) or "true"
            lines.append(
                f"( if {guard}; then "
                f"if sh {meta}/{name}.sh > {meta}/{name}.log 2>&1; then touch {meta}/{name}.ok; "
                "fi; else "
                f'echo "not built: a module it depends on failed to build" > {meta}/{name}.log; '
                "fi ) &"
            )
        lines.append("wait")
    return "\n".join(lines) + "\n"


def _compile(
    units: Sequence[Unit],
    cached_symvers: Mapping[str, Path],
    abi: str,
    image: str,
    work: Path,
) -> tuple[dict[str, Path], list[Failure]]:
    """Compile ``units`` in one container; (name -> built .ko, failures)."""
    meta = work / _META
    meta.mkdir(parents=True)
    for unit in units:
        folder = package_mod.write(unit.package, work)
        folder.rename(work / unit.name)
    for dep, symvers in cached_symvers.items():
        (work / dep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(symvers, work / dep / "Module.symvers")
    (meta / "build.sh").write_text(_compile_script(units, abi))
    proc = docker_mod.run(
        [
            "run",
            "--rm",
            "--network",
            "none",
            "--user",
            _user(),
            "-v",
            f"{work}:/w",
            image,
            "/bin/sh",
            f"/w/{_META}/build.sh",
        ],
        timeout=3600,
    )
    built: dict[str, Path] = {}
    failures: list[Failure] = []
    for unit in units:
        log_path = meta / f"{unit.name}.log"
        log = log_path.read_text(errors="replace") if log_path.is_file() else ""
        if not (meta / f"{unit.name}.ok").exists():
            if not log:
                log = _tail(proc.stdout + proc.stderr) or f"docker run exit {proc.returncode}"
            failures.append(
                Failure(unit.name, abi, f"module {unit.name} failed to build for {abi}", _tail(log))
            )
            continue
        vermagic = (meta / f"{unit.name}.vermagic").read_text().strip()
        if not vermagic.startswith(f"{abi} "):
            failures.append(
                Failure(
                    unit.name,
                    abi,
                    f"module {unit.name} built for {abi} has vermagic {vermagic!r}, "
                    f"which does not start with '{abi} '",
                    _tail(log),
                )
            )
            continue
        ko_name = (meta / f"{unit.name}.ko").read_text().strip()
        built[unit.name] = work / unit.name / ko_name
    return built, failures


def _sign(
    built: Mapping[str, Path],
    kmods: Mapping[str, str],
    abi: str,
    image: str,
    key: KeyMaterial,
    work: Path,
) -> tuple[dict[str, tuple[Path, modsig.ModuleSignature]], list[Failure]]:
    """Sign the built modules in a container that sees only them and the key pair."""
    sign_dir = work / "sign"
    sign_dir.mkdir()
    staged: dict[str, Path] = {}
    for name, ko in built.items():
        staged[name] = sign_dir / f"{kmods[name]}.ko"
        shutil.copyfile(ko, staged[name])
    if not staged:
        return {}, []
    sign_file = f"/lib/modules/{abi}/build/scripts/sign-file"
    script = (
        "set -eu\nfor f in /sign/*.ko; do "
        f'{sign_file} sha256 /key/signing.key /key/signing.crt "$f"; done\n'
    )
    proc = docker_mod.run(
        [
            "run",
            "--rm",
            "--network",
            "none",
            "--user",
            _user(),
            "-v",
            f"{key.key_path}:/key/signing.key:ro",
            "-v",
            f"{key.cert_path}:/key/signing.crt:ro",
            "-v",
            f"{sign_dir}:/sign",
            image,
            "/bin/sh",
            "-c",
            script,
        ],
        timeout=600,
    )
    if proc.returncode != 0:
        tail = _tail(proc.stdout + proc.stderr)
        return {}, [
            Failure(name, abi, f"signing {name} for {abi} with sign-file failed", tail)
            for name in staged
        ]
    n, e, serial = modsig.public_numbers_from_der(key.cert_path.read_bytes())
    signed: dict[str, tuple[Path, modsig.ModuleSignature]] = {}
    failures: list[Failure] = []
    for name, path in staged.items():
        problem = modsig.problem_for_file(str(path), n, e, serial)
        sig = None
        if problem is None:
            _data, sig = modsig.read_file(str(path))
            if (
                sig is None
                or sig.sig_key != key.cert.sig_key
                or (sig.signer and sig.signer != key.cert.common_name)
            ):
                problem = "its signature names another signer or key id than the certificate"
        if problem is not None or sig is None:
            failures.append(
                Failure(name, abi, f"signed {name} for {abi}, but the check failed: {problem}")
            )
            continue
        signed[name] = (path, sig)
    return signed, failures


def _build_abi(
    abi: str,
    units: Sequence[Unit],
    image: docker_mod.BuilderImage,
    key: KeyMaterial,
    store: Store,
    work: Path,
    progress: Progress,
) -> _AbiOutcome:
    outcome = _AbiOutcome(timings={"compile": 0.0, "sign": 0.0, "package": 0.0})
    keys_by_name: dict[str, str] = {}
    todo: list[Unit] = []
    cached_symvers: dict[str, Path] = {}
    for unit in units:  # build order: dependencies first
        keys_by_name[unit.name] = cache_key(
            unit.digest,
            abi,
            image.image_id,
            key.fingerprint,
            [keys_by_name[d] for d in unit.depends],
        )
        hit = store.cached(keys_by_name[unit.name])
        if hit is not None and not any(d in {u.name for u in todo} for d in unit.depends):
            outcome.descriptors.append(hit)
            outcome.cached += 1
            cached_symvers[unit.name] = store.symvers(keys_by_name[unit.name])
        else:
            todo.append(unit)
    progress(f"{abi}: {outcome.cached} cached, {len(todo)} to compile")
    if not todo:
        return outcome
    needed = {d for u in todo for d in u.depends}
    t0 = time.monotonic()
    built, failures = _compile(
        todo, {d: p for d, p in cached_symvers.items() if d in needed}, abi, image.tag, work
    )
    outcome.timings["compile"] = time.monotonic() - t0
    outcome.failures += failures
    t0 = time.monotonic()
    signed, failures = _sign(built, {u.name: u.kmod for u in todo}, abi, image.tag, key, work)
    outcome.timings["sign"] = time.monotonic() - t0
    outcome.failures += failures
    t0 = time.monotonic()
    by_name = {u.name: u for u in units}
    for unit in todo:
        if unit.name not in signed:
            continue
        path, sig = signed[unit.name]
        signer = sig.signer or key.cert.common_name
        spec = debpkg.DebSpec(
            module=unit.name,
            kmod=unit.kmod,
            version=unit.version,
            abi=abi,
            description=unit.description,
            signer=signer,
            sig_key=sig.sig_key,
            depends={d: by_name[d].version for d in unit.depends},
        )
        scratch = work / "deb" / unit.name
        scratch.mkdir(parents=True)
        deb = debpkg.build_deb(spec, path, store.pool_dir(abi), scratch)
        descriptor = {
            "module": unit.name,
            "kmod": unit.kmod,
            "version": unit.version,
            "abi": abi,
            "package": spec.package,
            "file": spec.file,
            "path": str(deb),
            "sha256": debpkg.sha256_file(deb),
            "depends": spec.depends_packages(),
            "signer": signer,
            "sig_key": sig.sig_key,
            "cache_key": keys_by_name[unit.name],
            "compiled": True,
        }
        store.remember(descriptor, work / unit.name / "Module.symvers")
        store.record_compilation(unit.name, unit.version, abi, keys_by_name[unit.name])
        outcome.descriptors.append(descriptor)
        outcome.compiled += 1
    outcome.timings["package"] = time.monotonic() - t0
    order = {u.name: i for i, u in enumerate(units)}
    outcome.descriptors.sort(key=lambda d: order[d["module"]])
    for failure in outcome.failures:
        progress(f"{abi}: FAILED {failure.module}: {failure.message}")
    progress(
        f"{abi}: compiled {outcome.compiled} ({outcome.timings['compile']:.1f} s compile, "
        f"{outcome.timings['sign']:.1f} s sign, {outcome.timings['package']:.1f} s package)"
    )
    return outcome


# --- entry point -----------------------------------------------------------------------


def build(
    records: list[dict[str, Any]],
    abis: list[str],
    key: KeyMaterial,
    *,
    store: Path | None = None,
    release: str = "bookworm",
    jobs: int = 2,
    progress: Progress = print,
) -> BuildResult:
    """Build ``records`` (resolved selection records, :func:`kmodlab.selection.resolve`;
    absent ones skipped) for every kernel ABI of ``abis``, signed with ``key``; packages
    and indexes in the artifact store ``store`` (default ``~/.cache/kmodlab/artifacts``).

    Raises BuildError (a LabError) for input it refuses (a broken record, a dependency
    not among the records, a bad ABI, an ABI apt has no headers for) and when Docker
    cannot run; a module that fails to build is a ``Failure`` of the result, and the
    other modules are built all the same.
    """
    start = time.monotonic()
    abis = list(dict.fromkeys(abis))
    if not abis:
        raise BuildError("no kernel ABI to build for: give at least one (e.g. 6.1.0-57-amd64)")
    for abi in abis:
        debpkg.check_abi(abi)
    units = _units(records)
    if not isinstance(key, KeyMaterial):
        raise BuildError("key must be a KeyMaterial (KeyMaterial.from_store(NAME))")
    keys.check_key_file(key.key_path, key.cert)
    the_store = Store(store)
    result = BuildResult(descriptors={abi: [] for abi in abis}, store=the_store.root)
    if not units:
        result.timings = {"total": 0.0}
        return result
    jobs = max(1, jobs)
    docker_mod.ensure_daemon(progress)
    with the_store.locked(progress):
        t0 = time.monotonic()
        images = _images(abis, release, jobs, progress)
        result.timings["image"] = time.monotonic() - t0
        with _work_folder() as work, ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {
                abi: pool.submit(
                    _build_abi,
                    abi,
                    units,
                    images[abi],
                    key,
                    the_store,
                    work / abi,
                    progress,
                )
                for abi in abis
            }
            outcomes = {abi: future.result() for abi, future in futures.items()}
        for abi, outcome in outcomes.items():
            result.descriptors[abi] = outcome.descriptors
            result.compiled += outcome.compiled
            result.cached += outcome.cached
            result.failures += outcome.failures
            for phase, seconds in outcome.timings.items():
                result.timings[phase] = result.timings.get(phase, 0.0) + seconds
        if result.compiled or not (the_store.root / "Packages").is_file():
            the_store.write_apt_index()
    result.timings["total"] = time.monotonic() - start
    result.timings = {k: round(v, 2) for k, v in result.timings.items()}
    return result


def _images(
    abis: Sequence[str], release: str, jobs: int, progress: Progress
) -> dict[str, docker_mod.BuilderImage]:
    """The builder image of every ABI (made in parallel); every missing ABI in one error."""
    docker_mod.base_image(release, progress)
    errors: list[str] = []
    images: dict[str, docker_mod.BuilderImage] = {}
    lock = threading.Lock()

    def one(abi: str) -> None:
        try:
            made = docker_mod.builder_image(abi, release, progress)
        except docker_mod.DockerError as exc:
            with lock:
                errors.append(str(exc))
            return
        with lock:
            images[abi] = made

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, abis))
    if errors:
        raise BuildError("\n".join(errors))
    return images


__all__ = [
    "BUILDER_VERSION",
    "BuildError",
    "BuildResult",
    "Failure",
    "KeyMaterial",
    "Unit",
    "build",
    "cache_key",
    "levels",
    "package_digest",
    "shipped_make",
]
