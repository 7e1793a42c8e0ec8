"""Observe a host once: what the checks look at, fetched in one round trip.

``build_request`` lists, from the expectation alone, every path to stat or read,
every directory to list and every command to run for all modules of a host, plus
the functional steps; ``observe`` sends it with the collector through testinfra and
wraps the answer in an ``Observation``. A TCG-emulated guest pays 1-3 s per SSH round
trip, so a host costs one round trip, not one per check.

The collector travels like an Ansible module (AnsiballZ): ``collector_zip`` packs
``_collector.py`` as ``__main__.py`` with the collection's module_utils files it
imports (``ansible_collections/kmodlab/lab/plugins/module_utils/*.py``), so the host
runs the same readers as the modules, imported, not pasted in. A short ``python3 -c``
bootstrap (``BOOTSTRAP``) gets the zip base64-encoded as its first argument, writes it
to a private temporary file, runs it with runpy and removes it.

What is asked depends on the host's delivery (``Expectation.delivery``): a DKMS host
gets its DKMS tree read and the DKMS install folder looked at; a package host (``deb``)
gets ``dpkg-query -W 'kmodlab-*'``, ``dpkg -L`` and ``dpkg --verify`` of the running
kernel's package of each present or config module, the package install folder, and its
rollout state fact (``ROLLOUT_FACT``), and nothing of DKMS.
"""

from __future__ import annotations

import ast
import base64
import io
import json
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

from ansible_collections.kmodlab.lab.plugins import module_utils as _module_utils
from ansible_collections.kmodlab.lab.plugins.module_utils.dpkg_status import (
    parse_list,
    parse_verify,
    read_query,
)
from ansible_collections.kmodlab.lab.plugins.module_utils.kmod_config import config_paths
from ansible_collections.kmodlab.lab.plugins.module_utils.proc_devices import PROC_DEVICES

from kmodlab.fleet.names import install_dir, package_name
from kmodlab.verify.expectations import Expectation

COLLECTOR = Path(__file__).with_name("_collector.py")
# The collection's module_utils: the collector imports its readers from there, as the
# Ansible modules do (one reader per fact).
MODULE_UTILS = Path(_module_utils.__path__[0])
MODULE_UTILS_PACKAGE = "ansible_collections.kmodlab.lab.plugins.module_utils"
DKMS_TREE = "/var/lib/dkms"
SOURCE_ROOT = "/usr/src"
INSTALL_DIR = "/lib/modules/{kernel}/updates/dkms"
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")
# The rollout's state on a package host (a local fact, JSON; docs in fleet-spec).
ROLLOUT_FACT = "/etc/ansible/facts.d/kmodlab_rollout.fact"
# Linux takes at most 128 KiB in one argument (MAX_ARG_STRLEN), and ssh hands the
# remote shell the whole command as one: the zip must stay well below.
ARG_LIMIT = 128 * 1024
PAYLOAD_LIMIT = 96 * 1024

# argv[1] is the collector zip (base64): write it to a private temporary file (mode
# 0600), run its __main__.py, remove it. The request is argv[1] after that.
BOOTSTRAP = (
    "import base64,os,runpy,sys,tempfile\n"
    "fd,path=tempfile.mkstemp(prefix='kmodlab-verify-',suffix='.zip')\n"
    "try:\n"
    "    with os.fdopen(fd,'wb') as handle:\n"
    "        handle.write(base64.b64decode(sys.argv.pop(1)))\n"
    "    runpy.run_path(path,run_name='__main__')\n"
    "finally:\n"
    "    os.unlink(path)\n"
)

# Run the collector as root: directly when already root (or under testinfra --sudo),
# else through passwordless sudo (the lab's become method).
_WRAPPER = (
    'if [ "$(id -u)" = 0 ]; then exec python3 -c "$1" "$2" "$3"; '
    'elif command -v sudo >/dev/null 2>&1; then exec sudo -n python3 -c "$1" "$2" "$3"; '
    'else exec python3 -c "$1" "$2" "$3"; fi'
)


# A failure message that starts with exactly this says that the host could not be
# reached at all (SSH failed), not that a check failed: the report shows the host as
# unreachable.
UNREACHABLE = "unreachable: "
# ssh's stderr lines that say nothing about a failure.
_SSH_NOISE = re.compile(r"^(Warning: Permanently added |debug\d: )")
_ANSIBLE_MSG = re.compile(r'"msg": "((?:[^"\\]|\\.)*)"')


class CollectError(RuntimeError):
    """The collector could not run on the host; the message has its output."""


class HostUnreachable(CollectError):
    """SSH could not reach the host (refused, timed out, key rejected, connection
    dropped); the message is ssh's own reason."""


def ssh_failure(value: Any) -> str | None:
    """ssh's reason when ``value`` (a testinfra CommandResult, or what testinfra raised)
    says that the connection failed, else None.

    ssh exits with 255 when it fails itself, and testinfra's ssh backend then raises
    ``RuntimeError(result)``; its ansible backend (``force_ansible``) fails on Ansible's
    ``UNREACHABLE!`` answer."""
    result = value.args[0] if isinstance(value, BaseException) and value.args else value
    if getattr(result, "exit_status", None) == 255:
        lines = [
            line.strip()
            for line in str(getattr(result, "stderr", "") or "").splitlines()
            if line.strip() and not _SSH_NOISE.match(line.strip())
        ]
        return "; ".join(lines[-2:]) or "ssh exited with status 255 and said nothing"
    if isinstance(value, BaseException) and "UNREACHABLE!" in str(value):
        match = _ANSIBLE_MSG.search(str(value))
        return match.group(1) if match else "Ansible reports it UNREACHABLE"
    return None


def reach(host: Any) -> str | None:
    """Why ``host`` (a testinfra Host) cannot be reached over SSH, or None when it runs
    a command. Other errors (an inventory that does not parse) are raised."""
    try:
        result = host.run("true")
    except Exception as exc:
        reason = ssh_failure(exc)
        if reason is None:
            raise
        return reason
    return ssh_failure(result)


def sys_module(record: dict[str, Any]) -> str:
    return f"/sys/module/{record['kmod']}"


def param_path(record: dict[str, Any], name: str) -> str:
    return f"{sys_module(record)}/parameters/{name}"


def taint_path(record: dict[str, Any]) -> str:
    """The loaded module's taint flags (``E``: its signature could not be verified)."""
    return f"{sys_module(record)}/taint"


def build_id_path(record: dict[str, Any]) -> str:
    """The loaded module's GNU build ID note (its .ko's ``.note.gnu.build-id``)."""
    return f"{sys_module(record)}/notes/.note.gnu.build-id"


def module_dir(kernel: str, delivery: str = "dkms") -> str:
    """Where the module's .ko is installed for ``kernel``: DKMS's folder, or the one of
    kmodlab's packages (``deb``)."""
    return install_dir(kernel) if delivery == "deb" else INSTALL_DIR.format(kernel=kernel)


def installed_files(record: dict[str, Any], kernel: str, delivery: str = "dkms") -> list[str]:
    """Where DKMS (or, ``deb``, the package) installs the module's .ko for ``kernel``
    (any name and suffix)."""
    folder = module_dir(kernel, delivery)
    names = sorted({record["name"], record["kmod"]})
    return [f"{folder}/{name}{suffix}" for name in names for suffix in MODULE_SUFFIXES]


def dkms_package(record: dict[str, Any]) -> str:
    """The DKMS package the module is built in: its own, or a third-party package's."""
    return str(record.get("package") or record["name"])


def functional_id(record: dict[str, Any], index: int) -> str:
    return f"{record['name']}#{index}"


def host_package(record: dict[str, Any], kernel: str) -> str:
    """The package that delivers the module for ``kernel`` on a ``deb`` host."""
    return package_name(record["name"], kernel)


def build_request(expectation: Expectation) -> dict[str, Any]:
    deb = expectation.delivery == "deb"
    kernel = expectation.kernel
    packages: list[str] = []
    stat: list[str] = []
    read: list[str] = [PROC_DEVICES]
    listing: list[str] = []
    build_ids: list[str] = []
    commands: dict[str, list[str]] = {"uname": ["uname", "-r"]}
    functional: list[dict[str, Any]] = []
    for rec in expectation.modules:
        base = sys_module(rec)
        manifest = rec["manifest"]
        expect = manifest.get("expect") or {}
        stat += [base, f"{base}/initstate", f"{base}/parameters"]
        read += [f"{base}/initstate", f"{base}/refcnt", f"{base}/srcversion"]
        listing.append(f"{base}/parameters")
        for param in manifest.get("parameters") or []:
            stat.append(param_path(rec, param["name"]))
            if int(param["perm"], 8):
                read.append(param_path(rec, param["name"]))
        for path in config_paths(rec):
            stat.append(path)
            read.append(path)
        if rec["state"] in ("present", "config"):
            if deb:
                packages.append(host_package(rec, kernel))
            commands[f"modinfo:{rec['name']}"] = [
                "modinfo",
                "-k",
                expectation.kernel,
                rec["kmod"],
            ]
        if rec["state"] == "absent":
            if not deb:
                stat.append(f"{DKMS_TREE}/{dkms_package(rec)}")
                stat.append(f"{SOURCE_ROOT}/{dkms_package(rec)}-{rec['version']}")
            stat += installed_files(rec, kernel, expectation.delivery)
        if rec["state"] != "present":
            continue
        build_ids += [build_id_path(rec), *installed_files(rec, kernel, expectation.delivery)]
        read.append(taint_path(rec))
        for node in expect.get("dev_nodes") or []:
            stat.append(node["path"])
        for check in (expect.get("sysfs") or []) + (expect.get("procfs") or []):
            stat.append(check["path"])
            if check.get("content") is not None and check.get("kind", "file") == "file":
                read.append(check["path"])
        for index, check in enumerate(expect.get("functional") or []):
            functional.append(
                {
                    "id": functional_id(rec, index),
                    "steps": [
                        {k: v for k, v in step.items() if v is not None} for step in check["steps"]
                    ],
                }
            )
    request: dict[str, Any] = {
        "stat": list(dict.fromkeys(stat)),
        "read": list(dict.fromkeys(read)),
        "list": list(dict.fromkeys(listing)),
        "build_id": list(dict.fromkeys(build_ids)),
        "commands": commands,
        "kernel_log": True,
        "secure_boot": True,
        "functional": functional,
    }
    if deb:
        request["dpkg"] = {"packages": list(dict.fromkeys(packages))}
        request["rollout"] = ROLLOUT_FACT
    else:
        names = sorted({dkms_package(rec) for rec in expectation.modules})
        request["dkms"] = {"tree": DKMS_TREE, "names": names}
    return request


class Observation:
    """The collector's answer for one host, with accessors the checks use."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    @property
    def euid(self) -> int | None:
        return self.data.get("euid")

    def stat(self, path: str) -> dict[str, Any]:
        return self.data.get("stat", {}).get(path) or {"exists": False, "error": "not observed"}

    def exists(self, path: str) -> bool:
        return bool(self.stat(path).get("exists"))

    def text(self, path: str) -> str | None:
        entry = self.data.get("read", {}).get(path)
        if not entry or not entry.get("ok"):
            return None
        return entry["text"]

    def read_error(self, path: str) -> str | None:
        entry = self.data.get("read", {}).get(path) or {}
        return entry.get("error")

    def listing(self, path: str) -> list[str] | None:
        return self.data.get("list", {}).get(path)

    def build_id(self, path: str) -> tuple[str | None, str | None]:
        """(GNU build ID in hex, None) of a .ko or a sysfs note file, or (None, why not)."""
        entry = self.data.get("build_id", {}).get(path)
        if entry is None:
            return None, "not observed"
        if not entry.get("ok"):
            return None, str(entry.get("error"))
        return str(entry["build_id"]), None

    @property
    def dkms(self) -> dict[str, Any]:
        """``{"entries": [...]}`` (dkms status entries of the host's packages) or ``{"error"}``."""
        return self.data.get("dkms") or {"error": "the DKMS tree was not read"}

    @property
    def packages(self) -> dict[str, Any]:
        """``{"packages": {name: {package, version, installed, gone, text, ...}}}`` of
        the host's kmodlab packages as dpkg-query shows them
        (module_utils/dpkg_status.py), or ``{"error"}``."""
        found = (self.data.get("dpkg") or {}).get("query")
        if not isinstance(found, dict):
            return {"error": "dpkg-query was not run"}
        return read_query(found["rc"], found["stdout"], found["stderr"])

    def _dpkg(self, kind: str, package: str) -> dict[str, Any] | None:
        return ((self.data.get("dpkg") or {}).get(kind) or {}).get(package)

    def package_files(self, package: str) -> tuple[list[str] | None, str | None]:
        """(the paths ``dpkg -L PACKAGE`` lists, None), or (None, why not)."""
        res = self._dpkg("list", package)
        if res is None:
            return None, f"dpkg -L {package} was not run"
        if res["rc"] != 0:
            why = res["stderr"].strip() or f"exit status {res['rc']}"
            return None, f"dpkg -L {package} failed: {why}"
        return parse_list(res["stdout"]), None

    def package_verify(self, package: str) -> tuple[list[dict[str, Any]] | None, str | None]:
        """(the files ``dpkg --verify PACKAGE`` finds changed or missing, None), or (None,
        why not); dpkg exits 1 and says so when the package is not installed."""
        res = self._dpkg("verify", package)
        if res is None:
            return None, f"dpkg --verify {package} was not run"
        if res["rc"] != 0:
            why = res["stderr"].strip() or f"exit status {res['rc']}"
            return None, f"dpkg --verify {package} failed: {why}"
        return parse_verify(res["stdout"]), None

    def command(self, key: str) -> dict[str, Any]:
        return self.data.get("commands", {}).get(key) or {
            "rc": -1,
            "stdout": "",
            "stderr": f"command {key} was not run",
        }

    @property
    def secure_boot(self) -> dict[str, Any]:
        """``{"efi", "secure_boot", "setup_mode", "lockdown"}`` as module_utils/secure_boot.py
        reads them on the host (None: cannot be read), plus ``error`` when reading failed;
        every value None when the collector was not asked."""
        found = self.data.get("secure_boot")
        if not isinstance(found, dict):
            return {
                "efi": None,
                "secure_boot": None,
                "setup_mode": None,
                "lockdown": None,
                "error": "not observed",
            }
        return found

    @property
    def kernel_log(self) -> list[str]:
        return list((self.data.get("kernel_log") or {}).get("lines") or [])

    @property
    def kernel_log_source(self) -> str:
        return (self.data.get("kernel_log") or {}).get("source", "none")

    def functional(self, record: dict[str, Any], index: int) -> list[dict[str, Any]]:
        return self.data.get("functional", {}).get(functional_id(record, index)) or []

    @staticmethod
    def step_output(step: dict[str, Any]) -> bytes:
        if "stdout_b64" in step:
            return base64.b64decode(step["stdout_b64"])
        return str(step.get("stdout", "")).encode()


def _module_utils_imports(source: str) -> set[str]:
    """The collection's module_utils modules ``source`` imports (their short names)."""
    found = set()
    prefix = MODULE_UTILS_PACKAGE + "."
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == MODULE_UTILS_PACKAGE:
                found.update(alias.name for alias in node.names)
            elif node.module.startswith(prefix):
                found.add(node.module[len(prefix) :])
        elif isinstance(node, ast.Import):
            found.update(
                alias.name[len(prefix) :] for alias in node.names if alias.name.startswith(prefix)
            )
    return found


def module_utils_closure(source: str) -> list[str]:
    """The module_utils files ``source`` needs: its imports and theirs (as AnsiballZ
    finds them), sorted."""
    needed: set[str] = set()
    todo = sorted(_module_utils_imports(source))
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        path = MODULE_UTILS / f"{name}.py"
        if not path.is_file():
            raise RuntimeError(f"the collector imports {MODULE_UTILS_PACKAGE}.{name}: no {path}")
        needed.add(name)
        todo.extend(sorted(_module_utils_imports(path.read_text()) - needed))
    return sorted(needed)


def _zip_entry(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data, compresslevel=9)


def collector_zip() -> bytes:
    """The collector as a runnable zip: ``__main__.py`` (``_collector.py``) and the
    module_utils files it imports, under their package path, with the package
    ``__init__.py`` files. Deterministic (fixed dates, sorted names)."""
    source = COLLECTOR.read_text()
    package = MODULE_UTILS_PACKAGE.replace(".", "/")
    parts = package.split("/")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        _zip_entry(archive, "__main__.py", source.encode())
        for depth in range(1, len(parts) + 1):
            _zip_entry(archive, "/".join(parts[:depth]) + "/__init__.py", b"")
        for name in module_utils_closure(source):
            _zip_entry(archive, f"{package}/{name}.py", (MODULE_UTILS / f"{name}.py").read_bytes())
    return buffer.getvalue()


def collector_payload() -> str:
    """``collector_zip()`` in base64, the bootstrap's first argument."""
    payload = base64.b64encode(collector_zip()).decode("ascii")
    if len(payload) > PAYLOAD_LIMIT:
        raise CollectError(
            f"the verify collector is {len(payload)} bytes in base64, more than the "
            f"{PAYLOAD_LIMIT} that fit in one command argument (limit {ARG_LIMIT})"
        )
    return payload


def collector_argv(request: dict[str, Any] | str) -> list[str]:
    """``python3 ...`` arguments that run the collector on ``request`` (a dict or its
    JSON): ``["-c", BOOTSTRAP, payload, request]``, as ``observe`` sends them."""
    text = request if isinstance(request, str) else json.dumps(request, separators=(",", ":"))
    packed = "z:" + base64.b64encode(zlib.compress(text.encode(), 9)).decode("ascii")
    return ["-c", BOOTSTRAP, collector_payload(), packed]


def collector_source() -> str:
    """The bootstrap with the zip in it, for ``python3 -c SOURCE REQUEST`` (local runs
    in tests)."""
    return f"import sys\nsys.argv.insert(1, {collector_payload()!r})\n{BOOTSTRAP}"


def observe(host: Any, expectation: Expectation) -> Observation:
    """Run the collector on ``host`` (a testinfra Host) for ``expectation``."""
    bootstrap, payload, request = collector_argv(build_request(expectation))[1:]
    try:
        result = host.run("sh -c %s kmodlab-verify %s %s %s", _WRAPPER, bootstrap, payload, request)
    except Exception as exc:
        reason = ssh_failure(exc)
        if reason is None:
            raise
        raise HostUnreachable(reason) from None
    reason = ssh_failure(result)
    if reason is not None:
        raise HostUnreachable(reason)
    if result.rc != 0:
        raise CollectError(
            f"the verify collector failed on {expectation.host} (rc {result.rc}): "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    try:
        data = json.loads(result.stdout)
    except ValueError as exc:
        raise CollectError(
            f"the verify collector on {expectation.host} printed no JSON ({exc}): "
            f"{result.stdout[:500]!r} {result.stderr[:500]!r}"
        ) from None
    return Observation(data)
