"""The lab as users run it, last in the VM tier (alone: the fleet tier's VMs are gone).

molecule default boots a fresh lab VM (``kmodlab vm up``, the lab profile, as
``scripts/setup-lab`` does), converges ``lab.yml`` with the lab inventory (the whole
catalog, every module compiled in the container builder on this machine, signed there
and installed as a package), runs it again to see it change nothing, verifies with the
testinfra suite, and destroys the VM. The builder starts from an empty artifact store,
as on a fresh machine.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import yaml
from vmhelpers import ROOT, VENV, default_reports, molecule

from kmodlab import keys
from kmodlab.lab import image, vms

LAB_VM = "t-lab"
INVENTORY = ROOT / "inventory/lab/group_vars/all.yml"


def test_lab_yml_loads_and_verifies_the_whole_catalog_on_a_fresh_lab_vm(
    test_lab: vms.Lab,
    images: dict[str, image.Image],  # the lab image the scenario's VM boots
    project_key: keys.KeyPair,  # its KMODLAB_KEY_DIR: the builder signs with it
    tmp_path: Path,
) -> None:
    assert LAB_VM not in test_lab.load(), f"{LAB_VM} is left over from an earlier run"
    catalog = sorted(e["name"] for e in yaml.safe_load(INVENTORY.read_text())["kmodlab_modules"])
    env = {
        **os.environ,
        "PATH": f"{VENV}:{os.environ['PATH']}",
        "KMODLAB_LAB_DIR": str(test_lab.path),
        "KMODLAB_MOLECULE_VM": LAB_VM,
        "KMODLAB_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
    }
    start = time.monotonic()
    log = molecule("default", env, test_lab)
    elapsed = time.monotonic() - start
    for stage in ("create", "converge", "idempotence", "verify", "destroy"):
        assert f"default > {stage}: Executed: Successful" in log, stage
    print(f"molecule default: {len(catalog)} modules on a fresh lab VM in {elapsed:.0f} s")

    # The scenario's verify stage: every module of the catalog, every check passed.
    report = json.loads((default_reports() / "report.json").read_text())
    (host,) = report["hosts"]
    assert host["host"] == LAB_VM and host["outcome"] == "pass", host.get("problems")
    assert sorted(m["name"] for m in host["modules"]) == catalog
    assert not [m["name"] for m in host["modules"] if m["failures"]]
    # Delivered as packages: the built and installed checks are the package's.
    assert host["delivery"] == "deb"
    tests = {c["test"] for m in host["modules"] for c in m["checks"]}
    assert {"test_package_built", "test_package_installed"} <= tests, sorted(tests)
    assert not [t for t in tests if t.startswith("test_dkms")], sorted(tests)
    # The interrupt examples' functional checks (a line toggled on the simulated chip,
    # each handler seen running) ran and passed.
    for module in (m for m in host["modules"] if m["name"] in {"intrpt", "bottomhalf"}):
        functional = [c for c in module["checks"] if c["kind"] == "functional"]
        assert functional and all(c["outcome"] == "pass" for c in functional), module
    # The first converge compiled every module once; the idempotence run compiled none.
    compiled = re.findall(r"(\d+) compiled", log)
    assert compiled and int(compiled[0]) == len(catalog), compiled
    assert all(int(n) == 0 for n in compiled[1:]), compiled
    # molecule destroyed the VM it booted.
    assert LAB_VM not in test_lab.load()
