"""Fast tier: every module in ``modules/`` builds warning-free with kbuild.

Each module is built against the newest ``/usr/src/linux-headers-*-amd64`` on this machine
(Debian's ``linux-headers-amd64``; ``KMODLAB_KERNEL_HEADERS`` names another tree), with
``KCFLAGS=-Werror``, in a temporary copy of its folder so nothing is left in the repo. The
built ``.ko`` must carry the module name, licence and parameters its manifest declares.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kmodlab.manifest import load_manifest

REPO = Path(__file__).resolve().parents[2]
MODULES = REPO / "modules"
MODULE_NAMES = sorted(p.parent.name for p in MODULES.glob("*/module.yml"))

# What kbuild leaves behind when someone built in the repo by hand: never copy it.
BUILD_OUTPUT = ("*.o", "*.ko", "*.mod", "*.mod.c", "*.cmd", "modules.order", "Module.symvers")


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.name))


def newest_headers() -> Path | None:
    """The kernel build tree to use, or None when the machine has none."""
    chosen = os.environ.get("KMODLAB_KERNEL_HEADERS")
    if chosen:
        return Path(chosen)
    trees = [
        p for p in Path("/usr/src").glob("linux-headers-*-amd64") if (p / "Makefile").is_file()
    ]
    return max(trees, key=_version_key) if trees else None


HEADERS = newest_headers()
MISSING = [tool for tool in ("make", "gcc") if shutil.which(tool) is None]

pytestmark = [
    pytest.mark.skipif(
        HEADERS is None,
        reason="no /usr/src/linux-headers-*-amd64: apt-get install linux-headers-amd64",
    ),
    pytest.mark.skipif(
        bool(MISSING), reason=f"no {', '.join(MISSING)}: apt-get install build-essential"
    ),
]


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_module_builds_without_warnings(name: str, tmp_path: Path) -> None:
    manifest = load_manifest(MODULES / name)
    build_dir = tmp_path / name
    shutil.copytree(MODULES / name, build_dir, ignore=shutil.ignore_patterns(*BUILD_OUTPUT))

    cmd = ["make", "-C", str(HEADERS), f"M={build_dir}", "-j2", "KCFLAGS=-Werror", "modules"]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, check=False, cwd=build_dir
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{output}"
    # -Werror covers the compiler; modpost's warnings (licence, section mismatches) too.
    warnings = [line for line in output.splitlines() if re.search(r"warning", line, re.I)]
    assert not warnings, "build warnings:\n" + "\n".join(warnings)

    ko = build_dir / f"{name}.ko"
    assert ko.is_file(), f"{ko.name} was not built:\n{output}"
    data = ko.read_bytes()
    assert b"\0name=" + manifest.kmod.encode() + b"\0" in data, f"{ko.name}: modinfo name"
    assert b"license=" + manifest.license.encode() + b"\0" in data, f"{ko.name}: licence"
    for p in manifest.parameters:
        kind = f"array of {p.type}" if p.array else p.type
        tag = f"parmtype={p.name}:{kind}\0".encode()
        assert tag in data, f"{ko.name}: no parameter {p.name} of type {kind}"
