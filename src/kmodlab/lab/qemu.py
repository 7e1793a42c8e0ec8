"""QEMU command lines, firmware choice and the acceleration probe."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from kmodlab.lab.errors import OVMF_PACKAGE, LabError, require_tools

QEMU = "qemu-system-x86_64"
OVMF_DIR = Path(os.environ.get("KMODLAB_OVMF_DIR", "/usr/share/OVMF"))
# QEMU user-mode network. Deliberately not a private (RFC 1918) range: this is the
# shared address space of RFC 6598, only ever seen inside QEMU's own slirp stack.
NET = "100.64.7.0/24"
NET_HOST = "100.64.7.2"
NET_DNS = "100.64.7.3"
FW_CFG_PREFIX = "opt/org.kmodlab"
PROBE_TIMEOUT = 15.0


@dataclass(frozen=True)
class Firmware:
    code: Path
    vars_template: Path
    secure_boot: bool


def firmware(secure_boot: bool) -> Firmware:
    """OVMF with Microsoft's keys enrolled and Secure Boot on, or plain UEFI."""
    if secure_boot:
        fw = Firmware(OVMF_DIR / "OVMF_CODE_4M.secboot.fd", OVMF_DIR / "OVMF_VARS_4M.ms.fd", True)
    else:
        fw = Firmware(OVMF_DIR / "OVMF_CODE_4M.fd", OVMF_DIR / "OVMF_VARS_4M.fd", False)
    for path in (fw.code, fw.vars_template):
        if not path.is_file():
            raise LabError(f"{path} not found: install it with `apt-get install {OVMF_PACKAGE}`")
    return fw


@dataclass(frozen=True)
class VmSpec:
    """Everything QEMU needs to run one lab VM."""

    name: str
    overlay: Path
    vars_file: Path
    ssh_port: int
    pubkey: Path
    run_dir: Path
    memory: int = 2048
    cpus: int = 2
    secure_boot: bool = False
    accel: str = "tcg"
    extra: tuple[str, ...] = field(default=())

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def console_sock(self) -> Path:
        return self.run_dir / "console.sock"

    @property
    def qmp_sock(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "qemu.pid"


def accel_args(accel: str) -> list[str]:
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    if accel == "tcg":
        return ["-accel", "tcg,thread=multi", "-cpu", "max"]
    raise LabError(f"unknown accelerator {accel!r} (kvm or tcg)")


def command(spec: VmSpec) -> list[str]:
    """The QEMU command line for ``spec``: UEFI boot, user-mode net on 127.0.0.1 only."""
    fw = firmware(spec.secure_boot)
    for sock in (spec.console_sock, spec.qmp_sock):
        if len(str(sock)) > 100:
            raise LabError(f"{sock}: path too long for a unix socket; use a shorter lab dir")
    machine = "q35,smm=on" if spec.secure_boot else "q35"
    args = [QEMU, "-name", f"kmodlab-{spec.name}", "-nodefaults", "-machine", machine]
    args += accel_args(spec.accel)
    args += ["-m", str(spec.memory), "-smp", str(spec.cpus)]
    if spec.secure_boot:
        args += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    args += [
        "-drive",
        f"if=pflash,format=raw,unit=0,readonly=on,file={fw.code}",
        "-drive",
        f"if=pflash,format=raw,unit=1,file={spec.vars_file}",
        "-drive",
        f"if=virtio,format=qcow2,discard=unmap,file={spec.overlay}",
        "-netdev",
        (
            f"user,id=net0,net={NET},host={NET_HOST},dns={NET_DNS},"
            f"hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22"
        ),
        "-device",
        "virtio-net-pci,netdev=net0",
        "-device",
        "virtio-rng-pci",
        "-chardev",
        (
            f"socket,id=serial0,path={spec.console_sock},server=on,wait=off,"
            f"logfile={spec.console_log},logappend=on"
        ),
        "-serial",
        "chardev:serial0",
        "-qmp",
        f"unix:{spec.qmp_sock},server=on,wait=off",
        "-display",
        "none",
        "-vga",
        "none",
        # A guest-initiated reboot was seen to hang the firmware under TCG: exit instead,
        # and `kmodlab vm up` restarts the VM on the same disk and variable store.
        "-no-reboot",
        "-pidfile",
        str(spec.pidfile),
        "-fw_cfg",
        f"name={FW_CFG_PREFIX}/hostname,string={spec.name}",
        "-fw_cfg",
        f"name={FW_CFG_PREFIX}/authorized_keys,file={spec.pubkey}",
    ]
    return args + list(spec.extra)


def _kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def _kvm_rdev() -> int:
    return os.stat("/dev/kvm").st_rdev


def _qemu_version() -> str:
    out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


def probe_kvm(kernel: Path, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """Boot ``kernel`` under KVM with no root fs: a working KVM panics within seconds.

    Returns (usable, reason). Bounded by ``timeout``; the probe's QEMU is always stopped.
    """
    with tempfile.TemporaryDirectory(prefix="kmodlab-kvm-") as tmp:
        log = Path(tmp) / "serial.log"
        args = [
            QEMU,
            "-nodefaults",
            "-machine",
            "q35",
            *accel_args("kvm"),
            "-m",
            "256",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            f"file:{log}",
            "-kernel",
            str(kernel),
            "-append",
            "console=ttyS0 panic=-1 loglevel=4",
        ]
        start = time.monotonic()
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return False, f"a KVM guest did not boot within {timeout:.0f} s"
        text = log.read_text(errors="replace") if log.exists() else ""
        if "Kernel panic" in text or "VFS:" in text:
            return True, f"a KVM guest booted in {time.monotonic() - start:.1f} s"
        reason = (err.decode(errors="replace").strip().splitlines() or ["no kernel output"])[-1]
        return False, f"KVM guest failed: {reason}"


def choose_accel(kernel: Path, cache: Path) -> tuple[str, str]:
    """kvm if a guest really boots with it, else tcg; the probe result is cached."""
    forced = os.environ.get("KMODLAB_ACCEL")
    if forced:
        accel_args(forced)
        return forced, "set by KMODLAB_ACCEL"
    require_tools(QEMU)
    if not _kvm_usable():
        return "tcg", "/dev/kvm is not available"
    key = {"qemu": _qemu_version(), "kernel": kernel.name, "kvm": _kvm_rdev()}
    cache_file = cache / "accel.json"
    if cache_file.is_file():
        cached = json.loads(cache_file.read_text())
        if cached.get("key") == key:
            return cached["accel"], f"{cached['reason']} (probed earlier)"
    usable, reason = probe_kvm(kernel)
    accel = "kvm" if usable else "tcg"
    cache.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps({"key": key, "accel": accel, "reason": reason}))
    return accel, reason


def create_overlay(base: Path, overlay: Path) -> None:
    require_tools("qemu-img")
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay)],
        check=True,
        capture_output=True,
    )


def create_vars(secure_boot: bool, dest: Path, mok_certs: list[Path]) -> None:
    """A private copy of the UEFI variable store, with ``mok_certs`` in shim's MokList."""
    fw = firmware(secure_boot)
    if not mok_certs:
        shutil.copyfile(fw.vars_template, dest)
        return
    if importlib.util.find_spec("virt.firmware") is None:
        raise LabError("virt-fw-vars not found: `pip install virt-firmware` (a kmodlab dependency)")
    # Owner GUID of the MokList entries: shim's own vendor GUID.
    owner = "605dab50-e046-4300-abb6-3dd810dd8b23"
    tool = [sys.executable, "-m", "virt.firmware.vars"]
    args = [*tool, "--input", str(fw.vars_template), "--output", str(dest)]
    for cert in mok_certs:
        args += ["--add-mok", owner, str(cert)]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        dest.unlink(missing_ok=True)
        raise LabError(f"could not write MokList into {dest}: {proc.stderr.strip()[-500:]}")
