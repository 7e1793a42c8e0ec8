# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters for the kmod_load role: what to write, show and put back, from the probe.

Controller side. Each takes the records the role probes (with their wanted ``files``)
and the probe's view of the modules (kmodlab.lab.kmod_params ``modules``).
"""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.kmodlab.lab.plugins.module_utils import kmod_config, params


def kmod_load_with_files(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each record with ``files``: its /etc/modprobe.d and /etc/modules-load.d files and
    their wanted content, None where the file must not exist (kmod_config.wanted_files,
    the rule the verify checks use too)."""
    out = []
    for rec in records:
        try:
            out.append({**rec, "files": kmod_config.wanted_files(rec)})
        except params.ParamError as exc:
            raise AnsibleFilterError(f"{rec.get('name')}: {exc}") from None
    return out


def kmod_load_file_changes(
    records: list[dict[str, Any]], probed: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The files to write (content) or remove (content None), where the probe found them
    different from the wanted content; in record order, paths sorted."""
    changed = {m["name"]: set(m.get("files_changed") or ()) for m in probed}
    return [
        {"path": path, "content": rec["files"][path]}
        for rec in records
        for path in sorted(rec.get("files") or {})
        if path in changed.get(rec["name"], ())
    ]


def kmod_load_actions(probed: list[dict[str, Any]]) -> list[str]:
    """One line per module to load, reload or unload, with its reasons."""
    return [
        f"{m['name']}: {m['action']} ({'; '.join(m.get('reasons') or [])})"
        for m in probed
        if m.get("action", "none") != "none"
    ]


def kmod_load_previous_files(probed_module: dict[str, Any]) -> list[dict[str, Any]]:
    """The files a module had before this run, to put back after a refused load: each
    changed file with its old content, or None (removed) when it did not exist."""
    return [
        {"path": path, "content": state["content"] if state.get("exists") else None}
        for path, state in sorted((probed_module.get("files") or {}).items())
        if state.get("changed")
    ]


def kmod_load_unload_problems(modules: list[dict[str, Any]]) -> list[str]:
    """Modules unloaded without the manifest's unload lines in the kernel log."""
    return [
        f"{m['name']} was unloaded but the kernel log has no line matching "
        f"{', '.join(m['messages_missing']['unload'])} (manifest expect.dmesg.unload); "
        f"last lines: {' | '.join((m.get('kernel_log') or [])[-5:])}"
        for m in modules
        if (m.get("messages_missing") or {}).get("unload")
    ]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "kmod_load_with_files": kmod_load_with_files,
            "kmod_load_file_changes": kmod_load_file_changes,
            "kmod_load_actions": kmod_load_actions,
            "kmod_load_previous_files": kmod_load_previous_files,
            "kmod_load_unload_problems": kmod_load_unload_problems,
        }
