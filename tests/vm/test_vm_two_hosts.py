"""Several hosts in one play: lab.yml against both session VMs at once.

The plain VM keeps the lab selection; the Secure Boot VM gets a host layer (from a
second inventory source, as host_vars would give it) that configures hello-5 with
its own parameter and drops every other module. Its modules are only configured, not
loaded: loading unsigned modules under Secure Boot is the signing stage's work.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from vmhelpers import PLAIN, ROOT, SB, Guest, playbook, recap

LAB_MODULES = sorted(p.parent.name for p in (ROOT / "modules").glob("*/module.yml"))


def test_two_hosts_one_play_with_a_host_layer(converged: Guest, sb: Guest, tmp_path: Path) -> None:
    layer = [{"name": "hello-5", "state": "config", "params": {"myint": 99}}] + [
        {"name": n, "state": "absent"} for n in LAB_MODULES if n != "hello-5"
    ]
    extra = tmp_path / "host_layer.yml"
    extra.write_text(yaml.safe_dump({"all": {"hosts": {SB: {"kmodlab_host_modules": layer}}}}))
    report_dir = tmp_path / "report"
    proc = playbook(
        converged,
        "-i",
        str(ROOT / "inventory/lab"),
        "-i",
        str(extra),
        "-e",
        f"kmod_verify_report_dir={report_dir}",
        limit=f"{PLAIN},{SB}",
    )
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert recap(proc.stdout, PLAIN) is not None and recap(proc.stdout, SB) is not None

    report = json.loads((report_dir / "report.json").read_text())
    hosts = {h["host"]: h for h in report["hosts"]}
    assert set(hosts) == {PLAIN, SB}
    for entry in hosts.values():
        assert {m["name"] for m in entry["modules"]} == set(LAB_MODULES)
        assert not entry["problems"] and not any(m["failures"] for m in entry["modules"])
    states = {m["name"]: m["state"] for m in hosts[SB]["modules"]}
    assert states.pop("hello-5") == "config"
    assert set(states.values()) == {"absent"}
    assert {m["state"] for m in hosts[PLAIN]["modules"]} == {"present"}

    # The host layer reached only the Secure Boot VM.
    assert "myint=99" in sb.run("cat /etc/modprobe.d/hello-5.conf")
    assert "hello_5" not in sb.run("cut -d' ' -f1 /proc/modules").split()
    assert "myint=99" not in converged.run("cat /etc/modprobe.d/hello-5.conf")
