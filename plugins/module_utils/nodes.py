# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``/dev`` nodes of a module's manifest (``expect.dev_nodes``): what stands at each
path and how it differs from the manifest.

Runs on the target (as Ansible module_utils) and on the controller, so only the
standard library is used. What a path is comes from ``files.stat_path``, the one stat
classifier the verify collector uses too.
"""

from __future__ import annotations

from typing import Any

from ansible_collections.kmodlab.lab.plugins.module_utils.files import (
    host_path,
    show_mode,
    stat_path,
)
from ansible_collections.kmodlab.lab.plugins.module_utils.proc_devices import majors_of


def dev_nodes(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's ``expect.dev_nodes`` of ``record``."""
    manifest = record.get("manifest") or {}
    return list((manifest.get("expect") or {}).get("dev_nodes") or [])


def dev_node_state(root: str | None, path: str) -> dict[str, Any]:
    """What ``path`` is under ``root``: files.stat_path() (``exists``, ``type``,
    ``mode`` as an int, ``link``, ``major``/``minor`` of a device node)."""
    return stat_path(host_path(root, path))


def dev_node_problems(
    record: dict[str, Any],
    nodes: dict[str, dict[str, Any]],
    proc_devices: dict[str, Any] | None = None,
) -> list[tuple[str, str, bool]]:
    """How the /dev nodes of a loaded module differ from its manifest.

    nodes: ``{path: dev_node_state()}``; proc_devices: parse_proc_devices(). Returns
    ``[(path, message, foreign)]``; ``foreign`` when something else stands at the path
    (another type, or a node of another device number): the kernel does not replace
    it when the module is loaded again, so it has to go first.
    """
    manifest = record.get("manifest") or {}
    devices = {d["name"]: d for d in (manifest.get("expect") or {}).get("proc_devices") or []}
    out = []
    for node in dev_nodes(record):
        path = node["path"]
        st = nodes.get(path)
        if st is None:
            continue
        want_type = node.get("type", "char")
        if not st.get("exists"):
            out.append((path, f"{path} is missing (manifest expect.dev_nodes)", False))
            continue
        if st.get("type") != want_type:
            out.append((path, f"{path} is a {st.get('type')}, not a {want_type} device", True))
            continue
        device = devices.get(node.get("device"))
        if device is not None and proc_devices:
            majors = majors_of(proc_devices, device["name"], device.get("kind", "char"))
            minor = node.get("minor", 0)
            if majors and (st.get("major") not in majors or st.get("minor") != minor):
                numbers = "/".join(str(m) for m in majors)
                out.append(
                    (
                        path,
                        f"{path} is {want_type} {st.get('major')}:{st.get('minor')}, not the "
                        f"node of {device['name']!r} (major {numbers}, minor {minor})",
                        True,
                    )
                )
                continue
        if node.get("mode") and st.get("mode") != int(str(node["mode"]), 8):
            out.append(
                (
                    path,
                    f"{path} has mode {show_mode(st.get('mode'))}, the manifest says "
                    f"{node['mode']}",
                    False,
                )
            )
    return out
