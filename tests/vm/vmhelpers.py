"""Helpers shared by the VM-tier tests."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from kmodlab.lab import vms

ROOT = Path(__file__).resolve().parents[2]
# The tier's DKMS lab: lab.yml with vars/dkms-lab.yml (twelve modules, each built on the
# VM as its own DKMS package), which every playbook() run passes. The lab inventory's own
# selection, the whole catalog prebuilt, is molecule default's (test_zzzz_lab.py).
DKMS_LAB = ROOT / "vars/dkms-lab.yml"
LAB_MODULES = sorted(
    entry["name"] for entry in yaml.safe_load(DKMS_LAB.read_text())["kmodlab_modules"]
)
VENV = ROOT / ".venv/bin"
PLAIN = "t-plain"
SB = "t-sb"


@dataclass
class Guest:
    lab: vms.Lab
    vm: vms.Vm

    def run(self, command: str, check: bool = True, stdin: bytes | None = None) -> str:
        proc = subprocess.run(
            [*self.lab.ssh_args(self.vm), command],
            input=stdin,
            capture_output=True,
            timeout=600,
            check=False,
        )
        out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
        if check and proc.returncode != 0:
            raise AssertionError(
                f"`{command}` failed on {self.vm.name} ({proc.returncode}):\n{out}"
            )
        return out if check else f"rc={proc.returncode}\n{out}"


def kmodlab(*args: str, lab: vms.Lab, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KMODLAB_LAB_DIR": str(lab.path)}
    proc = subprocess.run(
        [str(ROOT / ".venv/bin/kmodlab"), *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=900,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kmodlab {shlex.join(args)}: {proc.returncode}\n{proc.stderr}")
    return proc


def ansible_env(guest: Guest) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{VENV}:{os.environ['PATH']}",
        "KMODLAB_LAB_DIR": str(guest.lab.path),
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
    }


def playbook(guest: Guest, *args: str, limit: str = PLAIN) -> subprocess.CompletedProcess[str]:
    """Run lab.yml as users do, on one lab VM, with the DKMS lab (``DKMS_LAB``; a later
    ``-e`` in ``args`` wins)."""
    return subprocess.run(
        [str(VENV / "ansible-playbook"), "lab.yml", "--limit", limit, "-e", f"@{DKMS_LAB}", *args],
        cwd=ROOT,
        env=ansible_env(guest),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )


def molecule(scenario: str, env: dict[str, str], lab: vms.Lab) -> str:
    """``molecule test -s SCENARIO`` from the repository; its output (also kept as
    LAB/molecule-SCENARIO.log), after asserting that it passed."""
    proc = subprocess.run(
        [str(VENV / "molecule"), "test", "-s", scenario],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    log = proc.stdout + proc.stderr
    (lab.path / f"molecule-{scenario}.log").write_text(log)
    assert proc.returncode == 0, log[-8000:]
    return log


def default_reports() -> Path:
    """The report folder lab.yml writes to when kmod_verify_report_dir is not given (the
    role's default, from the environment the runs inherit)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local/state")
    return Path(state) / "kmodlab/reports"


def recap(output: str, host: str = PLAIN) -> dict[str, int] | None:
    """The host's PLAY RECAP counters; None when the play never reached the host."""
    for line in output.splitlines():
        if line.startswith(f"{host} ") and "ok=" in line:
            return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
    return None


def assert_not_reached(output: str) -> None:
    """The play failed on the controller: no task ran on the host, nothing changed."""
    counters = recap(output)
    assert counters is not None, output[-3000:]
    assert counters["ok"] == 0 and counters["changed"] == 0, output[-3000:]
    assert "kernel_headers : " not in output


def manifests_with_version(tmp_path: Path, name: str, version: str) -> Path:
    """A copy of modules/ where ``name`` has ``version`` (for kmodlab_manifest_dirs:
    searched first, its modules replace the catalog's)."""
    copy = tmp_path / "modules"
    shutil.copytree(ROOT / "modules", copy)
    path = copy / name / "module.yml"
    data = yaml.safe_load(path.read_text())
    data["version"] = version
    path.write_text(yaml.safe_dump(data))
    return copy


@contextmanager
def env_set(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` for the block, the previous value back afterwards."""
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def reboot(guest: Guest, timeout: float = 300) -> None:
    """Reboot through the firmware: QEMU runs with -no-reboot, so the guest's reboot ends
    the VM, and `kmodlab vm up` starts it again on the same disk and variable store."""
    guest.run("sudo systemctl reboot", check=False)
    deadline = time.monotonic() + timeout
    while vms.process_alive(guest.vm, guest.lab):
        assert time.monotonic() < deadline, f"the guest did not reboot within {timeout:.0f} s"
        time.sleep(2)
    kmodlab("vm", "up", guest.vm.name, lab=guest.lab)
    guest.vm = guest.lab.load()[guest.vm.name]
