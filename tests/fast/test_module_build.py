"""Fast tier: every module in ``modules/`` builds warning-free with kbuild.

Each module is built against the newest ``/usr/src/linux-headers-*-amd64`` on this machine
(Debian's ``linux-headers-amd64``; ``KMODLAB_KERNEL_HEADERS`` names another tree), with
``KCFLAGS=-Werror``, in a temporary copy of its folder so nothing is left in the repo. The
built ``.ko`` must carry the module name, licence and parameters its manifest declares.

A module whose manifest ``depends`` on others is built after them, with their
``Module.symvers`` in ``KBUILD_EXTRA_SYMBOLS`` (as its dkms.conf gives them): modpost then
knows the symbols it uses, with their CRCs, and records the dependency in the ``.ko``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kmodlab.importer import BUILD_OUTPUT, newest_headers
from kmodlab.manifest import load_manifest

REPO = Path(__file__).resolve().parents[2]
MODULES = REPO / "modules"
MODULE_NAMES = sorted(p.parent.name for p in MODULES.glob("*/module.yml"))

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


def kbuild(name: str, tmp_path: Path, extra_symbols: list[Path]) -> tuple[Path, str, int]:
    """Build ``name`` in a copy under ``tmp_path``: (build folder, make's output, status)."""
    build_dir = tmp_path / name
    shutil.copytree(MODULES / name, build_dir, ignore=shutil.ignore_patterns(*BUILD_OUTPUT))
    cmd = ["make", "-C", str(HEADERS), f"M={build_dir}", "-j2", "KCFLAGS=-Werror", "modules"]
    if extra_symbols:
        cmd.append("KBUILD_EXTRA_SYMBOLS=" + " ".join(str(p) for p in extra_symbols))
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, check=False, cwd=build_dir
    )
    return build_dir, f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}", proc.returncode


def build_dependencies(name: str, tmp_path: Path) -> list[Path]:
    """Build what ``name`` depends on (theirs first) under ``tmp_path``: their
    Module.symvers, for ``name``'s KBUILD_EXTRA_SYMBOLS."""
    deps = load_manifest(MODULES / name).depends
    for dep in deps:
        if (tmp_path / dep / "Module.symvers").is_file():
            continue  # built already, for another module
        _build_dir, output, status = kbuild(dep, tmp_path, build_dependencies(dep, tmp_path))
        assert status == 0, f"{dep}, which {name} depends on, failed:\n{output}"
    return [tmp_path / dep / "Module.symvers" for dep in deps]


def assert_no_warnings(output: str) -> None:
    # -Werror covers the compiler; modpost's warnings (licence, section mismatches,
    # 'WARNING: modpost: "sym" [...] undefined!') too.
    warnings = [line for line in output.splitlines() if re.search(r"warning", line, re.I)]
    assert not warnings, "build warnings:\n" + "\n".join(warnings)


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_module_builds_without_warnings(name: str, tmp_path: Path) -> None:
    manifest = load_manifest(MODULES / name)
    build_dir, output, status = kbuild(name, tmp_path, build_dependencies(name, tmp_path))
    assert status == 0, f"build failed:\n{output}"
    assert_no_warnings(output)

    ko = build_dir / f"{name}.ko"
    assert ko.is_file(), f"{ko.name} was not built:\n{output}"
    data = ko.read_bytes()
    assert b"\0name=" + manifest.kmod.encode() + b"\0" in data, f"{ko.name}: modinfo name"
    assert b"license=" + manifest.license.encode() + b"\0" in data, f"{ko.name}: licence"
    for p in manifest.parameters:
        kind = f"array of {p.type}" if p.array else p.type
        tag = f"parmtype={p.name}:{kind}\0".encode()
        assert tag in data, f"{ko.name}: no parameter {p.name} of type {kind}"

    if manifest.depends:
        assert b"\0depends=" + ",".join(sorted(manifest.depends)).encode() + b"\0" in data, (
            f"{ko.name}: modinfo depends"
        )


DEPENDENTS = [n for n in MODULE_NAMES if load_manifest(MODULES / n).depends]


def test_the_lab_has_a_module_that_depends_on_another() -> None:
    assert "symuse" in DEPENDENTS
    assert load_manifest(MODULES / "symuse").depends == ["symexport"]


@pytest.mark.parametrize("name", DEPENDENTS)
def test_a_dependent_links_through_its_dependencies_module_symvers(
    name: str, tmp_path: Path
) -> None:
    """Without the dependencies' Module.symvers modpost refuses the module; with them it
    records each symbol's CRC from there (what the kernel checks at load)."""
    symvers = build_dependencies(name, tmp_path)
    _alone, output, status = kbuild(name, tmp_path / "alone", [])
    assert status != 0, f"{name} built without its dependencies' Module.symvers:\n{output}"
    assert re.search(rf'modpost: "\w+" \[.*/{re.escape(name)}\.ko\] undefined!', output), output

    build_dir, output, status = kbuild(name, tmp_path, symvers)
    assert status == 0, f"build failed:\n{output}"
    assert_no_warnings(output)
    assert "undefined" not in output, output
    if "CONFIG_MODVERSIONS=y" not in (HEADERS / ".config").read_text():
        return  # no CRCs to compare
    data = (build_dir / f"{name}.ko").read_bytes()
    used = []
    for path in symvers:
        for line in path.read_text().splitlines():
            crc, symbol = line.split("\t")[:2]
            if f"\0{symbol}\0".encode() not in data:
                continue  # a symbol the module does not use
            # __versions (Linux 6.1, 64-bit): per symbol used, struct modversion_info,
            # the CRC as an unsigned long, then the name
            entry = int(crc, 16).to_bytes(8, "little") + symbol.encode() + b"\0"
            assert entry in data, f"{name}.ko: no CRC {crc} of {symbol} from {path}"
            used.append(symbol)
    assert used, f"{name}.ko uses no symbol of {', '.join(str(p) for p in symvers)}"
