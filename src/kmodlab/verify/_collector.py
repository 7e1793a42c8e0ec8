# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Target side of the verify suite: observe paths and run commands, print JSON.

It is sent to the host as the ``__main__.py`` of a zip that also holds the
collection's ``plugins/module_utils`` (``kmodlab.verify.observe.collector_zip``), so
it imports the same readers as the Ansible modules, as they import them; the host needs
nothing but python3. One round trip observes everything a host's tests need. It makes
no decisions: the checks run on the controller (``kmodlab.verify.checks``). The request
(argv[1], JSON as such or compressed: ``decode_request``) holds:

    stat:       paths to stat (files.stat_path: type, mode, major/minor of device nodes)
    read:       paths whose content to read (never device nodes)
    list:       directories to list
    build_id:   files whose GNU build ID to read: a .ko (ELF, also .xz / .gz) or a
                sysfs note file (/sys/module/KMOD/notes/.note.gnu.build-id)
    commands:   {key: argv} to run (modinfo, uname)
    dkms:       {tree, names}: the dkms status entries of these packages, read from the
                DKMS tree by kmodlab's own reader (module_utils/dkms_tree.py);
                ``dkms status`` itself costs 25 s for ten packages in a TCG guest
    dpkg:       {packages} (package hosts only): ``dpkg-query -W`` of every kmodlab
                package (name, version, status), then ``dpkg -L`` and ``dpkg
                --verify`` of each listed package; the argv come from
                module_utils/dpkg_status.py, whose parsers read the answers on the
                controller
    rollout:    a path (package hosts only): the rollout state fact, a JSON file that
                holds whole records and may exceed ``read``'s limit; answered as
                {"found": false}, {"error"}, or {"found": true, "good": {MODULE:
                {version, signer, when}}, "pending": [MODULE, ...]}
    kernel_log: true to read the kernel log (module_utils/kernel_log.py: /dev/kmsg,
                else dmesg, else journalctl -k)
    secure_boot: true to read the Secure Boot state (efi, secure_boot, setup_mode) and
                the lockdown mode (module_utils/secure_boot.py)
    functional: [{id, steps: [STEP, ...]}] (the manifest's steps), run after everything
                else by module_utils/func_steps.py: one result per step
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import zlib

from ansible_collections.kmodlab.lab.plugins.module_utils.buildid import build_id
from ansible_collections.kmodlab.lab.plugins.module_utils.dkms_tree import read_tree
from ansible_collections.kmodlab.lab.plugins.module_utils.dpkg_status import (
    list_argv,
    query_argv,
    verify_argv,
)
from ansible_collections.kmodlab.lab.plugins.module_utils.files import read_file, stat_path
from ansible_collections.kmodlab.lab.plugins.module_utils.func_steps import run_check
from ansible_collections.kmodlab.lab.plugins.module_utils.kernel_log import read_kernel_log
from ansible_collections.kmodlab.lab.plugins.module_utils.secure_boot import lockdown, secure_boot

# The rollout fact holds whole records (manifests included) of two sets and a history.
ROLLOUT_LIMIT = 4 * 1024 * 1024


def _list(path: str) -> list[str] | None:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return None


def _build_id(path: str) -> dict:
    try:
        return build_id(path)
    except Exception as exc:  # report it as a check failure, not a crash
        return {"ok": False, "error": f"reading the build ID failed: {exc!r}"}


def _run(argv: list[str], binary: bool = False) -> dict:
    if not shutil.which(argv[0]) and not os.path.exists(argv[0]):
        return {"rc": 127, "stdout": "", "stderr": f"{argv[0]}: command not found"}
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"rc": 126, "stdout": "", "stderr": str(exc)}
    out = {
        "rc": proc.returncode,
        "stdout": proc.stdout.decode("utf-8", "replace"),
        "stderr": proc.stderr.decode("utf-8", "replace"),
    }
    if binary:
        out["stdout_b64"] = base64.b64encode(proc.stdout).decode("ascii")
    return out


def _run_triple(argv: list[str]) -> tuple[int, str, str]:
    res = _run(argv)
    return res["rc"], res["stdout"], res["stderr"]


def _kernel_log() -> dict:
    log = read_kernel_log("/", _run_triple)
    out = {"source": log["source"], "lines": [record[2] for record in log["records"]]}
    if "error" in log:
        out["error"] = log["error"]
    return out


def _secure_boot() -> dict:
    try:
        return {**secure_boot("/"), "lockdown": lockdown("/")}
    except Exception as exc:  # report it as a check failure, not a crash
        return {
            "efi": None,
            "secure_boot": None,
            "setup_mode": None,
            "lockdown": None,
            "error": f"reading the Secure Boot state failed: {exc!r}",
        }


def _functional(checks: list[dict]) -> dict:
    def records() -> list:
        return read_kernel_log("/", _run_triple)["records"]

    return {check["id"]: run_check(check["steps"], records) for check in checks}


def _dkms(request: dict) -> dict:
    try:
        entries = read_tree(request["tree"], request["names"])
    except Exception as exc:  # report it as a check failure, not a crash
        return {"error": f"reading {request['tree']} failed: {exc!r}"}
    return {"entries": entries}


def _dpkg(request: dict) -> dict:
    packages = request.get("packages", [])
    return {
        "query": _run(query_argv()),
        "list": {p: _run(list_argv(p)) for p in packages},
        "verify": {p: _run(verify_argv(p)) for p in packages},
    }


def _rollout(path: str) -> dict:
    entry = read_file(path, ROLLOUT_LIMIT)
    if not entry["ok"]:
        if entry["error"] == "No such file or directory":
            return {"found": False}
        return {"error": f"{path}: cannot read: {entry['error']}"}
    try:
        fact = json.loads(entry["text"])
        good = fact.get("good") or {}
        return {
            "found": True,
            "good": {
                str(module): {key: (value or {}).get(key) for key in ("version", "signer", "when")}
                for module, value in sorted(good.items())
            },
            "pending": sorted(fact.get("pending") or {}),
        }
    except (ValueError, AttributeError, TypeError) as exc:
        return {"error": f"{path}: not the rollout state's JSON: {exc}"}


def collect(request: dict) -> dict:
    result = {
        "euid": os.geteuid(),
        "stat": {p: stat_path(p) for p in request.get("stat", [])},
        "read": {p: read_file(p) for p in request.get("read", [])},
        "list": {p: _list(p) for p in request.get("list", [])},
        "build_id": {p: _build_id(p) for p in request.get("build_id", [])},
        "commands": {k: _run(v) for k, v in sorted(request.get("commands", {}).items())},
    }
    if request.get("dkms"):
        result["dkms"] = _dkms(request["dkms"])
    if request.get("dpkg"):
        result["dpkg"] = _dpkg(request["dpkg"])
    if request.get("rollout"):
        result["rollout"] = _rollout(request["rollout"])
    if request.get("kernel_log"):
        result["kernel_log"] = _kernel_log()
    if request.get("secure_boot"):
        result["secure_boot"] = _secure_boot()
    result["functional"] = _functional(request.get("functional", []))
    return result


def decode_request(arg: str) -> dict:
    """The request: its JSON, or (as ``observe`` sends it, to stay far below the
    128 KiB limit of one command-line argument) ``z:`` + base64 of its zlib."""
    if arg.startswith("z:"):
        return json.loads(zlib.decompress(base64.b64decode(arg[2:])))
    return json.loads(arg)


def main(argv: list[str]) -> int:
    request = decode_request(argv[1])
    sys.stdout.write(json.dumps(collect(request)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
