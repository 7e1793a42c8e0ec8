"""Which modules a host gets, with what parameters: inventory entries joined with manifests.

The selection is written once, at the play level, in three layers merged by name
(``kmodlab_modules`` for all hosts, ``kmodlab_group_modules``, ``kmodlab_host_modules``;
a later layer wins, and its ``params`` are merged key by key). An entry is::

    {name: hello-5, state: present, params: {myint: 7}, persist: true}

``params`` override the manifest's lab parameters. The result is one resolved record per
module in load order (dependencies first), carrying everything the roles and the verify
suite need, so no role reads a manifest or a layer on its own. Only the manifests of the
selected modules and of the modules they depend on are read: a broken manifest that no
host selects stops nothing (the tests lint every manifest).

A module selected present or config needs every module it depends on selected present or
config too: it is built against their exported symbols and loaded after them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kmodlab.manifest import MANIFEST_FILE, Manifest, ManifestError, load_manifest, load_order

STATES = ("present", "absent", "config")
_ENTRY_KEYS = {"name", "state", "params", "persist"}


class SelectionError(ValueError):
    """An inventory entry that names no module or asks for something impossible."""


def _merge_value(old: Any, new: Any) -> Any:
    if isinstance(old, dict) and isinstance(new, dict):
        merged = dict(old)
        for key, value in new.items():
            merged[key] = _merge_value(merged[key], value) if key in merged else value
        return merged
    return new


def merge_layers(layers: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """The layers ``[(variable name, list of entries), ...]`` merged by module name.

    A later layer's entry for a module updates the earlier one key by key (``params``
    merged parameter by parameter); a module first named in a later layer comes after
    the others. Raises SelectionError naming the variable for a layer that is not a
    list of mappings with a name.
    """
    merged: dict[str, dict[str, Any]] = {}
    for var, entries in layers:
        if entries is None:
            continue
        if isinstance(entries, (str, bytes, dict)) or not isinstance(entries, list):
            raise SelectionError(
                f"{var} must be a list of mappings, e.g. [{{name: hello-5, params: "
                f"{{myint: 7}}}}]; got {type(entries).__name__}"
            )
        seen: set[str] = set()
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise SelectionError(
                    f"{var}[{index}]: each entry is a mapping with at least a name, "
                    f"e.g. {{name: hello-5}}; got {entry!r}"
                )
            name = entry["name"]
            if name in seen:
                raise SelectionError(f"{var}[{index}].name: module {name!r} is selected twice")
            seen.add(name)
            merged[name] = _merge_value(merged[name], entry) if name in merged else dict(entry)
    return list(merged.values())


def _manifests_for(modules_dir: Path, names: list[str]) -> dict[str, Manifest]:
    """The manifests of ``names`` and of every module they depend on, by name."""
    found: dict[str, Manifest] = {}
    pending: list[tuple[str, str | None]] = [(name, None) for name in names]
    while pending:
        name, needed_by = pending.pop()
        if name in found:
            continue
        path = modules_dir / name / MANIFEST_FILE
        if not path.is_file():
            raise ManifestError(
                f"{modules_dir / str(needed_by) / MANIFEST_FILE}: field depends: unknown "
                f"module {name!r} (there is no {path})"
                if needed_by
                else f"unknown module {name!r}: there is no {path}"
            )
        found[name] = load_manifest(path)
        pending.extend((dep, name) for dep in found[name].depends)
    return found


def _known(modules_dir: Path) -> str:
    return ", ".join(sorted(p.parent.name for p in modules_dir.glob(f"*/{MANIFEST_FILE}")))


def resolve_layers(modules_dir: str | Path, layers: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Merge the play-level layers by name, then resolve them (see resolve)."""
    first, rest = layers[0][0], [name for name, _entries in layers[1:]]
    var = f"{first} (merged with {', '.join(rest)})" if rest else first
    return resolve(modules_dir, merge_layers(layers), var=var)


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
    by_name: dict[str, dict[str, Any]] = {}
    manifests: dict[str, Manifest] = {}
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
        if not (modules_dir / str(name) / MANIFEST_FILE).is_file():
            raise SelectionError(
                f"{where}.name: unknown module {name!r}: there is no "
                f"{modules_dir}/{name}/{MANIFEST_FILE} (known: {_known(modules_dir)})"
            )
        manifests.update(_manifests_for(modules_dir, [name]))
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
                "manifest": m.model_dump(mode="json", by_alias=True),
            }
        )
    return resolved


__all__ = [
    "STATES",
    "ManifestError",
    "SelectionError",
    "merge_layers",
    "resolve",
    "resolve_layers",
]
