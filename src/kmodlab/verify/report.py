"""The verify report: per host x module, built / installed / loaded / params / verified.

The pytest plugin (``kmodlab.verify.plugin``) builds the report from the test
outcomes and writes ``report.json`` (for tools) and ``report.txt`` (the table, for
people) into the report folder. ``render_report(path)`` turns a ``report.json`` back
into a rich renderable; ``render_text(path)`` into plain text.

report.json::

    {"schema": 1, "created": "...", "exitstatus": 1,
     "summary": {"passed": 40, "failed": 2, "skipped": 0, "error": 0, "text": "..."},
     "hosts": [{"host": "lab1", "kernel": "...", "problems": ["..."],
                "modules": [{"name": "hello-5", "version": "1.0.0", "state": "present",
                             "stages": {"built": "pass", "installed": "pass",
                                        "loaded": "pass", "params": "fail",
                                        "verified": "pass"},
                             "failures": [{"test": "test_params", "stage": "params",
                                           "message": "..."}]}]}]}

A stage is "pass" when all its tests passed, "fail" when one failed or errored,
"skip" when they were skipped, "n/a" when no test belongs to it (e.g. built for an
absent module).
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

SCHEMA = 1
STAGES = ("built", "installed", "loaded", "params", "verified")
_RANK = {"n/a": 0, "skip": 1, "pass": 2, "fail": 3}
_STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow", "n/a": "dim"}
_LABEL = {"pass": "ok", "fail": "FAIL", "skip": "skip", "n/a": "-"}


def new_report() -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "exitstatus": None,
        "summary": {"passed": 0, "failed": 0, "skipped": 0, "text": "", "lines": []},
        "hosts": [],
    }


def _host(report: dict[str, Any], name: str) -> dict[str, Any]:
    for entry in report["hosts"]:
        if entry["host"] == name:
            return entry
    entry = {"host": name, "kernel": None, "problems": [], "modules": []}
    report["hosts"].append(entry)
    return entry


def _module(
    host: dict[str, Any], name: str, version: str | None, state: str | None
) -> dict[str, Any]:
    for entry in host["modules"]:
        if entry["name"] == name:
            return entry
    entry = {
        "name": name,
        "version": version,
        "state": state,
        "stages": dict.fromkeys(STAGES, "n/a"),
        "failures": [],
    }
    host["modules"].append(entry)
    return entry


def add_result(
    report: dict[str, Any], meta: dict[str, Any], outcome: str, message: str | None
) -> None:
    """Fold one test outcome ("pass", "fail", "skip") into the report."""
    host = _host(report, meta["host"])
    if meta.get("kernel"):
        host["kernel"] = meta["kernel"]
    counter = {"pass": "passed", "fail": "failed", "skip": "skipped"}[outcome]
    report["summary"][counter] += 1
    if meta.get("module") is None:
        if outcome == "fail":
            host["problems"].append(message or meta["test"])
        return
    mod = _module(host, meta["module"], meta.get("version"), meta.get("state"))
    stage = meta["stage"]
    if _RANK[outcome] > _RANK[mod["stages"][stage]]:
        mod["stages"][stage] = outcome
    if outcome == "fail":
        mod["failures"].append({"test": meta["test"], "stage": stage, "message": message or ""})


def finish(report: dict[str, Any], exitstatus: int) -> dict[str, Any]:
    report["exitstatus"] = int(exitstatus)
    s = report["summary"]
    broken = [
        f"{h['host']}/{m['name']} ({', '.join(k for k, v in m['stages'].items() if v == 'fail')})"
        for h in report["hosts"]
        for m in h["modules"]
        if m["failures"]
    ] + [f"{h['host']} (host)" for h in report["hosts"] if h["problems"]]
    s["text"] = f"{s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped" + (
        f"; failing: {', '.join(broken)}" if broken else ""
    )
    s["lines"] = failure_lines(report)
    return report


def failure_lines(report: dict[str, Any]) -> list[str]:
    """One line per failure: ``host/module [stage] test: first problem``."""
    lines = []
    for host in report.get("hosts", []):
        for problem in host.get("problems", []):
            lines.append(f"{host['host']}: {_first_line(problem)}")
        for mod in host.get("modules", []):
            for failure in mod.get("failures", []):
                lines.append(
                    f"{host['host']}/{mod['name']} [{failure['stage']}] {failure['test']}: "
                    f"{_first_line(failure['message'])}"
                )
    return lines


def write(report: dict[str, Any], directory: str | Path) -> Path:
    """Write report.json and report.txt; return the JSON path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "report.json"
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    (directory / "report.txt").write_text(render_text(report))
    return path


def load(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    if isinstance(source, dict):
        return source
    return json.loads(Path(source).read_text())


def _first_line(message: str) -> str:
    for line in message.splitlines():
        stripped = line.strip().lstrip("- ").strip()
        if stripped and not stripped.endswith(":"):
            return stripped
    return message.strip().splitlines()[0] if message.strip() else ""


def render_report(source: str | Path | dict[str, Any], ascii_only: bool = False) -> RenderableType:
    """A rich renderable of a report.json (a path, or the loaded dict)."""
    report = load(source)
    summary = report.get("summary", {})
    failed = summary.get("failed", 0)
    title = Text.assemble(
        ("kmodlab verify: ", "bold"),
        (f"{summary.get('passed', 0)} passed", "green"),
        ", ",
        (f"{failed} failed", "bold red" if failed else "green"),
        f", {summary.get('skipped', 0)} skipped",
    )
    table = Table(
        title=title, box=box.ASCII if ascii_only else box.SIMPLE_HEAD, title_justify="left"
    )
    table.add_column("host")
    table.add_column("module")
    table.add_column("version")
    table.add_column("state")
    for stage in STAGES:
        table.add_column(stage, justify="center")
    for host in report.get("hosts", []):
        if host.get("problems"):
            table.add_row(
                host["host"],
                Text("(host)", style="italic"),
                "",
                "",
                *[Text("FAIL", style=_STYLE["fail"]) for _ in STAGES],
            )
        for mod in host.get("modules", []):
            cells = [
                Text(
                    _LABEL[mod["stages"].get(stage, "n/a")],
                    style=_STYLE[mod["stages"].get(stage, "n/a")],
                )
                for stage in STAGES
            ]
            table.add_row(
                host["host"], mod["name"], mod.get("version") or "", mod.get("state") or "", *cells
            )
    parts: list[RenderableType] = [table]
    lines = failure_lines(report)
    if lines:
        parts.append(Text("Failures:", style="bold red"))
        parts.extend(Text(line, style="red") for line in lines)
    return Group(*parts)


def render_text(source: str | Path | dict[str, Any], width: int = 120) -> str:
    """The report as plain text (no colours): the table, then one unwrapped line per
    failure (e.g. for Ansible's output, where each line becomes a list item)."""
    report = load(source)
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    table = render_report(report, ascii_only=True)
    assert isinstance(table, Group)
    console.print(table.renderables[0])
    lines = failure_lines(report)
    if lines:
        console.print("Failures:", soft_wrap=True)
        for line in lines:
            console.print(line, soft_wrap=True, markup=False, highlight=False)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"
