"""The verify suite end to end on this machine (``--hosts=local://``).

Nothing is built, installed or loaded here, so every check of a present or config
module must fail: a check that passes here would pass on a broken host. The absent
module is truly absent, so its checks pass. A functional write to a missing device
node must not create the file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kmod_fixtures import MODULES, SELECTION

from kmodlab.selection import resolve
from kmodlab.verify.expectations import write_expectation

pytestmark = pytest.mark.skipif(
    Path("/sys/module/hello_5").exists() or Path("/dev/gadget").exists(),
    reason="this machine has the fixture modules' names in use",
)


def run(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kmodlab.verify", "--report-dir", str(tmp / "report"), *args],
        capture_output=True,
        text=True,
        cwd=tmp,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=300,
        check=False,
    )


def test_everything_fails_where_nothing_is_loaded(tmp_path: Path):
    write_expectation(tmp_path / "exp", "local", os.uname().release, resolve(MODULES, SELECTION))
    proc = run(tmp_path, "--expectations", str(tmp_path / "exp"), "--hosts=local://", "-q")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    (host,) = report["hosts"]
    # the host itself is fine when the checks run as root; otherwise test_host says so
    if os.geteuid() == 0:
        assert host["problems"] == []
    stages = {m["name"]: m["stages"] for m in host["modules"]}
    for name in ("hello-5", "gadget", "memory"):
        assert set(stages[name].values()) <= {"fail", "n/a"}, (name, stages[name])
        assert stages[name]["loaded"] == "fail" and stages[name]["verified"] == "fail"
    assert stages["hello-5"]["params"] == "fail"
    assert set(stages["base"].values()) <= {"fail", "n/a"}
    assert stages["user"] == {
        "built": "n/a",
        "installed": "pass",  # nothing of it in DKMS here
        "signed": "n/a",  # no signing expectations
        "loaded": "pass",
        "params": "n/a",
        "verified": "pass",
    }
    passed = report["summary"]["passed"]
    assert passed == (4 if os.geteuid() == 0 else 3), report["summary"]
    assert not Path("/dev/gadget").exists(), "a functional write created /dev/gadget"
    text = (tmp_path / "report" / "report.txt").read_text()
    assert "local/gadget [verified] test_functional" in text
    assert "Last kernel messages naming" in proc.stdout


def test_a_host_without_expectation_fails(tmp_path: Path):
    (tmp_path / "exp").mkdir()
    proc = run(tmp_path, "--expectations", str(tmp_path / "exp"), "--hosts=local://", "-q")
    assert proc.returncode == 1
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["summary"]["failed"] == 1 and report["summary"]["passed"] == 0
    assert "no expectation file" in report["hosts"][0]["problems"][0]


def test_no_host_fails(tmp_path: Path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    lab1:\n      ansible_connection: local\n")
    (tmp_path / "exp").mkdir()
    proc = run(
        tmp_path,
        "--expectations",
        str(tmp_path / "exp"),
        "--hosts=ansible://nomatch",
        f"--ansible-inventory={inventory}",
        "-q",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["hosts"][0]["host"] == "no-hosts"
    assert "no host to verify" in report["hosts"][0]["problems"][0]
