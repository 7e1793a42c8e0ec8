# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The steps of a manifest's functional checks, run on the target (``run_check``).

Runs inside the verify collector's zip, so only the standard library is used. It makes
no decisions but the ones that need the target's clock: a ``blocks`` step must still
be running ``block_ms`` after it started, and a ``poll`` step re-reads until its regex
matches. Whether each step's outcome is what the manifest expects is decided on the
controller (``kmodlab.verify.checks.functional``).

Every step's result is a dict: ``ok`` (the system call or command succeeded), ``errno``
(its name when it failed) and ``error`` (its text), and what the step produced:
``data_b64`` (read), ``return``, ``value``, ``buffer_b64`` (ioctl), ``rc``, ``stdout``,
``stderr`` (run), ``matched`` and ``last`` (poll); ``blocked`` for a step that runs in
the background (its outcome is the result of the ``wait`` step that names it, or
``still_blocked`` when it has not finished by the wait's timeout);
``elapsed`` in seconds.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import os
import re
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

IOC_DIRS = {"none": 0, "write": 1, "read": 2, "readwrite": 3}
POLL_INTERVAL = 0.2
OUTPUT_LIMIT = 65536


def ioctl_number(request: Any) -> int:
    """The request number: an int as given, or ``{dir, type, nr, size}`` encoded as
    the kernel's ``_IOC`` does on x86-64 (dir << 30 | size << 16 | type << 8 | nr)."""
    if isinstance(request, int):
        return request
    return (
        (IOC_DIRS[request["dir"]] << 30)
        | (int(request.get("size") or 0) << 16)
        | (ord(request["type"]) << 8)
        | int(request["nr"])
    )


def open_flags(names: list[str]) -> int:
    flags = 0
    for name in names:
        flags |= getattr(os, name)
    return flags


def _failure(exc: OSError) -> dict[str, Any]:
    name = errno.errorcode.get(exc.errno or 0)
    return {"ok": False, "errno": name, "error": exc.strerror or str(exc)}


class _Check:
    """One functional check: its open handles and its steps running in the background."""

    def __init__(self, log_records: Callable[[], list[tuple[Any, Any, str]]]) -> None:
        self.handles: dict[str, int] = {}
        self.pending: dict[str, tuple[threading.Thread, dict[str, Any]]] = {}
        self.log_records = log_records
        self.log_start = self._log_mark()

    def _log_mark(self) -> tuple[Any, int]:
        records = self.log_records()
        return (records[-1][0] if records else None, len(records))

    def _fd(self, step: dict[str, Any], flags: int) -> tuple[int, bool]:
        """The descriptor a read/write/ioctl step works on, and whether to close it."""
        if step.get("handle"):
            if step["handle"] not in self.handles:
                raise OSError(errno.EBADF, f"handle {step['handle']} is not open")
            return self.handles[step["handle"]], False
        return os.open(step["path"], flags), True

    def _open(self, step: dict[str, Any]) -> dict[str, Any]:
        fd = os.open(step["path"], open_flags(step.get("flags") or ["O_RDONLY"]))
        self.handles[step["as"]] = fd
        return {"ok": True}

    def _close(self, step: dict[str, Any]) -> dict[str, Any]:
        fd = self.handles.pop(step["handle"], None)
        if fd is None:
            raise OSError(errno.EBADF, f"handle {step['handle']} is not open")
        os.close(fd)
        return {"ok": True}

    def _read(self, step: dict[str, Any]) -> dict[str, Any]:
        fd, close = self._fd(step, os.O_RDONLY)
        try:
            data = os.read(fd, int(step.get("size") or 4096))
        finally:
            if close:
                os.close(fd)
        return {"ok": True, "data_b64": base64.b64encode(data).decode("ascii")}

    def _write(self, step: dict[str, Any]) -> dict[str, Any]:
        # Never O_CREAT: a missing device node must fail, not become a regular file.
        fd, close = self._fd(step, os.O_WRONLY)
        try:
            written = os.write(fd, step["data"].encode())
        finally:
            if close:
                os.close(fd)
        return {"ok": True, "written": written}

    def _ioctl(self, step: dict[str, Any]) -> dict[str, Any]:
        fd, close = self._fd(step, os.O_RDWR)
        arg = step.get("arg")
        out: dict[str, Any] = {"ok": True}
        try:
            request = ioctl_number(step["request"])
            if isinstance(arg, dict) and "int" in arg:
                buf = bytearray(struct.pack("=i", int(arg["int"])))
                out["return"] = fcntl.ioctl(fd, request, buf, True)
                out["value"] = struct.unpack("=i", bytes(buf))[0]
            elif isinstance(arg, dict):
                buf = bytearray(int(arg["size"]))
                text = str(arg["string"]).encode()
                buf[: len(text)] = text
                out["return"] = fcntl.ioctl(fd, request, buf, True)
                out["buffer_b64"] = base64.b64encode(bytes(buf).split(b"\0", 1)[0]).decode()
            else:
                out["return"] = fcntl.ioctl(fd, request, int(arg or 0))
        finally:
            if close:
                os.close(fd)
        return out

    def _poll(self, step: dict[str, Any]) -> dict[str, Any]:
        pattern = re.compile(step["expect"])
        deadline = time.monotonic() + float(step.get("timeout") or 10)
        last = ""
        while True:
            if step.get("dmesg"):
                lines = self._log_since()
                hits = [line for line in lines if pattern.search(line)]
                last = "\n".join(lines[-20:])
                if hits:
                    return {"ok": True, "matched": True, "last": hits[0]}
            else:
                try:
                    with open(step["path"], "rb") as handle:
                        last = handle.read(OUTPUT_LIMIT).decode("utf-8", "replace")
                except OSError as exc:
                    last = f"(cannot read: {exc.strerror or exc})"
                else:
                    if pattern.search(last):
                        return {"ok": True, "matched": True, "last": last}
            if time.monotonic() >= deadline:
                return {"ok": True, "matched": False, "last": last[-2000:]}
            time.sleep(POLL_INTERVAL)

    def _log_since(self) -> list[str]:
        seq, count = self.log_start
        records = self.log_records()
        if seq is not None and records and records[0][0] is not None:
            return [r[2] for r in records if r[0] > seq]
        return [r[2] for r in records[count:]]

    def _run(self, step: dict[str, Any]) -> dict[str, Any]:
        try:
            proc = subprocess.run(
                step["argv"],
                capture_output=True,
                timeout=float(step.get("timeout") or 30),
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {
                "ok": False,
                "errno": None,
                "error": f"timed out after {step.get('timeout') or 30} s",
            }
        return {
            "ok": True,
            "rc": proc.returncode,
            "stdout": proc.stdout[-OUTPUT_LIMIT:].decode("utf-8", "replace"),
            "stderr": proc.stderr[-OUTPUT_LIMIT:].decode("utf-8", "replace"),
        }

    def do(self, step: dict[str, Any]) -> dict[str, Any]:
        start = time.monotonic()
        try:
            result = getattr(self, "_" + step["op"])(step)
        except OSError as exc:
            result = _failure(exc)
        except (KeyError, ValueError, TypeError, OverflowError, re.error) as exc:
            result = {"ok": False, "errno": None, "error": f"bad step: {exc!r}"}
        result["elapsed"] = round(time.monotonic() - start, 3)
        return result

    def start(self, step: dict[str, Any]) -> dict[str, Any]:
        """Run a ``blocks`` step in the background; it must not finish in block_ms."""
        box: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: box.update(self.do(step)), daemon=True)
        thread.start()
        thread.join(int(step.get("block_ms") or 500) / 1000)
        self.pending[step["blocks"]] = (thread, box)
        if thread.is_alive():
            return {"ok": True, "blocked": True}
        return {"ok": True, "blocked": False, "finished": dict(box)}

    def wait(self, step: dict[str, Any]) -> dict[str, Any]:
        entry = self.pending.pop(step["for"], None)
        if entry is None:
            return {"ok": False, "errno": None, "error": f"nothing blocks as {step['for']}"}
        thread, box = entry
        timeout = float(step.get("timeout") or 10)
        thread.join(timeout)
        if thread.is_alive():
            return {
                "ok": False,
                "errno": None,
                "still_blocked": True,
                "error": f"still blocked after {timeout:g} s",
            }
        return dict(box)

    def close_all(self) -> None:
        for fd in self.handles.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.handles.clear()


def run_check(
    steps: list[dict[str, Any]], log_records: Callable[[], list[tuple[Any, Any, str]]]
) -> list[dict[str, Any]]:
    """Run the steps of one check in order; one result per step. ``log_records()``
    returns the kernel log as ``[(seq or None, level, message)]`` (kernel_log.py)."""
    check = _Check(log_records)
    results = []
    try:
        for step in steps:
            if step.get("op") == "wait":
                results.append(check.wait(step))
            elif step.get("blocks"):
                results.append(check.start(step))
            else:
                results.append(check.do(step))
    finally:
        check.close_all()
    return results
