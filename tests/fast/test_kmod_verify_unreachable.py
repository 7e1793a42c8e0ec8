"""A host SSH cannot reach is "unreachable" in the verify report, never "ok" and never
left out: ssh's own failures told from a failed check, the report's host outcome,
summary and table, and the suite end to end with hosts behind a closed port (one in
the play, one dropped from it before the suite ran) and a dropped host that answers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from kmod_fixtures import MODULES, SELECTION

from kmodlab.selection import resolve
from kmodlab.verify import render_text
from kmodlab.verify import report as rep
from kmodlab.verify.expectations import write_expectation
from kmodlab.verify.observe import UNREACHABLE, ssh_failure

REFUSED = "ssh: connect to host 127.0.0.1 port 9: Connection refused"


def result(rc: int, stderr: str = "") -> SimpleNamespace:
    """A testinfra CommandResult as far as ssh_failure looks at it."""
    return SimpleNamespace(exit_status=rc, stderr=stderr, stdout="")


# -- ssh's failures ----------------------------------------------------------------------


def test_ssh_exit_255_is_unreachable_with_ssh_reason_without_its_noise():
    noisy = (
        "Warning: Permanently added '[127.0.0.1]:9' (ED25519) to the list of known hosts.\r\n"
        "kmodlab@127.0.0.1: Permission denied (publickey).\r\n"
    )
    assert ssh_failure(result(255, noisy)) == "kmodlab@127.0.0.1: Permission denied (publickey)."
    # testinfra's ssh backend raises RuntimeError(result) on 255
    assert ssh_failure(RuntimeError(result(255, REFUSED + "\n"))) == REFUSED
    assert ssh_failure(result(255)) == "ssh exited with status 255 and said nothing"


def test_ansible_unreachable_answer_is_unreachable():
    exc = AssertionError(
        'Unexpected exit code 4 for CommandResult(stdout=\'gone | UNREACHABLE! => {"changed": '
        'false, "msg": "Failed to connect to the host via ssh: ' + REFUSED + '", '
        '"unreachable": true}\')'
    )
    assert ssh_failure(exc) == "Failed to connect to the host via ssh: " + REFUSED


def test_a_command_that_failed_on_the_host_is_not_unreachable():
    assert ssh_failure(result(1, "sudo: a password is required")) is None
    assert ssh_failure(result(0)) is None
    assert ssh_failure(RuntimeError("collector crashed")) is None


# -- the report --------------------------------------------------------------------------


def meta(test: str, stage: str, host: str, module: str | None = None) -> dict:
    return {
        "host": host,
        "module": module,
        "version": "1.0.0" if module else None,
        "state": "present" if module else None,
        "kernel": None,
        "stage": stage,
        "test": test,
        "case": f"{host}/{module}" if module else host,
    }


def unreachable_report() -> dict:
    r = rep.new_report()
    rep.add_result(r, meta("test_host", "host", "lab1"), "pass", None)
    rep.add_result(r, meta("test_loaded", "loaded", "lab1", "hello-5"), "pass", None)
    # dropped from the play before the suite: one host check, probed
    why = f"gone test_host: gone left the play before kmod_verify and cannot be reached ({REFUSED})"
    rep.add_result(r, meta("test_host", "host", "gone"), "unreachable", why)
    # went away before the suite's round trip: every check of it
    lost = f"lab2 test_host: lab2 cannot be reached over SSH ({REFUSED})"
    rep.add_result(r, meta("test_host", "host", "lab2"), "unreachable", lost)
    for test, stage in (("test_dkms_built", "built"), ("test_loaded", "loaded")):
        rep.add_result(r, meta(test, stage, "lab2", "hello-5"), "unreachable", "lab2/hello-5 x")
    return rep.finish(r, 1)


def test_unreachable_is_a_host_outcome_never_ok():
    r = unreachable_report()
    hosts = {h["host"]: h for h in r["hosts"]}
    assert hosts["lab1"]["outcome"] == "pass" and hosts["lab1"]["unreachable"] is None
    assert hosts["gone"]["outcome"] == "unreachable"
    assert hosts["gone"]["unreachable"] == (
        f"gone left the play before kmod_verify and cannot be reached ({REFUSED})"
    )
    assert hosts["gone"]["modules"] == [] and hosts["gone"]["problems"] == []
    assert hosts["lab2"]["outcome"] == "unreachable"
    (mod,) = hosts["lab2"]["modules"]
    assert mod["counts"] == {
        "total": 2,
        "pass": 0,
        "fail": 0,
        "skip": 0,
        "unobservable": 0,
        "unreachable": 2,
    }
    assert mod["stages"]["built"] == "unreachable" and mod["stages"]["params"] == "n/a"
    assert mod["failures"] == []  # one line for the host, not one per check
    s = r["summary"]
    assert s["unreachable_hosts"] == ["gone", "lab2"]
    assert (s["passed"], s["failed"], s["unreachable"]) == (2, 0, 4)
    assert s["text"] == "2 passed, 0 failed, 0 skipped, 4 unreachable; unreachable: gone, lab2"
    assert s["lines"] == [
        f"gone: unreachable: gone left the play before kmod_verify and cannot be reached "
        f"({REFUSED})",
        f"lab2: unreachable: lab2 cannot be reached over SSH ({REFUSED})",
    ]


def test_unreachable_in_the_table(tmp_path: Path):
    lines = render_text(rep.write(unreachable_report(), tmp_path)).splitlines()
    assert lines[0] == "kmodlab verify: 2 passed, 0 failed, 0 skipped, 4 unreachable"
    gone = next(ln for ln in lines if "| gone" in ln)
    assert gone.count("UNREACH") == 6 and "(host)" in gone and " ok " not in gone
    lab2 = next(ln for ln in lines if "| lab2" in ln and "hello-5" in ln)
    cells = [c.strip() for c in lab2.strip("|").split("|")][4:]
    assert cells == ["UNREACH", "-", "-", "UNREACH", "-", "-"]
    assert (
        "Failures:" in lines
        and f"lab2: unreachable: lab2 cannot be reached over SSH ({REFUSED})" in lines
    )


def test_a_failure_outranks_unreachable_in_a_stage():
    r = rep.new_report()
    rep.add_result(r, meta("test_loaded", "loaded", "lab1", "m"), "unreachable", "x")
    rep.add_result(r, {**meta("test_loaded", "loaded", "lab1", "m"), "case": "b"}, "fail", "y")
    assert r["hosts"][0]["modules"][0]["stages"]["loaded"] == "fail"


# -- the suite, end to end -----------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_suite_reports_hosts_it_cannot_reach(tmp_path: Path):
    port = closed_port()
    key = tmp_path / "wrong_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=60
    )
    far = {
        "ansible_connection": "ssh",
        "ansible_host": "127.0.0.1",
        "ansible_port": port,
        "ansible_user": "nobody",
        "ansible_ssh_private_key_file": str(key),
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
    }
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        json.dumps(
            {
                "all": {
                    "hosts": {
                        "live": {"ansible_connection": "local"},
                        "lost": far,  # in the play, gone before the suite's round trip
                        "gone": far,  # dropped from the play (e.g. its facts failed)
                        "failed": {"ansible_connection": "local"},  # dropped, answers
                    }
                }
            }
        )
    )
    config = tmp_path / "ansible.cfg"  # not the repository's (ControlPersist, plugins)
    config.write_text("[defaults]\n")
    exp = tmp_path / "exp"
    write_expectation(exp, "live", os.uname().release, [])
    records = [r for r in resolve(MODULES, SELECTION) if r["state"] == "absent"]
    write_expectation(exp, "lost", os.uname().release, records)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kmodlab.verify",
            "--expectations",
            str(exp),
            "--report-dir",
            str(tmp_path / "report"),
            "--hosts=ansible://live,ansible://lost",
            f"--ansible-inventory={inventory}",
            "--kmodlab-dropped=gone,failed,live",
            "-q",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "ANSIBLE_CONFIG": str(config)},
        timeout=300,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    hosts = {h["host"]: h for h in report["hosts"]}
    assert set(hosts) == {"live", "lost", "gone", "failed"}  # "live" once, not as dropped
    outcomes = {name: h["outcome"] for name, h in hosts.items()}
    if os.geteuid() == 0:  # else test_host of "live" fails: not root
        assert outcomes["live"] == "pass", hosts["live"]
    assert outcomes["lost"] == outcomes["gone"] == "unreachable"
    assert outcomes["failed"] == "fail"
    for name in ("lost", "gone"):
        assert f"port {port}: Connection refused" in hosts[name]["unreachable"]
        assert f"ansible {name} -m ansible.builtin.ping" in hosts[name]["unreachable"]
    assert "left the play before kmod_verify" in hosts["gone"]["unreachable"]
    (user,) = hosts["lost"]["modules"]
    assert user["counts"]["unreachable"] == user["counts"]["total"] == 3
    assert hosts["failed"]["problems"] == [
        "failed test_host: failed left the play before kmod_verify (a task failed on it, or "
        "it could not be reached then: see the play output), so nothing was verified on it: "
        "fix that and re-run"
    ]
    assert sorted(report["summary"]["unreachable_hosts"]) == ["gone", "lost"]
    # the marker the plugin reads is not kept in the messages
    messages = [c["message"] for h in hosts.values() for c in h["checks"] if c["message"]]
    assert messages and not any(m.startswith(UNREACHABLE) for m in messages)
