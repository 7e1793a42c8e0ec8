"""Last in the VM tier: `kmodlab vm down` leaves no QEMU process of the lab running."""

from __future__ import annotations

from pathlib import Path

from vmhelpers import Guest, kmodlab

from kmodlab import keys


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
    sb.run(f"echo {sb.vm.name} | sudo tee /var/tmp/kmodlab-down-marker >/dev/null")
    kmodlab("vm", "down", lab=plain.lab)
    assert _lab_qemu_pids(plain.lab.path) == []
    status = kmodlab("vm", "status", "--json", lab=plain.lab).stdout
    assert '"running"' not in status
    assert (plain.lab.path / "vms" / plain.vm.name / "disk.qcow2").exists()


def test_up_after_down_restarts_the_same_vm(sb: Guest, project_key) -> None:
    """`vm up NAME` after `vm down` boots the same disk and UEFI variable store: the
    marker written before is there, and the project key enrolled in it still is (it lives
    only in that VM's variable store), under Secure Boot."""
    kmodlab("vm", "up", sb.vm.name, lab=sb.lab)
    sb.vm = sb.lab.load()[sb.vm.name]
    try:
        assert sb.run("cat /var/tmp/kmodlab-down-marker").strip() == sb.vm.name
        assert "SecureBoot enabled" in sb.run("mokutil --sb-state")
        # (rotated by then: the store's current key, the same name)
        current = keys.load(keys.DEFAULT_NAME).cert
        assert current.keyring_description() in sb.run("sudo cat /proc/keys")
    finally:
        kmodlab("vm", "down", sb.vm.name, lab=sb.lab)
    assert _lab_qemu_pids(sb.lab.path) == []
