# GPL-2.0-only
"""Target side of the verify suite: observe paths and run commands, print JSON.

This file is sent to the host as ``python3 -c SOURCE REQUEST`` (standard library
only, no kmodlab import) so that one round trip observes everything a host's tests
need. It makes no decisions: the checks run on the controller
(``kmodlab.verify.checks``). The request (JSON, argv[1]) holds:

    stat:       paths to stat (type, mode, major/minor of device nodes)
    read:       paths whose content to read (never device nodes)
    list:       directories to list
    build_id:   files whose GNU build ID to read: a .ko (ELF, also .xz / .gz) or a
                sysfs note file (/sys/module/KMOD/notes/.note.gnu.build-id)
    commands:   {key: argv} to run (modinfo, uname)
    dkms:       {tree, names}: the dkms status entries of these packages, read from the
                DKMS tree by kmodlab's own reader (module_utils/kmodlab_dkms_status.py,
                sent along in SHARED_SOURCES); ``dkms status``
                itself costs 25 s for ten packages in a TCG guest
    kernel_log: true to read the kernel log (/dev/kmsg, else dmesg, else journalctl)
    functional: [{id, steps: [{op, path, data, size}]}], run after everything else:
                write = ``printf '%s' DATA > PATH`` (bash, so the error text is the
                errno's strerror; never creates PATH), read =
                ``dd if=PATH bs=SIZE count=1 status=none``
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import stat
import subprocess
import sys

# {module name: source} of the module_utils files the collector uses, filled in by
# kmodlab.verify.observe.collector_source() when it is sent.
SHARED_SOURCES: dict = {}
_SHARED: dict = {}
READ_LIMIT = 65536
KMSG_RECORD = re.compile(r"^(\d+),(\d+),(-?\d+),[^;]*;(.*)$")


def _stat(path: str) -> dict:
    try:
        st = os.stat(path)
    except OSError as exc:
        return {"exists": False, "error": exc.strerror}
    mode = st.st_mode
    if stat.S_ISREG(mode):
        kind = "file"
    elif stat.S_ISDIR(mode):
        kind = "directory"
    elif stat.S_ISCHR(mode):
        kind = "char"
    elif stat.S_ISBLK(mode):
        kind = "block"
    else:
        kind = "other"
    out = {"exists": True, "type": kind, "mode": stat.S_IMODE(mode), "link": os.path.islink(path)}
    if kind in ("char", "block"):
        out["major"] = os.major(st.st_rdev)
        out["minor"] = os.minor(st.st_rdev)
    return out


def _read(path: str) -> dict:
    try:
        with open(path, "rb") as handle:
            return {"ok": True, "text": handle.read(READ_LIMIT).decode("utf-8", "replace")}
    except OSError as exc:
        return {"ok": False, "error": exc.strerror or str(exc)}


def _list(path: str) -> list[str] | None:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return None


def _shared(name: str) -> dict:
    """The namespace of a module_utils file sent along in SHARED_SOURCES."""
    if name not in _SHARED:
        if name not in SHARED_SOURCES:
            raise RuntimeError(f"the collector was sent without {name}.py")
        namespace: dict = {"__name__": name}
        exec(compile(SHARED_SOURCES[name], f"{name}.py", "exec"), namespace)
        _SHARED[name] = namespace
    return _SHARED[name]


def _build_id(path: str) -> dict:
    try:
        return _shared("buildid")["build_id"](path)
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


def _kmsg() -> list[str] | None:
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    chunks = []
    try:
        while True:
            try:
                data = os.read(fd, 16384)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == 32:  # EPIPE: a record was overwritten, go on
                    continue
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(fd)
    lines = []
    for line in b"".join(chunks).decode("utf-8", "replace").splitlines():
        match = KMSG_RECORD.match(line)
        if match:
            lines.append(match.group(4))
    return lines


def _kernel_log() -> dict:
    lines = _kmsg()
    if lines is not None:
        return {"source": "kmsg", "lines": lines}
    res = _run(["dmesg", "--notime"])
    if res["rc"] == 0:
        return {"source": "dmesg", "lines": res["stdout"].splitlines()}
    res = _run(["journalctl", "-k", "-b", "-o", "cat", "--no-pager"])
    if res["rc"] == 0:
        return {"source": "journalctl", "lines": res["stdout"].splitlines()}
    return {"source": "none", "lines": [], "error": res["stderr"].strip()}


def _step(step: dict) -> dict:
    if step["op"] == "write":
        shell = "bash" if shutil.which("bash") else "sh"
        printf = "printf" if shell == "bash" else "env printf"
        # Never create a file: a missing device node must fail, not become a regular file.
        script = (
            'if [ ! -e "$2" ]; then echo "kmodlab: $2: No such file or directory" >&2; exit 1; fi; '
            + printf
            + ' "%s" "$1" > "$2"'
        )
        res = _run([shell, "-c", script, "kmodlab", step["data"], step["path"]])
    else:
        size = f"bs={int(step.get('size', 4096))}"
        res = _run(["dd", "if=" + step["path"], size, "count=1", "status=none"], binary=True)
    return res


def _functional(checks: list[dict]) -> dict:
    out = {}
    for check in checks:
        out[check["id"]] = [_step(step) for step in check["steps"]]
    return out


def _dkms(request: dict) -> dict:
    try:
        entries = _shared("dkms_tree")["read_tree"](request["tree"], request["names"])
    except Exception as exc:  # report it as a check failure, not a crash
        return {"error": f"reading {request['tree']} failed: {exc!r}"}
    return {"entries": entries}


def collect(request: dict) -> dict:
    result = {
        "euid": os.geteuid(),
        "stat": {p: _stat(p) for p in request.get("stat", [])},
        "read": {p: _read(p) for p in request.get("read", [])},
        "list": {p: _list(p) for p in request.get("list", [])},
        "build_id": {p: _build_id(p) for p in request.get("build_id", [])},
        "commands": {k: _run(v) for k, v in sorted(request.get("commands", {}).items())},
    }
    if request.get("dkms"):
        result["dkms"] = _dkms(request["dkms"])
    if request.get("kernel_log"):
        result["kernel_log"] = _kernel_log()
    result["functional"] = _functional(request.get("functional", []))
    return result


def main(argv: list[str]) -> int:
    request = json.loads(argv[1])
    sys.stdout.write(json.dumps(collect(request)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
