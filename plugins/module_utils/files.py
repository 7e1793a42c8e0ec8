# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files on the target: where a path is (``host_path``), what it holds (``read_file``,
``read_text``), what it is (``stat_path``), and the one atomic write every kmodlab
module uses (``write_atomic``).

Runs on the target (as Ansible module_utils, and inside the verify collector's zip), so
only the standard library is used; ``write_atomic`` takes the AnsibleModule for its
``atomic_move``.
"""

from __future__ import annotations

import os
import stat
import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ansible.module_utils.basic import AnsibleModule

READ_LIMIT = 65536


def host_path(root: str | None, path: str) -> str:
    """``path`` (absolute) under ``root`` ("/" on a real host, a tmp dir in tests)."""
    root = root or "/"
    if root == "/":
        return path
    return os.path.join(root, path.lstrip("/"))


def read_file(path: str, limit: int = READ_LIMIT) -> dict[str, Any]:
    """The first ``limit`` bytes of ``path`` as text: ``{"ok": True, "text"}``, or
    ``{"ok": False, "error"}`` with the errno's text when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return {"ok": True, "text": handle.read(limit).decode("utf-8", "replace")}
    except OSError as exc:
        return {"ok": False, "error": exc.strerror or str(exc)}


def read_text(path: str, limit: int = READ_LIMIT) -> str | None:
    """File content as text, or None when it does not exist or cannot be read."""
    return read_file(path, limit).get("text")


def stat_path(path: str) -> dict[str, Any]:
    """What ``path`` is, following links: ``{"exists": True, "type", "mode", "link"}``
    plus ``major`` and ``minor`` for a device node, or ``{"exists": False, "error"}``.

    type is ``file``, ``directory``, ``char``, ``block`` or ``other``; mode the
    permission bits as an int (``0o644``); link whether ``path`` itself is a symlink;
    error the errno's text (``No such file or directory``).
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        return {"exists": False, "error": exc.strerror or str(exc)}
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


def show_mode(mode: int | None) -> str:
    """A mode of ``stat_path`` as text: ``0644``; ``none`` when unknown."""
    return "none" if mode is None else f"{mode:04o}"


def write_atomic(
    module: AnsibleModule, path: str, data: bytes, mode: int = 0o644, owner_root: bool = False
) -> None:
    """Write ``data`` to ``path`` in one step, with ``mode``, creating its folder.

    A temporary file in the same folder is written, given its mode (and root ownership
    when asked), then moved over ``path`` with Ansible's ``atomic_move``, so a reader
    sees either the old content or the new, never a part. ``atomic_move`` keeps an old
    file's mode and gives a new one the umask's: the mode is set again afterwards.
    Raises OSError (ENOSPC on a full disk) with nothing left behind but the old file.
    """
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        os.makedirs(folder, 0o755)
    fd, tmp = tempfile.mkstemp(prefix=".kmodlab-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        if owner_root:
            os.chown(tmp, 0, 0)
    except OSError:
        os.unlink(tmp)
        raise
    module.atomic_move(tmp, path)
    os.chmod(path, mode)
