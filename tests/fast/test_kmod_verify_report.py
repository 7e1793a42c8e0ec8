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
        "loaded": "pass",
        "params": "fail",  # a failure wins over a pass of the same stage
        "verified": "pass",  # a pass wins over a skip
    }
    assert hello1["stages"] == {
        "built": "n/a",
        "installed": "n/a",
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
        "ok",
        "FAIL",
        "ok",
    ]
    absent = next(ln for ln in lines if "| hello-1" in ln)
    assert [c.strip() for c in absent.strip("|").split("|")][4:] == ["-", "-", "ok", "-", "-"]
    host_row = next(ln for ln in lines if "| lab2" in ln)
    assert host_row.count("FAIL") == 5 and "(host)" in host_row
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
    assert [c.strip() for c in row.strip("|").split("|")][4:] == ["-", "-", "-", "not obs", "ok"]
    assert lines[-2:] == [
        "Not observable:",
        "lab1/hello-5 [params] test_params: myshort (perm 0000) cannot be read back",
    ]
    rep.add_result(r, meta("test_params", "params"), "fail", "worse")
    assert r["hosts"][0]["modules"][0]["stages"]["params"] == "fail"
