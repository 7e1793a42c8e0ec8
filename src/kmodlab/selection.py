"""Which modules a host gets, with what parameters: inventory entries joined with manifests.

An entry (from ``kmodlab_modules`` and its group/host layers, merged by name) is::

    {name: hello-5, state: present, params: {myint: 7}, persist: true}

``params`` override the manifest's lab parameters. The result is one resolved record per
module in load order (dependencies first), carrying everything the roles and the verify
suite need, so no role reads a manifest on its own: among it ``dependents``, the modules of
the manifest folder whose ``depends`` name this one (selected or not), whose builds need
the symbols it exports.

A module selected present or config needs every module it depends on selected present or
config too: it is built against their exported symbols and loaded after them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kmodlab.manifest import ManifestError, load_all, load_order

STATES = ("present", "absent", "config")
_ENTRY_KEYS = {"name", "state", "params", "persist"}


class SelectionError(ValueError):
    """An inventory entry that names no module or asks for something impossible."""


def resolve(
    modules_dir: str | Path, entries: list[dict[str, Any]], var: str = "kmodlab_modules"
) -> list[dict[str, Any]]:
    """Resolve ``entries`` against the manifests in ``modules_dir``.

    Raises ManifestError for a broken manifest and SelectionError for a broken entry; both
    messages name the file or the variable and the field.
    """
    modules_dir = Path(modules_dir)
    if not modules_dir.is_dir():
        raise SelectionError(f"manifest directory {modules_dir} does not exist")
    manifests = load_all(modules_dir)
    by_name: dict[str, dict[str, Any]] = {}
    for index, entry in enumerate(entries):
        where = f"{var}[{index}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise SelectionError(f"{where}: each entry is a mapping with at least a name")
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise SelectionError(
                f"{where} ({entry['name']}): unknown key(s) {', '.join(sorted(unknown))}; "
                f"allowed: {', '.join(sorted(_ENTRY_KEYS))}"
            )
        name = entry["name"]
        if name not in manifests:
            raise SelectionError(
                f"{where}.name: unknown module {name!r}: there is no "
                f"{modules_dir}/{name}/module.yml (known: {', '.join(sorted(manifests))})"
            )
        state = entry.get("state", "present")
        if state not in STATES:
            raise SelectionError(
                f"{where}.state ({name}): {state!r} is not one of {', '.join(STATES)}"
            )
        params = entry.get("params") or {}
        if not isinstance(params, dict):
            raise SelectionError(f"{where}.params ({name}): must be a mapping of name: value")
        try:
            wanted = manifests[name].wanted_params(params)
        except ValueError as exc:
            raise SelectionError(f"{where}.params ({name}): {exc}") from None
        if name in by_name:
            raise SelectionError(f"{where}.name: module {name!r} is selected twice")
        by_name[name] = {"state": state, "params": wanted, "persist": entry.get("persist", True)}

    present = {n for n, e in by_name.items() if e["state"] != "absent"}
    for name in sorted(present):
        for dep in manifests[name].depends:
            if dep in present:
                continue
            why = (
                f"it is selected with state absent: make {name!r} absent too, or {dep!r} present"
                if dep in by_name
                else f"select {dep!r} too"
            )
            raise SelectionError(
                f"{var}: module {name!r} depends on {dep!r} (it is built against {dep!r}'s "
                f"exported symbols and loads after it), but {why}"
            )

    dependents: dict[str, list[str]] = {n: [] for n in manifests}
    for m in manifests.values():
        for dep in m.depends:
            dependents[dep].append(m.name)

    resolved = []
    for name in load_order(manifests, list(by_name)):
        if name not in by_name:
            continue  # a dependency of an absent module, not selected itself
        m = manifests[name]
        entry = by_name[name]
        resolved.append(
            {
                "name": m.name,
                "kmod": m.kmod,
                "version": m.version,
                "state": entry["state"],
                "params": entry["params"],
                "persist": bool(entry["persist"]),
                "source_dir": str((modules_dir / m.name).resolve()),
                "dependents": sorted(dependents[name]),
                "manifest": m.model_dump(mode="json"),
            }
        )
    return resolved


__all__ = ["STATES", "ManifestError", "SelectionError", "resolve"]
