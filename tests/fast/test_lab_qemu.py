"""QEMU command lines, firmware, acceleration decision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kmodlab.lab import qemu
from kmodlab.lab.errors import LabError


@pytest.fixture
def ovmf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "OVMF"
    d.mkdir()
    for name in (
        "OVMF_CODE_4M.fd",
        "OVMF_VARS_4M.fd",
        "OVMF_CODE_4M.secboot.fd",
        "OVMF_VARS_4M.ms.fd",
    ):
        (d / name).write_bytes(b"fd")
    monkeypatch.setattr(qemu, "OVMF_DIR", d)
    return d


def spec(tmp_path: Path, **kw: object) -> qemu.VmSpec:
    base = {
        "name": "lab1",
        "overlay": tmp_path / "disk.qcow2",
        "vars_file": tmp_path / "vars.fd",
        "ssh_port": 40022,
        "pubkey": tmp_path / "id.pub",
        "run_dir": tmp_path,
    }
    base.update(kw)
    return qemu.VmSpec(**base)  # type: ignore[arg-type]


def opt(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_plain_uefi(ovmf: Path, tmp_path: Path) -> None:
    args = qemu.command(spec(tmp_path))
    drives = opt(args, "-drive")
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={ovmf}/OVMF_CODE_4M.fd" in drives
    assert f"if=pflash,format=raw,unit=1,file={tmp_path}/vars.fd" in drives
    assert f"if=virtio,format=qcow2,discard=unmap,file={tmp_path}/disk.qcow2" in drives
    assert opt(args, "-machine") == ["q35"]
    assert "driver=cfi.pflash01,property=secure,value=on" not in opt(args, "-global")
    assert "-no-reboot" in args


def test_secure_boot_firmware_and_smm(ovmf: Path, tmp_path: Path) -> None:
    args = qemu.command(spec(tmp_path, secure_boot=True))
    assert opt(args, "-machine") == ["q35,smm=on"]
    assert "driver=cfi.pflash01,property=secure,value=on" in opt(args, "-global")
    assert any("OVMF_CODE_4M.secboot.fd" in d for d in opt(args, "-drive"))


def test_ssh_forwarded_on_loopback_only_and_no_private_ranges(ovmf: Path, tmp_path: Path) -> None:
    args = qemu.command(spec(tmp_path))
    (netdev,) = opt(args, "-netdev")
    assert "hostfwd=tcp:127.0.0.1:40022-:22" in netdev
    assert "hostfwd=tcp::" not in netdev
    assert not any(p in netdev for p in ("10.0.", "192.168.", "172.16."))
    assert "net=100.64.7.0/24" in netdev
    assert netdev.startswith("user,") and "tap" not in netdev and "bridge" not in netdev


def test_fw_cfg_hostname_and_key(ovmf: Path, tmp_path: Path) -> None:
    args = qemu.command(spec(tmp_path))
    assert opt(args, "-fw_cfg") == [
        "name=opt/org.kmodlab/hostname,string=lab1",
        f"name=opt/org.kmodlab/authorized_keys,file={tmp_path}/id.pub",
    ]


@pytest.mark.parametrize(
    ("accel", "expected"),
    [
        ("tcg", ["-accel", "tcg,thread=multi", "-cpu", "max"]),
        ("kvm", ["-accel", "kvm", "-cpu", "host"]),
    ],
)
def test_accel_args(ovmf: Path, tmp_path: Path, accel: str, expected: list[str]) -> None:
    args = qemu.command(spec(tmp_path, accel=accel, memory=1024, cpus=3))
    start = args.index("-accel")
    assert args[start : start + 4] == expected
    assert opt(args, "-m") == ["1024"] and opt(args, "-smp") == ["3"]


def test_missing_ovmf_names_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu, "OVMF_DIR", tmp_path / "nothing")
    with pytest.raises(LabError, match="apt-get install ovmf"):
        qemu.firmware(secure_boot=True)


def test_long_socket_path_is_refused(ovmf: Path, tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 120)
    with pytest.raises(LabError, match="too long"):
        qemu.command(spec(tmp_path, run_dir=deep))


def test_accel_forced_by_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KMODLAB_ACCEL", "tcg")
    assert qemu.choose_accel(tmp_path / "vmlinuz", tmp_path) == ("tcg", "set by KMODLAB_ACCEL")
    monkeypatch.setenv("KMODLAB_ACCEL", "hvf")
    with pytest.raises(LabError, match="unknown accelerator"):
        qemu.choose_accel(tmp_path / "vmlinuz", tmp_path)


def test_no_kvm_device_means_tcg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KMODLAB_ACCEL", raising=False)
    monkeypatch.setattr(qemu, "require_tools", lambda *a: None)
    monkeypatch.setattr(qemu, "_kvm_usable", lambda: False)
    monkeypatch.setattr(qemu, "probe_kvm", lambda k: pytest.fail("must not probe"))
    assert qemu.choose_accel(tmp_path / "vmlinuz", tmp_path)[0] == "tcg"


def test_probe_decides_and_is_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KMODLAB_ACCEL", raising=False)
    monkeypatch.setattr(qemu, "require_tools", lambda *a: None)
    monkeypatch.setattr(qemu, "_kvm_usable", lambda: True)
    monkeypatch.setattr(qemu, "_qemu_version", lambda: "QEMU 7.2")
    monkeypatch.setattr(qemu, "_kvm_rdev", lambda: 2654)
    calls: list[Path] = []

    def probe(kernel: Path) -> tuple[bool, str]:
        calls.append(kernel)
        return False, "a KVM guest did not boot within 15 s"

    monkeypatch.setattr(qemu, "probe_kvm", probe)
    kernel = tmp_path / "image.vmlinuz"
    assert qemu.choose_accel(kernel, tmp_path)[0] == "tcg"
    accel, why = qemu.choose_accel(kernel, tmp_path)
    assert accel == "tcg" and "probed earlier" in why
    assert len(calls) == 1
    cached = json.loads((tmp_path / "accel.json").read_text())
    assert cached["accel"] == "tcg"
    # A different QEMU invalidates the cached decision.
    monkeypatch.setattr(qemu, "_qemu_version", lambda: "QEMU 9.0")
    qemu.choose_accel(kernel, tmp_path)
    assert len(calls) == 2


def test_probe_kvm_times_out_and_stops_qemu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A KVM guest that hangs: the probe returns within its bound and kills QEMU."""
    fake = tmp_path / "qemu-hang"
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setattr(qemu, "QEMU", str(fake))
    usable, reason = qemu.probe_kvm(tmp_path / "vmlinuz", timeout=1.0)
    assert not usable
    assert "did not boot within 1 s" in reason


def test_probe_kvm_success_on_panic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "qemu-panic"
    fake.write_text(
        "#!/bin/sh\nfor a; do case $a in file:*) echo 'Kernel panic - not syncing: VFS' "
        "> ${a#file:};; esac; done\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(qemu, "QEMU", str(fake))
    usable, _reason = qemu.probe_kvm(tmp_path / "vmlinuz", timeout=10)
    assert usable
