"""Last in the VM tier: `kmodlab vm down` leaves no QEMU process of the lab running."""

from __future__ import annotations

from pathlib import Path

from vmhelpers import Guest, kmodlab


def _lab_qemu_pids(lab_path: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("qemu-system") and str(lab_path) in cmd:
            pids.append(int(proc.name))
    return pids


def test_down_stops_every_vm_of_the_lab(plain: Guest, sb: Guest) -> None:
    assert _lab_qemu_pids(plain.lab.path), "the VMs should be running before down"
    kmodlab("vm", "down", lab=plain.lab)
    assert _lab_qemu_pids(plain.lab.path) == []
    status = kmodlab("vm", "status", "--json", lab=plain.lab).stdout
    assert '"running"' not in status
    # Disks are kept: up restarts on them (not exercised here to save a boot).
    assert (plain.lab.path / "vms" / plain.vm.name / "disk.qcow2").exists()
