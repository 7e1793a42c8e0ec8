"""Helpers shared by the VM-tier tests."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from kmodlab.lab import vms

ROOT = Path(__file__).resolve().parents[2]
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
    """Run lab.yml as users do, on one lab VM."""
    return subprocess.run(
        [str(VENV / "ansible-playbook"), "lab.yml", "--limit", limit, *args],
        cwd=ROOT,
        env=ansible_env(guest),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )


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
    """A copy of modules/ (for kmodlab_manifest_dir) where ``name`` has ``version``."""
    copy = tmp_path / "modules"
    shutil.copytree(ROOT / "modules", copy)
    path = copy / name / "module.yml"
    data = yaml.safe_load(path.read_text())
    data["version"] = version
    path.write_text(yaml.safe_dump(data))
    return copy
