"""``kmodlab build``: compile, sign and package modules once per kernel ABI in containers
(the fleet path's container builder, :mod:`kmodlab.fleet.builder`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kmodlab import keys, selection
from kmodlab.cliutil import clean_errors
from kmodlab.fleet.builder import BuildError, KeyMaterial, build
from kmodlab.lab.errors import LabError
from kmodlab.manifest import MANIFEST_FILE, ManifestError

#: The collection's catalog (the repository's modules/ folder).
DEFAULT_MANIFEST_DIR = Path(__file__).resolve().parents[2] / "modules"

console = Console(stderr=True, emoji=False, highlight=False, soft_wrap=True)
out = Console(emoji=False, highlight=False, soft_wrap=True)


def _progress(start: float) -> Callable[[str], None]:
    def show(message: str) -> None:
        console.print(f"[dim]{time.monotonic() - start:6.1f}s[/] {message}")

    return show


@clean_errors
def build_command(
    abi: Annotated[
        list[str] | None,
        typer.Option("--abi", help="kernel ABI to build for, e.g. 6.1.0-57-amd64 (repeatable)"),
    ] = None,
    module: Annotated[
        list[str] | None,
        typer.Option("--module", "-m", help="module to build (repeatable; default: all)"),
    ] = None,
    key: Annotated[
        str, typer.Option("--key", help="signing key of the project key store")
    ] = keys.DEFAULT_NAME,
    manifest_dir: Annotated[
        Path, typer.Option("--manifest-dir", help="the module catalog")
    ] = DEFAULT_MANIFEST_DIR,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="ABIs built at once")] = 2,
) -> None:
    """Build modules once per kernel ABI in containers, signed, as .deb packages."""
    if not abi:
        raise BuildError("give at least one --abi (e.g. --abi 6.1.0-57-amd64)")
    names = module or sorted(p.parent.name for p in manifest_dir.glob(f"*/{MANIFEST_FILE}"))
    try:
        records = selection.resolve(manifest_dir, [{"name": n} for n in names], var="--module")
    except (ManifestError, selection.SelectionError) as exc:
        raise LabError(str(exc)) from None
    material = KeyMaterial.from_store(key)
    result = build(records, abi, material, jobs=jobs, progress=_progress(time.monotonic()))
    for one_abi, descriptors in result.descriptors.items():
        out.print(f"{one_abi}:")
        for d in descriptors:
            how = "compiled" if d["compiled"] else "cached  "
            out.print(f"  {how} {d['module']} {d['version']}  {d['path']}")
    for failure in result.failures:
        out.print(f"FAILED {failure.module} ({failure.abi}): {failure.message}")
        if failure.log_tail:
            out.print("    " + failure.log_tail.replace("\n", "\n    "))
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
    out.print(f"compiled {result.compiled}, cached {result.cached}; {timings}")
    if result.failures:
        raise typer.Exit(1)
