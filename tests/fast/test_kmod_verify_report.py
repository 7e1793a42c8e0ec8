"""The verify report: outcomes folded per host x module stage, JSON and table."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console, Group
from rich.table import Table

from kmodlab.verify import render_report, render_text
from kmodlab.verify import report as rep


def meta(test, stage, module="hello-5", host="lab1", state="present"):
    return {
        "host": host,
        "module": module,
        "version": "1.0.0",
        "state": state,
        "kernel": "6.1.0-18-amd64",
        "stage": stage,
        "test": test,
    }


def fixture_report() -> dict:
    r = rep.new_report()
    rep.add_result(r, meta("test_dkms_built", "built"), "pass", None)
    rep.add_result(r, meta("test_dkms_installed", "installed"), "pass", None)
    rep.add_result(r, meta("test_module_file", "installed"), "pass", None)
    rep.add_result(r, meta("test_loaded", "loaded"), "pass", None)
    rep.add_result(
        r,
        meta("test_params", "params"),
        "fail",
        "lab1/hello-5:\n  - myint is '5', wanted '42'\n\n"
        "Last kernel messages naming hello-5:\n    x",
    )
    rep.add_result(r, meta("test_param_files", "params"), "pass", None)
    rep.add_result(r, meta("test_persistence", "verified"), "pass", None)
    rep.add_result(r, meta("test_functional", "verified"), "skip", None)
    rep.add_result(
        r, meta("test_not_loaded", "loaded", module="hello-1", state="absent"), "pass", None
    )
    rep.add_result(
        r, {**meta("test_host", "host", module=None), "host": "lab2"}, "fail", "no expectation file"
    )
    return rep.finish(r, 1)


def test_stages_and_summary():
    r = fixture_report()
    lab1, lab2 = r["hosts"]
    hello5, hello1 = lab1["modules"]
    assert hello5["stages"] == {
        "built": "pass",
        "installed": "pass",
        "signed": "n/a",  # no signing expectations
        "loaded": "pass",
        "params": "fail",  # a failure wins over a pass of the same stage
        "verified": "pass",  # a pass wins over a skip
    }
    assert hello1["stages"] == {
        "built": "n/a",
        "installed": "n/a",
        "signed": "n/a",
        "loaded": "pass",
        "params": "n/a",
        "verified": "n/a",
    }
    assert hello5["failures"][0]["test"] == "test_params"
    assert lab2["problems"] == ["no expectation file"] and lab2["modules"] == []
    assert (
        r["summary"]["passed"] == 7 and r["summary"]["failed"] == 2 and r["summary"]["skipped"] == 1
    )
    assert r["summary"]["text"] == (
        "7 passed, 2 failed, 1 skipped; failing: lab1/hello-5 (params), lab2 (host)"
    )
    assert r["summary"]["lines"] == [
        "lab1/hello-5 [params] test_params: myint is '5', wanted '42'",
        "lab2: no expectation file",
    ]
    assert r["exitstatus"] == 1


def test_written_json_and_text(tmp_path: Path):
    path = rep.write(fixture_report(), tmp_path / "out")
    data = json.loads(path.read_text())
    assert data["schema"] == 1 and data["hosts"][0]["host"] == "lab1"
    text = (tmp_path / "out" / "report.txt").read_text()
    assert text == render_text(path)
    lines = text.splitlines()
    assert lines[0] == "kmodlab verify: 7 passed, 2 failed, 1 skipped"
    row = next(ln for ln in lines if "| hello-5" in ln)
    assert [c.strip() for c in row.strip("|").split("|")] == [
        "lab1",
        "hello-5",
        "1.0.0",
        "present",
        "ok",
        "ok",
        "-",  # signed: no signing expectations
        "ok",
        "FAIL",
        "ok",
    ]
    absent = next(ln for ln in lines if "| hello-1" in ln)
    assert [c.strip() for c in absent.strip("|").split("|")][4:] == ["-", "-", "-", "ok", "-", "-"]
    host_row = next(ln for ln in lines if "| lab2" in ln)
    assert host_row.count("FAIL") == 6 and "(host)" in host_row
    assert "Signing:" not in lines
    assert data["hosts"][0]["secure_boot"] is None and data["hosts"][0]["lockdown"] is None
    assert data["hosts"][0]["modules"][0]["signature"] is None
    assert "lab1/hello-5 [params] test_params: myint is '5', wanted '42'" in lines
    assert all(ln == ln.rstrip() for ln in lines)


def test_render_report_is_a_rich_renderable(tmp_path: Path):
    path = rep.write(fixture_report(), tmp_path)
    renderable = render_report(path)
    assert isinstance(renderable, Group)
    assert isinstance(renderable.renderables[0], Table)
    console = Console(
        file=io.StringIO(), record=True, width=140, color_system="truecolor", force_terminal=True
    )
    console.print(renderable)
    styled = console.export_text(styles=True)
    assert "FAIL" in styled
    assert "\x1b[" in styled  # coloured for people
    assert render_report(json.loads(path.read_text())) is not None  # a loaded dict works too


def test_checks_and_counts_per_module():
    r = fixture_report()
    hello5 = r["hosts"][0]["modules"][0]
    assert hello5["counts"] == {
        "total": 8,
        "pass": 6,
        "fail": 1,
        "skip": 1,
        "unobservable": 0,
        "unreachable": 0,
    }
    assert [(c["kind"], c["stage"], c["outcome"]) for c in hello5["checks"]] == [
        ("dkms_built", "built", "pass"),
        ("dkms_installed", "installed", "pass"),
        ("module_file", "installed", "pass"),
        ("loaded", "loaded", "pass"),
        ("param_files", "params", "pass"),
        ("params", "params", "fail"),
        ("functional", "verified", "skip"),
        ("persistence", "verified", "pass"),
    ]
    params = next(c for c in hello5["checks"] if c["test"] == "test_params")
    assert set(params) == {"kind", "test", "name", "id", "stage", "outcome", "message"}
    assert params["message"].startswith("lab1/hello-5:")
    assert r["hosts"][1]["checks"][0]["test"] == "test_host"
    assert r["hosts"][1]["checks"][0]["outcome"] == "fail"


def test_a_test_reported_twice_counts_once_with_its_worst_outcome():
    r = rep.new_report()
    m = {**meta("test_loaded", "loaded"), "case": "lab1/hello-5"}
    rep.add_result(r, m, "pass", None)
    rep.add_result(r, m, "fail", "teardown error")  # e.g. a teardown error after the call
    rep.add_result(r, m, "pass", None)
    (mod,) = r["hosts"][0]["modules"]
    assert mod["counts"] == {
        "total": 1,
        "pass": 0,
        "fail": 1,
        "skip": 0,
        "unobservable": 0,
        "unreachable": 0,
    }
    assert r["summary"]["passed"] == 0 and r["summary"]["failed"] == 1
    assert len(mod["failures"]) == 1 and mod["stages"]["loaded"] == "fail"


def test_unobservable_is_its_own_outcome_in_stages_and_table(tmp_path: Path):
    r = rep.new_report()
    rep.add_result(r, meta("test_param_files", "params"), "pass", None)
    why = "lab1/hello-5 test_params: myshort (perm 0000) cannot be read back"
    rep.add_result(r, meta("test_params", "params"), "unobservable", why)
    functional = {**meta("test_functional", "verified"), "name": "a read", "case": "lab1/h/a"}
    rep.add_result(r, functional, "pass", None)
    rep.finish(r, 0)
    (mod,) = r["hosts"][0]["modules"]
    assert mod["stages"]["params"] == "unobservable"  # above a pass, below a failure
    assert mod["counts"]["unobservable"] == 1 and mod["failures"] == []
    assert mod["checks"][-1] == {
        "kind": "functional",
        "test": "test_functional",
        "name": "a read",
        "id": "lab1/h/a",
        "stage": "verified",
        "outcome": "pass",
        "message": None,
    }
    assert r["summary"]["text"] == "2 passed, 0 failed, 0 skipped, 1 not observable"
    assert r["summary"]["lines"] == []
    text = render_text(rep.write(r, tmp_path))
    lines = text.splitlines()
    assert lines[0] == "kmodlab verify: 2 passed, 0 failed, 0 skipped, 1 not observable"
    row = next(ln for ln in lines if "| hello-5" in ln)
    assert [c.strip() for c in row.strip("|").split("|")][4:] == [
        "-",
        "-",
        "-",
        "-",
        "not obs",
        "ok",
    ]
    assert lines[-2:] == [
        "Not observable:",
        "lab1/hello-5 [params] test_params: myshort (perm 0000) cannot be read back",
    ]
    rep.add_result(r, meta("test_params", "params"), "fail", "worse")
    assert r["hosts"][0]["modules"][0]["stages"]["params"] == "fail"


SIGNING = {
    "signer": "kmodlab module signing",
    "sig_key": "1A:2B:3C",
    "fingerprint": "ab12",
    "trusted": True,
}
SECURE_BOOT = {"efi": True, "secure_boot": True, "setup_mode": False}


def signed_report() -> dict:
    """lab1 with signing expectations: hello-5 signed right, gadget by another key."""
    r = rep.new_report()
    host_facts = {"secure_boot": SECURE_BOOT, "lockdown": "integrity", "signing": SIGNING}
    rep.add_result(r, meta("test_host", "host", module=None), "pass", None, host_facts)
    found = {
        "signer": "kmodlab module signing",
        "sig_key": "1A:2B:3C",
        "sig_hashalgo": "sha256",
        "sig_id": "PKCS#7",
    }
    rep.add_result(r, meta("test_signature", "signed"), "pass", None, {"signature": found})
    rep.add_result(r, meta("test_taint", "signed"), "pass", None)
    rep.add_result(r, meta("test_loaded", "loaded"), "pass", None)
    wrong = {**found, "sig_key": "FF:EE"}
    why = (
        "lab1/gadget test_signature:\n  - module gadget (/lib/x/gadget.ko) is signed by "
        "'kmodlab module signing' with key id FF:EE, expected a signature by ..."
    )
    gadget = meta("test_signature", "signed", module="gadget")
    rep.add_result(r, gadget, "fail", why, {"signature": wrong, "secure_boot": "ignored"})
    # a fact a test did not record is left alone; an unknown one is ignored
    rep.add_result(r, meta("test_loaded", "loaded", module="gadget"), "pass", None, {"x": 1})
    return rep.finish(r, 1)


def test_signing_facts_and_the_signed_column(tmp_path: Path):
    r = signed_report()
    (lab1,) = r["hosts"]
    assert lab1["secure_boot"] == SECURE_BOOT and lab1["lockdown"] == "integrity"
    assert lab1["signing"] == SIGNING
    hello5, gadget = lab1["modules"]
    assert hello5["signature"]["sig_key"] == "1A:2B:3C" and hello5["stages"]["signed"] == "pass"
    assert gadget["signature"]["sig_key"] == "FF:EE" and gadget["stages"]["signed"] == "fail"
    assert "secure_boot" not in gadget and "x" not in gadget
    assert r["summary"]["lines"] == [
        "lab1/gadget [signed] test_signature: module gadget (/lib/x/gadget.ko) is signed by "
        "'kmodlab module signing' with key id FF:EE, expected a signature by ..."
    ]
    path = rep.write(r, tmp_path)
    data = json.loads(path.read_text())
    assert data["hosts"][0]["modules"][1]["signature"] == gadget["signature"]
    lines = (tmp_path / "report.txt").read_text().splitlines()
    header = next(ln for ln in lines if "| host" in ln)
    assert [c.strip() for c in header.strip("|").split("|")][4:] == [
        "built",
        "installed",
        "signed",
        "loaded",
        "params",
        "verified",
    ]
    cells = {
        name: [c.strip() for c in next(ln for ln in lines if f"| {name}" in ln).split("|")]
        for name in ("hello-5", "gadget")
    }
    assert cells["hello-5"][7] == "ok" and cells["gadget"][7] == "FAIL"
    at = lines.index("Signing:")
    assert lines[at + 1] == (
        "lab1: Secure Boot on, lockdown integrity; modules signed by 'kmodlab module "
        "signing' (key id 1A:2B:3C, certificate SHA-256 ab12, trusted by the kernel)"
    )
    assert lines.index("Failures:") > at


def test_signing_lines_say_what_the_host_shows():
    r = signed_report()
    host = r["hosts"][0]
    host.update(secure_boot={"efi": False, "secure_boot": False, "setup_mode": None}, lockdown=None)
    host["signing"] = {**SIGNING, "trusted": False}
    assert rep.signing_lines(r) == [
        "lab1: no UEFI, so no Secure Boot, no lockdown file; modules signed by 'kmodlab "
        "module signing' (key id 1A:2B:3C, certificate SHA-256 ab12, not trusted by the kernel)"
    ]
    host["secure_boot"] = {"efi": True, "secure_boot": None, "setup_mode": True}
    assert rep.signing_lines(r)[0].startswith("lab1: Secure Boot unknown (setup mode), no lock")
    host["secure_boot"] = None  # test_host could not observe the host
    assert rep.signing_lines(r)[0].startswith("lab1: Secure Boot state not observed")
    host["signing"] = None
    assert rep.signing_lines(r) == []


def rollout_report() -> dict:
    """fleet1 delivers by package and has a rollout state; lab1 is a DKMS host."""
    r = rep.new_report()
    good = {
        "gadget": {"version": "0.3.0", "signer": "kmodlab", "when": "2025-01-02T09:00:00Z"},
        "hello-5": {"version": "1.1.0", "signer": "kmodlab", "when": "2025-01-01T10:00:00Z"},
        "user": {"version": None, "signer": None, "when": "2025-01-03T08:00:00Z"},
    }
    rollout = {"good": good, "pending": ["hello-5", "memory"]}
    fleet = {"delivery": "deb", "rollout": rollout}
    rep.add_result(r, meta("test_host", "host", module=None, host="fleet1"), "pass", None, fleet)
    rep.add_result(r, meta("test_package_built", "built", host="fleet1"), "pass", None)
    rep.add_result(r, meta("test_package_installed", "installed", host="fleet1"), "fail", "x")
    lab = {"delivery": "dkms", "rollout": None}
    rep.add_result(r, meta("test_host", "host", module=None), "pass", None, lab)
    rep.add_result(r, meta("test_dkms_built", "built"), "pass", None)
    return rep.finish(r, 1)


def test_delivery_and_rollout_facts(tmp_path: Path):
    r = rollout_report()
    fleet1, lab1 = r["hosts"]
    assert fleet1["delivery"] == "deb" and fleet1["rollout"]["good"]["hello-5"]["version"]
    assert lab1["delivery"] == "dkms" and lab1["rollout"] is None
    # the built and installed columns hold either delivery's checks
    (hello,) = fleet1["modules"]
    assert hello["stages"]["built"] == "pass" and hello["stages"]["installed"] == "fail"
    assert rep.rollout_lines(r) == [
        "fleet1/gadget: 0.3.0 signed by 'kmodlab', since 2025-01-02T09:00:00Z",
        "fleet1/hello-5: 1.1.0 signed by 'kmodlab', since 2025-01-01T10:00:00Z "
        "(a rollout is pending)",
        "fleet1/user: removed, since 2025-01-03T08:00:00Z",
        "fleet1/memory: rolled out, not yet gated (pending)",
    ]
    lines = rep.render_text(r).splitlines()
    at = lines.index("Rollout:")
    assert lines[at + 1].startswith("fleet1/gadget: 0.3.0") and lines.index("Failures:") > at
    fleet1["rollout"] = {"error": "/etc/ansible/facts.d/kmodlab_rollout.fact: cannot read: x"}
    assert rep.rollout_lines(r) == [
        "fleet1: the rollout state cannot be read: /etc/ansible/facts.d/kmodlab_rollout.fact: "
        "cannot read: x"
    ]
    fleet1["rollout"] = None
    assert rep.rollout_lines(r) == [
        "fleet1: no rollout state (packages not installed by a rollout)"
    ]
    # DKMS hosts (and reports from before the field) show no rollout section
    fleet1["delivery"] = None
    assert rep.rollout_lines(r) == [] and "Rollout:" not in rep.render_text(r)
