"""Lab VMs: state kept in the lab directory, QEMU processes started and stopped by PID."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kmodlab.lab import image as image_mod
from kmodlab.lab import qemu
from kmodlab.lab.errors import LabError, require_tools
from kmodlab.lab.paths import cache_dir

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
BOOT_TIMEOUT = float(os.environ.get("KMODLAB_BOOT_TIMEOUT", "420"))
Progress = Callable[[str], None]


@dataclass
class Vm:
    """One lab VM as recorded in the lab's state file."""

    name: str
    profile: str
    image: str
    kernel: str
    ssh_port: int
    memory: int
    cpus: int
    secure_boot: bool
    accel: str = "tcg"
    enrolled_keys: list[str] = field(default_factory=list)
    pid: int | None = None
    started_at: float | None = None
    boot_seconds: float | None = None
    state: str = "stopped"  # running | stopped | failed

    def run_dir(self, lab: Lab) -> Path:
        return lab.path / "vms" / self.name

    def spec(self, lab: Lab) -> qemu.VmSpec:
        rd = self.run_dir(lab)
        return qemu.VmSpec(
            name=self.name,
            overlay=rd / "disk.qcow2",
            vars_file=rd / "OVMF_VARS.fd",
            ssh_port=self.ssh_port,
            pubkey=lab.pubkey,
            run_dir=rd,
            memory=self.memory,
            cpus=self.cpus,
            secure_boot=self.secure_boot,
            accel=self.accel,
        )


class Lab:
    """A lab directory: ``state.json``, the SSH key pair, one folder per VM."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    @property
    def key(self) -> Path:
        return self.path / "ssh" / "id_ed25519"

    @property
    def pubkey(self) -> Path:
        return self.key.with_suffix(".pub")

    @property
    def inventory_file(self) -> Path:
        return self.path / "inventory.yml"

    @contextlib.contextmanager
    def locked(self) -> Iterator[dict[str, Vm]]:
        """Read-modify-write of the state under an exclusive lock."""
        self.path.mkdir(parents=True, exist_ok=True)
        with (self.path / ".lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            vms = self.load()
            yield vms
            self._save(vms)

    def load(self) -> dict[str, Vm]:
        if not self.state_file.is_file():
            return {}
        raw = json.loads(self.state_file.read_text())
        return {name: Vm(**data) for name, data in raw.get("vms", {}).items()}

    def _save(self, vms: dict[str, Vm]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"vms": {n: asdict(v) for n, v in vms.items()}}, indent=2))
        os.replace(tmp, self.state_file)

    def ensure_key(self) -> None:
        if self.key.is_file():
            return
        require_tools("ssh-keygen")
        self.key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kmodlab-lab"]
        subprocess.run([*keygen, "-f", str(self.key)], check=True)
        self.key.chmod(0o600)

    def ssh_args(self, vm: Vm, *, batch: bool = True) -> list[str]:
        """ssh options for ``vm``: lab key, no host-key pinning (ports are reused), a
        persistent master connection (a new connection to a TCG guest costs ~3 s)."""
        args = [
            "ssh",
            "-i",
            str(self.key),
            "-p",
            str(vm.ssh_port),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={self.path / 'ssh' / '%C'}",
            "-o",
            "ControlPersist=300",
        ]
        if batch:
            args += ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        return [*args, f"{image_mod.GUEST_USER}@127.0.0.1"]


def process_alive(vm: Vm, lab: Lab) -> bool:
    """True if ``vm.pid`` is our QEMU for this VM (not a reused PID)."""
    if not vm.pid:
        return False
    try:
        cmdline = Path(f"/proc/{vm.pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return str(vm.run_dir(lab) / "disk.qcow2") in cmdline


def free_port(taken: set[int]) -> int:
    for _attempt in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken:
            return port
    raise LabError("no free TCP port on 127.0.0.1")


def console_tail(vm: Vm, lab: Lab, lines: int = 30) -> str:
    log = vm.run_dir(lab) / "console.log"
    if not log.exists():
        return "(no console output)"
    text = log.read_text(errors="replace").replace("\r", "")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    return "\n".join(text.splitlines()[-lines:])


def next_names(existing: set[str], count: int) -> list[str]:
    names, i = [], 1
    while len(names) < count:
        if f"lab{i}" not in existing:
            names.append(f"lab{i}")
        i += 1
    return names


def _powerdown(vm: Vm, lab: Lab) -> bool:
    """Press the VM's ACPI power button through QMP; whether QEMU took the request."""
    qmp = vm.run_dir(lab) / "qmp.sock"
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(qmp))
        s.recv(4096)
        s.sendall(b'{"execute":"qmp_capabilities"}\n')
        s.recv(4096)
        s.sendall(b'{"execute":"system_powerdown"}\n')
        return True
    return False


def _wait_gone(vm: Vm, lab: Lab, pid: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if not process_alive(vm, lab):
            _reap_exiting(pid)
            return True
        _reap(pid)
        time.sleep(0.2)
    return not process_alive(vm, lab)


def _poweroff_over_ssh(vms: list[Vm], lab: Lab, timeout: float = 15.0) -> None:
    """Ask each guest to power off cleanly (``systemctl poweroff`` through the lab's SSH
    key and passwordless sudo), all at once. The lab guests do not act on the ACPI power
    button (nothing on their console after QMP's system_powerdown)."""
    procs = []
    for vm in vms:
        argv = [*lab.ssh_args(vm)[:-1], "-o", "ConnectTimeout=10", "--", lab.ssh_args(vm)[-1]]
        with contextlib.suppress(OSError):
            procs.append(
                subprocess.Popen(
                    [*argv, "sudo", "-n", "systemctl", "poweroff"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _stop_pids(vms: list[Vm], lab: Lab, graceful: float = 90.0) -> None:
    """Stop our QEMUs for ``vms``, by PID only: a clean power-off of all of them at once
    (over SSH, and the ACPI power button too), then, for those still running when
    ``graceful`` seconds are up, SIGTERM, then SIGKILL.

    QEMU stopped before its guest synced loses what the guest had not written back (seen:
    a file written just before `vm down` missing after `vm up`)."""
    alive = [(vm, vm.pid) for vm in vms if process_alive(vm, lab) and vm.pid is not None]
    if graceful > 0:
        _poweroff_over_ssh([vm for vm, _pid in alive], lab)
    asked = {vm.name: graceful > 0 and _powerdown(vm, lab) for vm, _pid in alive}
    deadline = time.monotonic() + graceful
    for vm, pid in alive:
        if _wait_gone(vm, lab, pid, deadline if asked[vm.name] else 0.0):
            continue
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if _wait_gone(vm, lab, pid, time.monotonic() + wait):
                break


def _stop_pid(vm: Vm, lab: Lab, graceful: float = 90.0) -> None:
    _stop_pids([vm], lab, graceful)


def _reap_exiting(pid: int, wait: float = 2.0) -> None:
    """Reap ``pid`` if it is our child: a process that no longer shows as our QEMU may
    still be exiting (its /proc cmdline is gone before it is a zombie)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except (ChildProcessError, OSError):
            return
        if done:
            return
        time.sleep(0.02)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _start(vm: Vm, lab: Lab) -> None:
    spec = vm.spec(lab)
    for stale in (spec.console_sock, spec.qmp_sock, spec.pidfile):
        stale.unlink(missing_ok=True)
    with spec.console_log.open("a") as log:
        log.write(f"\n===== kmodlab: starting {vm.name} at {time.ctime()} =====\n")
    stderr = (vm.run_dir(lab) / "qemu.stderr").open("w")
    proc = subprocess.Popen(
        qemu.command(spec),
        stdin=subprocess.DEVNULL,
        stdout=stderr,
        stderr=stderr,
        start_new_session=True,
    )
    vm.pid = proc.pid
    vm.started_at = time.time()
    vm.state = "running"


# Console lines after which a boot can never reach SSH: fail now, not at the timeout.
FATAL_CONSOLE = (
    "(initramfs) ",
    "Kernel panic - not syncing",
    "Security Violation",
    "error: you need to load the kernel first",
    "Verification failed",
)


def _fatal_console_line(vm: Vm, lab: Lab) -> str | None:
    log = vm.run_dir(lab) / "console.log"
    if not log.exists():
        return None
    text = log.read_text(errors="replace")
    text = text[text.rfind("===== kmodlab: starting") :]
    for marker in FATAL_CONSOLE:
        if marker in text:
            return marker.strip()
    return None


def _wait_ssh(vm: Vm, lab: Lab, timeout: float) -> None:
    """Until ``ssh true`` answers; LabError with the console tail otherwise."""
    deadline = time.monotonic() + timeout
    start = time.monotonic()
    while time.monotonic() < deadline:
        if not process_alive(vm, lab):
            err = (vm.run_dir(lab) / "qemu.stderr").read_text(errors="replace").strip()
            raise LabError(
                f"{vm.name}: QEMU exited during boot{': ' + err[-400:] if err else ''}\n"
                f"--- console tail ---\n{console_tail(vm, lab)}"
            )
        fatal = _fatal_console_line(vm, lab)
        if fatal:
            raise LabError(
                f"{vm.name}: boot failed ({fatal})\n--- console tail ---\n{console_tail(vm, lab)}"
            )
        try:
            with socket.create_connection(("127.0.0.1", vm.ssh_port), timeout=5) as s:
                s.settimeout(10)
                banner = s.recv(64)
        except OSError:
            banner = b""
        if banner.startswith(b"SSH-"):
            proc = subprocess.run(
                [*lab.ssh_args(vm), "true"], capture_output=True, timeout=60, check=False
            )
            if proc.returncode == 0:
                vm.boot_seconds = round(time.monotonic() - start, 1)
                return
        time.sleep(2)
    raise LabError(
        f"{vm.name}: no SSH within {timeout:.0f} s\n--- console tail ---\n{console_tail(vm, lab)}"
    )


DEFAULT_PROFILE = "lab"


@dataclass
class UpRequest:
    names: list[str]
    # None: a stopped VM restarts with its own profile, a new one gets DEFAULT_PROFILE.
    profile: str | None = None
    # New VMs: the image pinned to this kernel ABI (`kmodlab image build --kernel`).
    kernel: str | None = None
    secure_boot: bool = False
    memory: int = 2048
    cpus: int = 2
    enroll_keys: list[Path] = field(default_factory=list)
    # The project signing certificate (DER), enrolled beside enroll_keys in new Secure
    # Boot VMs; a VM that exists keeps its variable store.
    project_key: Path | None = None


def up(lab: Lab, req: UpRequest, progress: Progress = print) -> list[Vm]:
    """Create (or restart stopped) VMs and boot them in parallel until SSH answers."""
    for name in req.names:
        if not NAME_RE.match(name):
            raise LabError(f"invalid VM name {name!r}: lowercase letters, digits and '-'")
    if len(set(req.names)) != len(req.names):
        raise LabError("the same VM name is given twice")
    for cert in req.enroll_keys:
        if not cert.is_file():
            raise LabError(f"--enroll-key {cert}: no such file")
    if req.project_key is not None and not req.project_key.is_file():
        raise LabError(f"project key certificate {req.project_key}: no such file")
    if req.enroll_keys and not req.secure_boot:
        raise LabError("--enroll-key needs --secure-boot (MOKs are shim's, under Secure Boot)")
    require_tools(qemu.QEMU, "qemu-img", "ssh")
    qemu.firmware(req.secure_boot)

    with lab.locked() as vms:
        lab.ensure_key()
        for name in req.names:
            if name in vms and process_alive(vms[name], lab):
                raise LabError(f"VM {name!r} is already running (kmodlab vm down {name} first)")
        # A stopped VM restarts on its own disk (whose backing image it records, pinned
        # kernel or not); only new VMs need the current image of their profile.
        existing = {n for n in req.names if n in vms and vms[n].state != "failed"}
        profiles = {n: req.profile or DEFAULT_PROFILE for n in req.names if n not in existing}
        images = {
            p: image_mod.require_image(p, kernel=req.kernel) for p in sorted(set(profiles.values()))
        }
        probe = (
            next(iter(images.values())).vmlinuz
            if images
            else Path(vms[req.names[0]].image).with_suffix(".vmlinuz")
        )
        accel, why = qemu.choose_accel(probe, cache_dir())
        progress(f"acceleration: {accel} ({why})")
        taken = {v.ssh_port for v in vms.values()}
        enrolled = [*req.enroll_keys, *([req.project_key] if req.project_key else [])]
        booting: list[Vm] = []
        for name in req.names:
            vm = vms.get(name)
            if vm is not None and vm.state != "failed":
                if (
                    req.enroll_keys
                    or (req.profile and vm.profile != req.profile)
                    or (req.kernel and vm.kernel != req.kernel)
                ):
                    raise LabError(
                        f"VM {name!r} exists (profile {vm.profile}); restart it as it is with "
                        f"`kmodlab vm up {name}`, or `kmodlab vm destroy {name}` first"
                    )
                vm.accel = accel
                progress(f"{name}: restarting on its existing disk")
            else:
                img = images[profiles[name]]
                port = free_port(taken)
                taken.add(port)
                vm = Vm(
                    name=name,
                    profile=profiles[name],
                    image=str(img.path),
                    kernel=img.kernel,
                    ssh_port=port,
                    memory=req.memory,
                    cpus=req.cpus,
                    secure_boot=req.secure_boot,
                    accel=accel,
                    enrolled_keys=[str(p.resolve()) for p in enrolled],
                )
                rd = vm.run_dir(lab)
                rd.mkdir(parents=True, exist_ok=True)
                (rd / "console.log").unlink(missing_ok=True)
                qemu.create_overlay(img.path, rd / "disk.qcow2")
                qemu.create_vars(req.secure_boot, rd / "OVMF_VARS.fd", enrolled)
                vms[name] = vm
            _start(vm, lab)
            progress(f"{name}: QEMU pid {vm.pid}, ssh on 127.0.0.1:{vm.ssh_port}")
            booting.append(vm)

    errors: dict[str, LabError] = {}

    def wait(vm: Vm) -> None:
        try:
            _wait_ssh(vm, lab, BOOT_TIMEOUT)
            progress(f"{vm.name}: SSH up after {vm.boot_seconds} s")
        except LabError as exc:
            errors[vm.name] = exc
            _stop_pid(vm, lab, graceful=0)
            vm.state = "failed"

    threads = [threading.Thread(target=wait, args=(vm,)) for vm in booting]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with lab.locked() as vms:
        for vm in booting:
            vms[vm.name] = vm
    if errors:
        raise LabError("\n".join(str(e) for e in errors.values()))
    return booting


def select(lab: Lab, vms: dict[str, Vm], names: list[str], all_: bool = True) -> list[Vm]:
    if not names:
        return list(vms.values()) if all_ else []
    unknown = [n for n in names if n not in vms]
    if unknown:
        known = ", ".join(sorted(vms)) or "none"
        raise LabError(f"no such VM: {', '.join(unknown)} (VMs of this lab: {known})")
    return [vms[n] for n in names]


def down(lab: Lab, names: list[str], progress: Progress = print) -> list[str]:
    """Stop the named (default: all) VMs of this lab; keep their disks."""
    stopped = []
    with lab.locked() as vms:
        chosen = select(lab, vms, names)
        running = [vm for vm in chosen if process_alive(vm, lab)]
        _stop_pids(running, lab)
        for vm in chosen:
            if vm in running:
                stopped.append(vm.name)
                progress(f"{vm.name}: stopped")
            vm.pid = None
            if vm.state == "running":
                vm.state = "stopped"
    return stopped


def destroy(lab: Lab, names: list[str], progress: Progress = print) -> None:
    """Stop and delete the named (default: all) VMs: disk overlay, UEFI variables, logs."""
    import shutil

    with lab.locked() as vms:
        for vm in select(lab, vms, names):
            _stop_pid(vm, lab, graceful=0)
            shutil.rmtree(vm.run_dir(lab), ignore_errors=True)
            del vms[vm.name]
            progress(f"{vm.name}: destroyed")


def start_stopped(lab: Lab, name: str) -> Vm:
    """Start the stopped VM ``name`` again on its disk and UEFI variable store, recorded
    as running, and return at once: for a caller that watches the boot on the serial
    console (MokManager) and then waits for SSH itself."""
    with lab.locked() as vms:
        vm = select(lab, vms, [name])[0]
        if process_alive(vm, lab):
            raise LabError(f"VM {name!r} is already running")
        if vm.state == "failed":
            raise LabError(f"VM {name!r} failed to boot: `kmodlab vm up {name}` first")
        _start(vm, lab)
    return vm


def running(lab: Lab) -> list[Vm]:
    return [vm for vm in lab.load().values() if process_alive(vm, lab)]


def require_running(lab: Lab, name: str | None) -> Vm:
    vms = lab.load()
    if name is None:
        live = [vm for vm in vms.values() if process_alive(vm, lab)]
        if len(live) != 1:
            raise LabError(
                "name the VM: "
                + (", ".join(v.name for v in live) if live else "no VM of this lab is running")
            )
        return live[0]
    if name not in vms:
        raise LabError(f"no such VM: {name} (VMs: {', '.join(sorted(vms)) or 'none'})")
    vm = vms[name]
    if not process_alive(vm, lab):
        raise LabError(f"VM {name} is not running: start it with `kmodlab vm up {name}`")
    return vm


def guest_facts(lab: Lab, vm: Vm) -> dict[str, str]:
    """Kernel release, uptime and Secure Boot state read from a running guest."""
    script = "uname -r; cut -d' ' -f1 /proc/uptime; mokutil --sb-state 2>&1 | head -1"
    try:
        proc = subprocess.run(
            [*lab.ssh_args(vm), script], capture_output=True, text=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired:
        return {}
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or len(lines) < 3:
        return {}
    return {"kernel": lines[0], "uptime": lines[1], "secure_boot": lines[2]}
