"""Benchmark: lab.yml for the lab inventory's modules against the same by hand, one fresh VM.

By hand is the way the guide teaches it, one module after the other: copy the sources,
``make -C /lib/modules/$(uname -r)/build M=...``, ``insmod`` with the lab parameters.
Then the by-hand modules are unloaded and ``lab.yml`` runs twice, as the lab inventory
sets it (its delivery and modules): the first run (build, install, load, verify) and the
idempotent re-run. Prints seconds, the two ratios and
the re-run's changed count, plus other processes' CPU meanwhile.

    .venv/bin/python bench/lab_vs_hand.py [--keep]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

import yaml
from boot import cpu_total

from kmodlab.lab import inventory, vms
from kmodlab.manifest import load_all, load_order

ROOT = Path(__file__).resolve().parents[1]
VM = "bench"
LAB_VARS = ROOT / "inventory/lab/group_vars/all.yml"


def lab_modules() -> list[str]:
    """The modules the lab inventory selects (what lab.yml loads there)."""
    data = yaml.safe_load(LAB_VARS.read_text())
    return [entry["name"] for entry in data["kmodlab_modules"]]


def param_string(params: dict) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, bool):
            return "Y" if v else "N"
        if isinstance(v, list):
            return ",".join(fmt(x) for x in v)
        return str(v)

    return " ".join(f"{k}={shlex.quote(fmt(v))}" for k, v in params.items())


def by_hand(lab: vms.Lab, vm: vms.Vm) -> float:
    manifests = load_all(ROOT / "modules")
    order = load_order(manifests, lab_modules())
    ssh = lab.ssh_args(vm)
    start = time.monotonic()
    for name in order:
        m = manifests[name]
        # a module using another's symbols builds against that one's Module.symvers
        symvers = " ".join(f"$HOME/hand/{dep}/Module.symvers" for dep in m.depends)
        extra = f' KBUILD_EXTRA_SYMBOLS="{symvers}"' if symvers else ""
        tar = subprocess.run(
            ["tar", "-C", str(ROOT / "modules"), "-cf", "-", name], capture_output=True, check=True
        ).stdout
        script = (
            f"set -e; rm -rf ~/hand/{name}; mkdir -p ~/hand; tar -C ~/hand -xf -; "
            f"make -s -C /lib/modules/$(uname -r)/build M=$HOME/hand/{name}{extra} modules; "
            f"sudo insmod ~/hand/{name}/{name}.ko {param_string(m.wanted_params())}"
        )
        subprocess.run([*ssh, script], input=tar, check=True, capture_output=True)
    elapsed = time.monotonic() - start
    unload = " ".join(manifests[n].kmod for n in reversed(order))
    subprocess.run([*ssh, f"sudo rmmod {unload}; rm -rf ~/hand"], check=True)
    return elapsed


def lab_yml(inv: Path) -> tuple[float, str]:
    env = {**os.environ, "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}"}
    start = time.monotonic()
    proc = subprocess.run(
        [
            str(ROOT / ".venv/bin/ansible-playbook"),
            "-i",
            str(inv),
            "lab.yml",
            "-e",
            f"@{ROOT / 'inventory/lab/group_vars/all.yml'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"lab.yml failed:\n{proc.stdout[-4000:]}")
    return elapsed, proc.stdout


def top_tasks(out: str, count: int = 6) -> list[str]:
    """The slowest tasks of a run, from the profile_tasks recap that ansible.cfg enables."""
    recap = out.split("TASKS RECAP", 1)[-1].splitlines()
    rows = [line.strip() for line in recap if re.search(r"-{2,} +[0-9.]+s$", line)]
    return [re.sub(r" -{2,} +", " ", row) for row in rows[:count]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keep", action="store_true", help="keep the VM afterwards")
    args = ap.parse_args()
    lab = vms.Lab(Path(tempfile.mkdtemp(prefix="kmodlab-bench-", dir="/tmp")))
    try:
        (vm,) = vms.up(lab, vms.UpRequest(names=[VM]), progress=lambda m: None)
        inv = inventory.write(lab)
        c0 = cpu_total()
        hand = by_hand(lab, vm)
        print(f"by hand: {hand:.1f} s", flush=True)
        first, first_out = lab_yml(inv)
        print(f"lab.yml first run: {first:.1f} s", flush=True)
        rerun, out = lab_yml(inv)
        others = cpu_total() - c0
        changed = re.search(rf"^{VM}\s*:.*changed=(\d+)", out, re.M)
        print(f"by hand (copy, make, insmod; one after the other): {hand:7.1f} s")
        print(f"lab.yml first run (build, load, verify):          {first:7.1f} s")
        print(
            f"lab.yml re-run:                                   {rerun:7.1f} s, "
            f"changed={changed.group(1) if changed else '?'}"
        )
        print(f"first run / by hand: {first / hand:.2f}   (target <= 1.0)")
        print(f"re-run / first run:  {rerun / first:.1%}  (target <= 10 %)")
        print(f"machine CPU seconds meanwhile (all processes, QEMU included): {others:.0f}")
        for title, text in (("first run", first_out), ("re-run", out)):
            print(f"slowest tasks of the {title}:")
            for row in top_tasks(text):
                print(f"  {row}")
    finally:
        if not args.keep:
            vms.destroy(lab, [VM], progress=lambda m: None)
            subprocess.run(["rm", "-rf", str(lab.path)], check=False)


if __name__ == "__main__":
    main()
