# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""``/proc/devices``: the one parser, for the kmod_load probe and the verify checks.

Runs on the target (as Ansible module_utils) and on the controller (verify checks), so
only the standard library is used. The table is ``{"char": {major: [names]},
"block": {major: [names]}}``: who holds a major (``owners``) and which majors a device
name has (``majors_of``) are both read from it.
"""

from __future__ import annotations

from typing import Any

PROC_DEVICES = "/proc/devices"
KINDS = ("char", "block")


def parse_proc_devices(text: str | None) -> dict[str, dict[int, list[str]]]:
    """``/proc/devices`` as ``{"char": {major: [names]}, "block": {...}}``."""
    out = {"char": {}, "block": {}}
    section = None
    for line in (text or "").splitlines():
        line = line.strip()
        if line.lower().startswith("character devices"):
            section = "char"
            continue
        if line.lower().startswith("block devices"):
            section = "block"
            continue
        parts = line.split(None, 1)
        if section and len(parts) == 2 and parts[0].isdigit():
            out[section].setdefault(int(parts[0]), []).append(parts[1].strip())
    return out


def majors_of(table: dict[str, Any], name: str, kind: str = "char") -> list[int]:
    """The majors device ``name`` holds in ``table`` (parse_proc_devices), sorted."""
    return sorted(major for major, names in (table.get(kind) or {}).items() if name in names)


def owners(table: dict[str, Any], major: int, kind: str = "char") -> list[str]:
    """The device names that hold ``major`` in ``table`` (parse_proc_devices)."""
    return list((table.get(kind) or {}).get(major) or [])
