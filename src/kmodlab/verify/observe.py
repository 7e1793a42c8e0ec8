"""Observe a host once: what the checks look at, fetched in one round trip.

``build_request`` lists, from the expectation alone, every path to stat or read,
every directory to list and every command to run for all modules of a host, plus
the functional steps; ``observe`` sends it with the collector (``_collector.py``)
through testinfra and wraps the answer in an ``Observation``. A TCG-emulated guest
pays 1-3 s per SSH round trip, so a host costs one round trip, not one per check.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

from ansible_collections.kmodlab.lab.plugins import module_utils as _module_utils

from kmodlab.verify.expectations import Expectation

COLLECTOR = Path(__file__).with_name("_collector.py")
# The module_utils files the collector runs on the host (one reader per fact, shared
# with the Ansible modules).
MODULE_UTILS = Path(_module_utils.__path__[0])
SHARED = ("dkms_tree", "buildid")
DKMS_TREE = "/var/lib/dkms"
SOURCE_ROOT = "/usr/src"
INSTALL_DIR = "/lib/modules/{kernel}/updates/dkms"
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")
PROC_DEVICES = "/proc/devices"
MODPROBE_D = "/etc/modprobe.d"
MODULES_LOAD_D = "/etc/modules-load.d"

# Run the collector as root: directly when already root (or under testinfra --sudo),
# else through passwordless sudo (the lab's become method).
_WRAPPER = (
    'if [ "$(id -u)" = 0 ]; then exec python3 -c "$1" "$2"; '
    'elif command -v sudo >/dev/null 2>&1; then exec sudo -n python3 -c "$1" "$2"; '
    'else exec python3 -c "$1" "$2"; fi'
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


def build_id_path(record: dict[str, Any]) -> str:
    """The loaded module's GNU build ID note (its .ko's ``.note.gnu.build-id``)."""
    return f"{sys_module(record)}/notes/.note.gnu.build-id"


def installed_files(record: dict[str, Any], kernel: str) -> list[str]:
    """Where DKMS installs the module's .ko for ``kernel`` (any name and suffix)."""
    folder = INSTALL_DIR.format(kernel=kernel)
    names = sorted({record["name"], record["kmod"]})
    return [f"{folder}/{name}{suffix}" for name in names for suffix in MODULE_SUFFIXES]


def config_paths(record: dict[str, Any]) -> tuple[str, str]:
    """(/etc/modprobe.d/NAME.conf, /etc/modules-load.d/NAME.conf)."""
    return (
        f"{MODPROBE_D}/{record['name']}.conf",
        f"{MODULES_LOAD_D}/{record['name']}.conf",
    )


def functional_id(record: dict[str, Any], index: int) -> str:
    return f"{record['name']}#{index}"


def build_request(expectation: Expectation) -> dict[str, Any]:
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
            commands[f"modinfo:{rec['name']}"] = [
                "modinfo",
                "-k",
                expectation.kernel,
                rec["kmod"],
            ]
        if rec["state"] == "absent":
            stat += [f"{DKMS_TREE}/{rec['name']}", f"{SOURCE_ROOT}/{rec['name']}-{rec['version']}"]
            stat += installed_files(rec, expectation.kernel)
        if rec["state"] != "present":
            continue
        build_ids += [build_id_path(rec), *installed_files(rec, expectation.kernel)]
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
                        {
                            "op": step["op"],
                            "path": step["path"],
                            "data": step.get("data"),
                            "size": step.get("size", 4096),
                        }
                        for step in check["steps"]
                    ],
                }
            )
    return {
        "stat": list(dict.fromkeys(stat)),
        "read": list(dict.fromkeys(read)),
        "list": list(dict.fromkeys(listing)),
        "build_id": list(dict.fromkeys(build_ids)),
        "commands": commands,
        "dkms": {"tree": DKMS_TREE, "names": [rec["name"] for rec in expectation.modules]},
        "kernel_log": True,
        "functional": functional,
    }


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

    def command(self, key: str) -> dict[str, Any]:
        return self.data.get("commands", {}).get(key) or {
            "rc": -1,
            "stdout": "",
            "stderr": f"command {key} was not run",
        }

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


def collector_source() -> str:
    """The collector, with the sources of the module_utils it uses in ``SHARED_SOURCES``."""
    source = COLLECTOR.read_text()
    marker = "SHARED_SOURCES: dict = {}"
    if marker not in source:
        raise RuntimeError(f"{COLLECTOR} lacks the line {marker}")
    shared = {name: (MODULE_UTILS / f"{name}.py").read_text() for name in SHARED}
    return source.replace(marker, f"SHARED_SOURCES: dict = {shared!r}", 1)


def observe(host: Any, expectation: Expectation) -> Observation:
    """Run the collector on ``host`` (a testinfra Host) for ``expectation``."""
    request = json.dumps(build_request(expectation), separators=(",", ":"))
    try:
        result = host.run("sh -c %s kmodlab-verify %s %s", _WRAPPER, collector_source(), request)
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
