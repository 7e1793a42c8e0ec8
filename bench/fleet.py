"""Benchmark of the fleet path: the builder alone, the lab through the builder against by
hand, and fleet.yml on four hosts against one (P3). Prints figures side by side.

- builder: the lab inventory's modules for one ABI in the container builder, cold (a
  new artifact store; builder images already made) and cached.
- lab: one fresh lab VM; by hand (copy, make, insmod, one module after the other, as
  bench/lab_vs_hand.py does), then fleet.yml with the same modules, built in the
  container and installed as packages (a new artifact store: the build is included).
  Target: fleet.yml <= 0.3 x by hand.
- p3: fleet.yml on one fresh bare VM, then on four fresh bare VMs, each with a new
  artifact store, in one batch (`kmodlab_fleet_batches: ["100%"]`: the build happens once,
  the installs run in parallel). Target: four hosts <= 1.5 x one. The default batches (a
  canary, 25 %, the rest) run one after the other by design and are not what P3 measures.

    .venv/bin/python bench/fleet.py [--only builder|lab|p3]...
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from boot import cpu_total
from lab_vs_hand import by_hand

from kmodlab import keys
from kmodlab.fleet import builder
from kmodlab.lab import inventory, vms
from kmodlab.manifest import load_all
from kmodlab.selection import resolve_layers

ROOT = Path(__file__).resolve().parents[1]
LAB_VARS = ROOT / "inventory/lab/group_vars/all.yml"


def fleet_yml(inv: Path, artifacts: Path, *args: str) -> tuple[float, str]:
    env = {
        **os.environ,
        "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}",
        "KMODLAB_ARTIFACT_DIR": str(artifacts),
    }
    start = time.monotonic()
    proc = subprocess.run(
        [str(ROOT / ".venv/bin/ansible-playbook"), "-i", str(inv), "fleet.yml", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"fleet.yml failed:\n{proc.stdout[-4000:]}")
    return elapsed, proc.stdout


def bench_builder(work: Path) -> None:
    names = sorted(load_all(ROOT / "modules"))
    records = resolve_layers(ROOT / "modules", [("bench", [{"name": n} for n in names])])
    abi = subprocess.run(
        ["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"linux-image-([0-9][^\s]*-amd64)", abi)
    if match is None:
        raise SystemExit("cannot tell the release's current kernel ABI from apt-cache")
    kernel = match.group(1)
    keys.create(keys.DEFAULT_NAME)  # once: a second call changes nothing
    key = builder.KeyMaterial.from_store(keys.DEFAULT_NAME)
    store = work / "artifacts-builder"
    cold = builder.build(records, [kernel], key, store=store, progress=lambda m: None)
    t0 = time.monotonic()
    warm = builder.build(records, [kernel], key, store=store, progress=lambda m: None)
    cached = time.monotonic() - t0
    t = cold.timings
    print(
        f"builder, {len(records)} modules for {kernel}, cold: {t.get('total', 0):.1f} s "
        f"(compile {t.get('compile', 0):.1f}, sign {t.get('sign', 0):.1f}, "
        f"package {t.get('package', 0):.1f}, images {t.get('image', 0):.1f}); "
        f"compiled {cold.compiled}"
    )
    print(f"builder, cached: {cached:.2f} s; compiled {warm.compiled}, cached {warm.cached}")


def bench_lab(work: Path) -> None:
    lab = vms.Lab(work / "lab-lab")
    (vm,) = vms.up(lab, vms.UpRequest(names=["bench"], profile="lab"), progress=lambda m: None)
    try:
        inv = inventory.write(lab)
        hand = by_hand(lab, vm)
        print(f"lab by hand (copy, make, insmod): {hand:.1f} s", flush=True)
        fleet, _out = fleet_yml(inv, work / "artifacts-lab", "-e", f"@{LAB_VARS}")
        print(f"lab through the builder (fleet.yml, first run): {fleet:.1f} s")
        print(f"fleet.yml / by hand: {fleet / hand:.2f}   (target <= 0.3)")
    finally:
        vms.destroy(lab, ["bench"], progress=lambda m: None)


def bench_p3(work: Path) -> None:
    vars_file = ROOT / "molecule/fleet/vars/fleet.yml"
    one_batch = ("-e", f"@{vars_file}", "-e", '{"kmodlab_fleet_batches": ["100%"]}')
    one_lab = vms.Lab(work / "lab-one")
    vms.up(one_lab, vms.UpRequest(names=["p1"], profile="bare"), progress=lambda m: None)
    try:
        one, _out = fleet_yml(inventory.write(one_lab), work / "artifacts-one", *one_batch)
    finally:
        vms.destroy(one_lab, ["p1"], progress=lambda m: None)
    print(f"fleet.yml, 1 host: {one:.1f} s", flush=True)
    four_lab = vms.Lab(work / "lab-four")
    names = ["p1", "p2", "p3", "p4"]
    vms.up(four_lab, vms.UpRequest(names=names, profile="bare"), progress=lambda m: None)
    try:
        four, out = fleet_yml(inventory.write(four_lab), work / "artifacts-four", *one_batch)
    finally:
        vms.destroy(four_lab, names, progress=lambda m: None)
    hosts = len(re.findall(r"^p[1-4]\s+: ok=", out, re.M))
    print(f"fleet.yml, 4 hosts in one batch ({hosts} hosts in the recap): {four:.1f} s")
    print(f"4 hosts / 1 host: {four / one:.2f}   (target <= 1.5)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", action="append", choices=["builder", "lab", "p3"])
    args = ap.parse_args()
    which = args.only or ["builder", "lab", "p3"]
    work = Path(tempfile.mkdtemp(prefix="kmodlab-bench-fleet-", dir="/tmp"))
    c0 = cpu_total()
    try:
        if "builder" in which:
            bench_builder(work)
        if "lab" in which:
            bench_lab(work)
        if "p3" in which:
            bench_p3(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"machine CPU seconds meanwhile (all processes, QEMU included): {cpu_total() - c0:.0f}")


if __name__ == "__main__":
    main()
