"""DKMS packages on a real kernel: a version bump and a downgrade of one lab module
through lab.yml, each verified by the play's own verify stage, the lab converged again
at the end (its removal, state absent, is in test_depends.py with the symbol pair).
Installing and pruning are two steps: with dkms_module_prune=false the replaced version
stays registered and built (a rollback target), and a later run prunes it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from vmhelpers import ROOT, Guest, manifests_with_version, playbook

from kmodlab.manifest import load_manifest

# A failure halfway leaves the lab converged again for the tests after it.
pytestmark = pytest.mark.usefixtures("restores_lab")

MOD = load_manifest(ROOT / "modules/hello-3")
DEFAULT_REPORTS = (
    Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local/state") / "kmodlab/reports"
)
BUMPED = MOD.version + ".1"


def _dkms(guest: Guest) -> str:
    return guest.run(f"sudo dkms status -m {MOD.name}")


def _sources(guest: Guest) -> list[str]:
    return guest.run(f"ls -d /usr/src/{MOD.name}-* 2>/dev/null || true").split()


def _report(report_dir: Path) -> dict:
    report = json.loads((report_dir / "report.json").read_text())
    (host,) = report["hosts"]
    return {m["name"]: m for m in host["modules"]}


def test_version_bump_downgrade_and_removal(converged: Guest, tmp_path: Path) -> None:
    kernel = converged.run("uname -r").strip()
    copy = manifests_with_version(tmp_path, MOD.name, BUMPED)

    # Bump without pruning: the new version is built and installed and loaded; the old one
    # stays registered and built, with its sources, ready to be installed again.
    proc = playbook(
        converged,
        "-e",
        json.dumps({"kmodlab_manifest_dirs": [str(copy)]}),
        "-e",
        json.dumps({"dkms_module_prune": False}),
        "-e",
        f"kmod_verify_report_dir={tmp_path}/kept",
    )
    assert proc.returncode == 0, proc.stdout[-5000:]
    status = _dkms(converged)
    assert f"{MOD.name}/{BUMPED}, {kernel}, x86_64: installed" in status, status
    assert f"{MOD.name}/{MOD.version}, {kernel}, x86_64: built" in status, status
    assert _sources(converged) == sorted(
        [f"/usr/src/{MOD.name}-{MOD.version}", f"/usr/src/{MOD.name}-{BUMPED}"]
    )
    assert _report(tmp_path / "kept")[MOD.name]["version"] == BUMPED
    assert MOD.kmod in converged.run("cut -d' ' -f1 /proc/modules").split()

    # The next run prunes: the old version is removed from DKMS with its sources (the
    # package stage alone is enough).
    dirs = json.dumps({"kmodlab_manifest_dirs": [str(copy)]})
    proc = playbook(converged, "-e", dirs, "--tags", "dkms_module")
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert "TASK [kmodlab.lab.dkms_module : Remove the versions the installed ones replace]" in (
        proc.stdout
    )
    status = _dkms(converged)
    assert f"{MOD.name}/{BUMPED}, {kernel}, x86_64: installed" in status, status
    assert f"{MOD.name}/{MOD.version}," not in status, status
    assert _sources(converged) == [f"/usr/src/{MOD.name}-{BUMPED}"]

    # Downgrade: back to the repository's manifest, exactly the lab as users run it (the
    # default report folder too: its expectation files are the converged lab's again,
    # which the check-mode test in test_faults.py compares against).
    proc = playbook(converged)
    assert proc.returncode == 0, proc.stdout[-5000:]
    status = _dkms(converged)
    assert f"{MOD.name}/{MOD.version}, {kernel}" in status and BUMPED not in status, status
    assert _sources(converged) == [f"/usr/src/{MOD.name}-{MOD.version}"]
    assert _report(DEFAULT_REPORTS)[MOD.name]["version"] == MOD.version

    # The downgrade ran the lab as the inventory has it: converged again. (The removal,
    # state absent, is proven with the symbol pair in test_depends.py.)
    assert MOD.kmod in converged.run("cut -d' ' -f1 /proc/modules").split()
