"""Helpers shared by the VM-tier tests."""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kmodlab.lab import vms

ROOT = Path(__file__).resolve().parents[2]
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
