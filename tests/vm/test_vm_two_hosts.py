"""Several hosts in one play: lab.yml against both session VMs at once, and a third
host that cannot be reached.

The plain VM keeps the lab selection; the Secure Boot VM gets a host layer (from a
second inventory source, as host_vars would give it) that configures hello-5 with
its own parameter and drops every other module. Its modules are only configured, not
loaded: loading unsigned modules under Secure Boot is the signing stage's work.

The second source also lists ``t-gone``: the lab hosts' SSH settings (as the lab's
inventory plugin gives them), but a port nothing listens on and a key the lab never
saw. Ansible drops it from the play at fact gathering; the verify report must list it
as unreachable, and the play must fail for it alone.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path

import yaml
from vmhelpers import LAB_MODULES, PLAIN, ROOT, SB, Guest, playbook, recap

from kmodlab.lab import inventory

GONE = "t-gone"


def closed_port() -> int:
    """A local port nothing listens on (bound once, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gone_host(guest: Guest, tmp_path: Path) -> dict:
    """The lab hosts' variables (the inventory plugin's data), with a closed port and a
    freshly generated key that no guest knows."""
    key = tmp_path / "wrong_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=60
    )
    lab_hosts = inventory.build(guest.lab)["all"]["children"]["lab"]["hosts"]
    return {
        **lab_hosts[PLAIN],
        "ansible_port": closed_port(),
        "ansible_ssh_private_key_file": str(key),
    }


def hello_5_line(guest: Guest) -> str | None:
    """hello_5's line of /proc/modules (its address changes when it is loaded again)."""
    lines = guest.run("sudo cat /proc/modules").splitlines()
    return next((ln for ln in lines if ln.split()[0] == "hello_5"), None)


def failed_tasks(output: str) -> list[tuple[str, str]]:
    """(task header, host) of every task that failed on a host (not unreachable)."""
    failed, task = [], ""
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line.split(" ***")[0]
        match = re.match(r"fatal: \[([^\]]+)\]: FAILED!", line)
        if match:
            failed.append((task, match.group(1).split(" -> ")[0]))
    return failed


def test_two_hosts_one_play_with_a_host_layer_and_one_gone(
    converged: Guest, sb: Guest, tmp_path: Path
) -> None:
    layer = [{"name": "hello-5", "state": "config", "params": {"myint": 99}}] + [
        {"name": n, "state": "absent"} for n in LAB_MODULES if n != "hello-5"
    ]
    gone = gone_host(converged, tmp_path)
    extra = tmp_path / "host_layer.yml"
    extra.write_text(
        yaml.safe_dump({"all": {"hosts": {SB: {"kmodlab_host_modules": layer}, GONE: gone}}})
    )
    report_dir = tmp_path / "report"
    hello_5_before = hello_5_line(sb)
    proc = playbook(
        converged,
        "-i",
        str(ROOT / "inventory/lab"),
        "-i",
        str(extra),
        "-e",
        f"kmod_verify_report_dir={report_dir}",
        limit=f"{PLAIN},{SB},{GONE}",
    )
    # The play fails, for t-gone alone: unreachable at fact gathering, and the verify
    # stage's failure (run once, so every host's recap counts it) names only t-gone.
    assert proc.returncode != 0, proc.stdout[-6000:]
    assert (recap(proc.stdout, GONE) or {}).get("unreachable") == 1, proc.stdout[-6000:]
    assert f"fatal: [{GONE}]: UNREACHABLE!" in proc.stdout
    for host in (PLAIN, SB):
        counters = recap(proc.stdout, host)
        assert counters is not None and counters["unreachable"] == 0, proc.stdout[-6000:]
    tasks = {task for task, _host in failed_tasks(proc.stdout)}
    assert tasks == {
        "TASK [kmodlab.lab.kmod_verify : Fail when a check failed or a host is unreachable]"
    }, (
        tasks,
        proc.stdout[-6000:],
    )

    report = json.loads((report_dir / "report.json").read_text())
    hosts = {h["host"]: h for h in report["hosts"]}
    assert set(hosts) == {PLAIN, SB, GONE}
    summary = report["summary"]
    assert summary["unreachable_hosts"] == [GONE] and summary["failed"] == 0, summary
    (line,) = summary["lines"]
    assert line.startswith(f"{GONE}: unreachable: ") and "Connection refused" in line, line
    assert hosts[GONE]["outcome"] == "unreachable" and hosts[GONE]["modules"] == []
    assert f"port {gone['ansible_port']}" in hosts[GONE]["unreachable"]
    table = (report_dir / "report.txt").read_text()
    row = next(ln for ln in table.splitlines() if f"| {GONE} " in ln)
    assert row.count("UNREACH") == 6 and " ok " not in row, table  # one per stage
    for name in (PLAIN, SB):
        entry = hosts[name]
        assert entry["outcome"] == "pass", entry
        assert {m["name"] for m in entry["modules"]} == set(LAB_MODULES)
        assert not entry["problems"] and not any(m["failures"] for m in entry["modules"])
    states = {m["name"]: m["state"] for m in hosts[SB]["modules"]}
    assert states.pop("hello-5") == "config"
    assert set(states.values()) == {"absent"}
    assert {m["state"] for m in hosts[PLAIN]["modules"]} == {"present"}

    # The host layer reached only the Secure Boot VM; state config left its kernel alone
    # (hello_5 as it ran before the play: loaded by the secureboot scenario, or not).
    assert "myint=99" in sb.run("cat /etc/modprobe.d/hello-5.conf")
    assert hello_5_line(sb) == hello_5_before
    assert "myint=99" not in converged.run("cat /etc/modprobe.d/hello-5.conf")
