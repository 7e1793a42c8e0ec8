"""Interactive serial console over the VM's unix socket (Ctrl-] leaves)."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import termios
import tty
from pathlib import Path

from kmodlab.lab.errors import LabError

ESCAPE = b"\x1d"  # Ctrl-]


def attach(sock_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.connect(str(sock_path))
    except OSError as exc:
        raise LabError(f"cannot attach to {sock_path}: {exc}") from None
    stdin = sys.stdin.fileno()
    interactive = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if interactive else None
    print("connected to the serial console; Ctrl-] to leave", file=sys.stderr)
    try:
        if interactive:
            tty.setraw(stdin)
        while True:
            ready, _writable, _errors = select.select([sock, stdin], [], [])
            if sock in ready:
                data = sock.recv(4096)
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
            if stdin in ready:
                data = os.read(stdin, 1024)
                if not data or ESCAPE in data:
                    break
                sock.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        with contextlib.suppress(OSError):
            sock.close()
