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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kmodlab import sources
from kmodlab.manifest import MANIFEST_FILE, Manifest, ManifestError, load_manifest, load_order

STATES = ("present", "absent", "config")
# How a host gets its modules: "dkms" builds each one on the host as its own DKMS package
# (lab.yml's default); "deb" installs the packages the container builder made on the
# controller (the fleet path's packages, without batches).
DELIVERIES = ("dkms", "deb")
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


def resolve_delivery(value: Any, var: str = "kmodlab_delivery") -> str:
    """The host's delivery (``dkms`` when unset); SelectionError for anything else."""
    if value is None or value == "":
        return DELIVERIES[0]
    if value not in DELIVERIES:
        raise SelectionError(
            f"{var}: {value!r} is not a delivery; use dkms (each module built on the host as "
            f"its own DKMS package) or deb (built in the container builder on the "
            f"controller, installed as Debian packages)"
        )
    return str(value)


def find_manifest(modules_dirs: Sequence[Path], name: str) -> Path | None:
    """``DIR/NAME/module.yml`` of the first of ``modules_dirs`` that has it."""
    for folder in modules_dirs:
        path = folder / name / MANIFEST_FILE
        if path.is_file():
            return path
    return None


def _manifests_for(
    modules_dirs: Sequence[Path], names: list[str]
) -> dict[str, tuple[Path, Manifest]]:
    """The manifests (file, content) of ``names`` and of every module they depend on."""
    found: dict[str, Path] = {}
    manifests: dict[str, Manifest] = {}
    pending: list[tuple[str, str | None]] = [(name, None) for name in names]
    while pending:
        name, needed_by = pending.pop()
        if name in found:
            continue
        path = find_manifest(modules_dirs, name)
        if path is None:
            where = " or ".join(str(d / name / MANIFEST_FILE) for d in modules_dirs)
            raise ManifestError(
                f"{found[needed_by]}: field depends: unknown module {name!r} (there is no {where})"
                if needed_by
                else f"unknown module {name!r}: there is no {where}"
            )
        found[name] = path
        manifests[name] = load_manifest(path)
        pending.extend((dep, name) for dep in manifests[name].depends)
    return {name: (found[name], manifests[name]) for name in found}


def _known(modules_dirs: Sequence[Path]) -> str:
    names = {p.parent.name for d in modules_dirs for p in d.glob(f"*/{MANIFEST_FILE}")}
    return ", ".join(sorted(names))


def manifest_dirs(extra: Any, catalog: Path) -> list[Path]:
    """The folders to find manifests in: ``extra`` (kmodlab_manifest_dirs: a list of
    folders, searched first) and then ``catalog``; SelectionError for a bad value."""
    if extra is None or extra == "":
        extra = []
    if isinstance(extra, (str, bytes)) or not isinstance(extra, list):
        raise SelectionError(
            f"kmodlab_manifest_dirs must be a list of folders, e.g. [/srv/my-modules]; got "
            f"{type(extra).__name__}"
        )
    dirs = [Path(str(d)).expanduser() for d in extra]
    for folder in dirs:
        if not folder.is_dir():
            raise SelectionError(f"kmodlab_manifest_dirs: {folder} is not a folder")
    return [*dirs, Path(catalog)]


def resolve_layers(
    modules_dirs: str | Path | Sequence[str | Path], layers: list[tuple[str, Any]]
) -> list[dict[str, Any]]:
    """Merge the play-level layers by name, then resolve them (see resolve)."""
    first, rest = layers[0][0], [name for name, _entries in layers[1:]]
    var = f"{first} (merged with {', '.join(rest)})" if rest else first
    return resolve(modules_dirs, merge_layers(layers), var=var)


def resolve(
    modules_dirs: str | Path | Sequence[str | Path],
    entries: list[dict[str, Any]],
    var: str = "kmodlab_modules",
) -> list[dict[str, Any]]:
    """Resolve ``entries`` against the manifests in ``modules_dirs`` (one folder, or
    several searched in order: the first that has NAME/module.yml gives the module).

    A module of a third-party package (``package.source``) gets its package's tree fetched
    (:func:`kmodlab.sources.fetch`) as its ``source_dir``. Raises ManifestError for a
    broken manifest, SelectionError for a broken entry, SourceError for a tree that could
    not be fetched; the messages name the file or the variable and the field.
    """
    dirs = (
        [Path(modules_dirs)]
        if isinstance(modules_dirs, (str, Path))
        else [Path(d) for d in modules_dirs]
    )
    for folder in dirs:
        if not folder.is_dir():
            raise SelectionError(f"manifest directory {folder} does not exist")
    by_name: dict[str, dict[str, Any]] = {}
    manifests: dict[str, Manifest] = {}
    paths: dict[str, Path] = {}
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
        if find_manifest(dirs, str(name)) is None:
            where_not = " or ".join(f"{d}/{name}/{MANIFEST_FILE}" for d in dirs)
            raise SelectionError(
                f"{where}.name: unknown module {name!r}: there is no {where_not} "
                f"(known: {_known(dirs)})"
            )
        for dep_name, (path, manifest) in _manifests_for(dirs, [name]).items():
            paths[dep_name], manifests[dep_name] = path, manifest
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
        folder = paths[name].parent.resolve()
        source_dir = folder
        if m.package.source is not None and entry["state"] != "absent":
            source_dir = sources.fetch(m.package.source, folder).path
        resolved.append(
            {
                "name": m.name,
                "kmod": m.kmod,
                "version": m.version,
                "package": m.package_name,
                "state": entry["state"],
                "params": entry["params"],
                "persist": bool(entry["persist"]),
                "source_dir": str(source_dir),
                "manifest": m.model_dump(mode="json", by_alias=True),
            }
        )
    return resolved


__all__ = [
    "DELIVERIES",
    "STATES",
    "ManifestError",
    "SelectionError",
    "find_manifest",
    "manifest_dirs",
    "merge_layers",
    "resolve",
    "resolve_delivery",
    "resolve_layers",
]
