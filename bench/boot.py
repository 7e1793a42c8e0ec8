"""Benchmark: image build (warm, and cold with --cold) and boot-to-SSH under the chosen
accelerator, plain UEFI and Secure Boot, over a few runs; with --enroll, the online MOK
enrolment path (`mokutil --import` in the guest, then `kmodlab vm enroll`: reboot,
MokManager answered over the serial console, SSH again).

Prints, for each run, the seconds and the CPU seconds that *other* processes used
meanwhile (the machine is shared: a figure without that can't be compared), and with
--secure-boot how much slower a Secure Boot boot is than a plain one (goal: within 10 %),
with --enroll the enrolment path against its goal (2 minutes).

    .venv/bin/python bench/boot.py [--runs 3] [--cold] [--secure-boot] [--enroll]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from kmodlab import keys
from kmodlab.lab import image, mokmanager, vms

TICK = os.sysconf("SC_CLK_TCK")


def cpu_total() -> float:
    """CPU seconds used by the whole machine so far (user+nice+system+irq+softirq)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / TICK


def cpu_of(pid: int | None) -> float:
    if not pid:
        return 0.0
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(parts[11]) + int(parts[12])) / TICK


def timed(label: str, func, own_cpu=lambda: 0.0) -> float:  # noqa: ANN001
    c0, own0, t0 = cpu_total(), own_cpu(), time.monotonic()
    r0 = os.times()
    func()
    wall = time.monotonic() - t0
    r1 = os.times()
    mine = (r1.children_user + r1.children_system + r1.user + r1.system) - (
        r0.children_user + r0.children_system + r0.user + r0.system
    )
    others = max(0.0, cpu_total() - c0 - mine - (own_cpu() - own0))
    print(f"{label:<34} {wall:7.1f} s   other processes' CPU: {others:6.1f} s")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cold", action="store_true", help="also time a forced rebuild")
    ap.add_argument("--secure-boot", action="store_true", help="also time Secure Boot boots")
    ap.add_argument("--enroll", action="store_true", help="also time the online MOK enrolment")
    args = ap.parse_args()

    recipe = image.Recipe.for_profile("lab")
    timed("image build (warm, cached)", lambda: image.build(recipe, progress=lambda m: None))
    if args.cold:
        timed("image build (cold, --force)", lambda: image.build(recipe, True, lambda m: None))

    lab = vms.Lab(Path(tempfile.mkdtemp(prefix="kmodlab-bench-", dir="/tmp")))
    modes = [False, True] if args.secure_boot else [False]
    holder: dict[str, vms.Vm] = {}  # the VM booted last
    medians: dict[bool, float] = {}
    for sb in modes:
        walls = []
        holder.clear()
        for i in range(args.runs):
            name = f"b{i}"

            def boot(name: str = name, sb: bool = sb) -> None:
                req = vms.UpRequest(names=[name], secure_boot=sb)
                holder["vm"] = vms.up(lab, req, progress=lambda m: None)[0]

            def qemu_cpu(name: str = name) -> float:
                vm = lab.load().get(name)
                return cpu_of(vm.pid if vm else None)

            label = f"boot to SSH ({'Secure Boot' if sb else 'plain UEFI'}) #{i + 1}"
            walls.append(timed(label, boot, qemu_cpu))
            vms.destroy(lab, [name], progress=lambda m: None)
        accel = holder["vm"].accel if holder else "?"
        medians[sb] = statistics.median(walls)
        print(
            f"  -> {accel}: median {medians[sb]:.1f} s, "
            f"min {min(walls):.1f} s, max {max(walls):.1f} s"
        )
    if len(medians) == 2:
        ratio = medians[True] / medians[False]
        verdict = "within" if ratio <= 1.10 else "NOT within"
        print(f"Secure Boot / plain boot (medians): {ratio:.2f} ({verdict} the 10 % goal)")
    if args.enroll:
        enroll(lab)
    subprocess.run(["rm", "-rf", str(lab.path)], check=False)


def enroll(lab: vms.Lab) -> None:
    """A Secure Boot VM, a throwaway certificate queued with mokutil --import in it, then
    the confirmation a person gives at the console, as `kmodlab vm enroll` does it."""
    store = Path(tempfile.mkdtemp(prefix="kmodlab-bench-keys-", dir="/tmp"))
    pair, _created = keys.create("bench", root=store, bits=2048)
    password = keys.mok_password("bench", root=store)
    vm = vms.up(lab, vms.UpRequest(names=["e0"], secure_boot=True), progress=lambda m: None)[0]
    try:
        ssh = lab.ssh_args(vm)
        der = pair.cert.der_path.read_bytes()
        subprocess.run([*ssh, "cat > /var/tmp/bench.der"], input=der, check=True, timeout=120)
        subprocess.run(
            [*ssh, "sudo mokutil --import /var/tmp/bench.der"],
            input=f"{password}\n{password}\n".encode(),
            check=True,
            timeout=120,
            capture_output=True,
        )
        holder: dict[str, mokmanager.MokResult] = {}

        def confirm() -> None:
            holder["r"] = mokmanager.confirm(lab, vm, password, progress=lambda m: None)

        wall = timed("enrolment (reboot, MokManager, SSH)", confirm)
        result = holder["r"]
        check = subprocess.run(
            [*ssh, "sudo mokutil --test-key /var/tmp/bench.der"],
            capture_output=True,
            text=True,
            check=False,
        )
        enrolled = "is already enrolled" in check.stdout + check.stderr
        print(
            f"  -> confirmed {result.actions}, boot to MokManager "
            f"{result.boot_to_mokmanager or 0:.1f} s, MokManager to SSH "
            f"{result.mokmanager_to_ssh or 0:.1f} s; enrolled: {enrolled}; "
            f"{'within' if wall <= 120 else 'NOT within'} the 2 min goal"
        )
    finally:
        vms.destroy(lab, ["e0"], progress=lambda m: None)
        subprocess.run(["rm", "-rf", str(store)], check=False)


if __name__ == "__main__":
    main()
