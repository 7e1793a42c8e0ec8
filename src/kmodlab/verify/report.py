"""The verify report: per host x module, built / installed / signed / loaded / params /
verified.

The pytest plugin (``kmodlab.verify.plugin``) builds the report from the test
outcomes and writes ``report.json`` (for tools) and ``report.txt`` (the table, for
people) into the report folder. ``render_report(path)`` turns a ``report.json`` back
into a rich renderable; ``render_text(path)`` into plain text.

report.json (schema 1; roles/kmod_verify/README.md documents it too)::

    {"schema": 1, "created": "...", "exitstatus": 1,
     "summary": {"passed": 40, "failed": 2, "skipped": 0, "unobservable": 1,
                 "unreachable": 0, "unreachable_hosts": [],
                 "text": "...", "lines": ["host/module [stage] test: problem", ...]},
     "hosts": [{"host": "lab1", "kernel": "...", "outcome": "fail",
                "unreachable": null, "problems": ["..."],
                "secure_boot": {"efi": true, "secure_boot": true, "setup_mode": false},
                "lockdown": "integrity",
                "signing": {"signer": "...", "sig_key": "1A:2B:...",
                            "fingerprint": "...", "trusted": true},
                "delivery": "deb",
                "rollout": {"good": {"hello-5": {"version": "1.1.0", "signer": "...",
                                                 "when": "2025-01-01T10:00:00Z"}},
                            "pending": []},
                "checks": [<the host's checks: test_host>],
                "modules": [{"name": "hello-5", "version": "1.0.0", "state": "present",
                             "stages": {"built": "pass", "installed": "pass",
                                        "signed": "pass", "loaded": "pass",
                                        "params": "fail", "verified": "pass"},
                             "signature": {"signer": "...", "sig_key": "1A:2B:...",
                                           "sig_hashalgo": "sha256",
                                           "sig_id": "PKCS#7"},
                             "counts": {"total": 11, "pass": 9, "fail": 1, "skip": 0,
                                        "unobservable": 1, "unreachable": 0},
                             "checks": [{"kind": "params", "test": "test_params",
                                         "name": null, "id": "lab1/hello-5",
                                         "stage": "params", "outcome": "fail",
                                         "message": "..."}, ...],
                             "failures": [{"test": "test_params", "stage": "params",
                                           "message": "..."}]}]}]}

Every test of the suite that ran is one entry of its module's (or host's) ``checks``,
with its final outcome: "pass", "fail" (failed or errored), "skip" (skipped by
pytest), "unobservable" (the fact cannot be seen on the host: neither passed nor
failed, the exit status stays 0) or "unreachable" (SSH could not reach the host, so
nothing was seen: the pytest test failed, with a message starting with
``observe.UNREACHABLE``). ``kind`` is the test's name without ``test_``; ``name`` the
functional check's name for ``kind`` "functional", else null. ``counts`` counts
``checks`` by outcome. A stage is "fail" when one of its tests failed, else
"unreachable", "unobservable", "pass" when one of its tests had that outcome (in that
order), "skip" when they were all skipped, "n/a" when no test belongs to it (e.g.
built for an absent module).

What the tests saw besides their outcome comes as facts they record
(``record_property(FACTS, {...})``): a host's ``secure_boot`` (``efi``: booted through
UEFI, ``secure_boot`` and ``setup_mode``: the firmware's variables, null when they cannot
be read) and ``lockdown`` (the kernel's lockdown mode, null without the file), recorded
by test_host for every host it observed, and ``signing`` (the expectation's signing
mapping, null without one), ``delivery`` (how its modules arrive: "dkms" or "deb",
recorded even when the host cannot be observed) and ``rollout`` (on a "deb" host, what
its rollout state fact says: per module the version, signer and time of the last set
that passed its health gate (``good``), and the modules of a rollout not yet gated
(``pending``); ``{"error"}`` when the fact cannot be read, null without it); a module's
``signature`` (what modinfo shows of its installed
file's signature: signer, sig_key, sig_hashalgo, sig_id, all null when unsigned),
recorded by test_signature (so null without signing expectations). The stage "signed"
holds test_signature and test_taint: "n/a" (shown as ``-``) without signing
expectations. The stages "built" and "installed" hold the DKMS checks on a "dkms" host
and the package checks on a "deb" host.

A host's ``outcome`` is "unreachable" when SSH could not reach it (``unreachable``
then holds ssh's reason; a host dropped from the play before the suite ran is probed
and reported so too), else "fail" when one of its checks failed, else "pass".
``summary.unreachable_hosts`` lists the unreachable hosts.
"""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

SCHEMA = 1
STAGES = ("built", "installed", "signed", "loaded", "params", "verified")
# The user property under which a test records facts for the report, and the facts kept.
FACTS = "kmodlab_facts"
HOST_FACTS = ("secure_boot", "lockdown", "signing", "delivery", "rollout")
MODULE_FACTS = ("signature",)
OUTCOMES = ("pass", "fail", "skip", "unobservable", "unreachable")
_RANK = {"n/a": 0, "skip": 1, "pass": 2, "unobservable": 3, "unreachable": 4, "fail": 5}
_STYLE = {
    "pass": "green",
    "fail": "bold red",
    "skip": "yellow",
    "unobservable": "magenta",
    "unreachable": "bold red",
    "n/a": "dim",
}
_LABEL = {
    "pass": "ok",
    "fail": "FAIL",
    "skip": "skip",
    "unobservable": "not obs",
    "unreachable": "UNREACH",
    "n/a": "-",
}
_ORIGIN = re.compile(r"^\S+ test_[a-z_]+: ")
_COUNTER = {
    "pass": "passed",
    "fail": "failed",
    "skip": "skipped",
    "unobservable": "unobservable",
    "unreachable": "unreachable",
}


def new_report() -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "exitstatus": None,
        "summary": {
            "passed": 0,
            "failed": 0,
            "skipped": 0,
            "unobservable": 0,
            "unreachable": 0,
            "unreachable_hosts": [],
            "text": "",
            "lines": [],
        },
        "hosts": [],
    }


def _host(report: dict[str, Any], name: str) -> dict[str, Any]:
    for entry in report["hosts"]:
        if entry["host"] == name:
            return entry
    entry = {
        "host": name,
        "kernel": None,
        "outcome": None,
        "unreachable": None,
        "problems": [],
        **dict.fromkeys(HOST_FACTS),
        "checks": [],
        "modules": [],
    }
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
        **dict.fromkeys(MODULE_FACTS),
        "counts": {"total": 0, **dict.fromkeys(OUTCOMES, 0)},
        "checks": [],
        "failures": [],
    }
    host["modules"].append(entry)
    return entry


def _record_check(
    report: dict[str, Any],
    owner: dict[str, Any],
    meta: dict[str, Any],
    outcome: str,
    message: str | None,
) -> bool:
    """Add or update the check entry of one test; False when its outcome stays."""
    test = meta["test"]
    entry = next(
        (c for c in owner["checks"] if c["test"] == test and c["id"] == meta.get("case")), None
    )
    if entry is None:
        entry = {
            "kind": meta.get("kind") or test.removeprefix("test_"),
            "test": test,
            "name": meta.get("name"),
            "id": meta.get("case"),
            "stage": meta["stage"],
            "outcome": outcome,
            "message": message,
        }
        owner["checks"].append(entry)
    elif _RANK[outcome] > _RANK[entry["outcome"]]:
        report["summary"][_COUNTER[entry["outcome"]]] -= 1
        if "counts" in owner:
            owner["counts"][entry["outcome"]] -= 1
            owner["counts"]["total"] -= 1
        entry.update(outcome=outcome, message=message)
    else:
        return False
    report["summary"][_COUNTER[outcome]] += 1
    if "counts" in owner:
        owner["counts"][outcome] += 1
        owner["counts"]["total"] += 1
    return True


def add_result(
    report: dict[str, Any],
    meta: dict[str, Any],
    outcome: str,
    message: str | None,
    facts: dict[str, Any] | None = None,
) -> None:
    """Fold one test outcome ("pass", "fail", "skip", "unobservable", "unreachable")
    into the report, with the facts the test recorded (``HOST_FACTS`` of a host test,
    ``MODULE_FACTS`` of a module test; others are ignored).

    A test reported again (a teardown error after its call) counts once, with its
    worst outcome. The first "unreachable" of a host gives its reason."""
    host = _host(report, meta["host"])
    if meta.get("kernel"):
        host["kernel"] = meta["kernel"]
    if outcome == "unreachable" and not host.get("unreachable"):
        host["unreachable"] = _first_line(message or "") or "SSH could not reach the host"
    if meta.get("module") is None:
        host.update({k: v for k, v in (facts or {}).items() if k in HOST_FACTS})
        if _record_check(report, host, meta, outcome, message) and outcome == "fail":
            host["problems"].append(message or meta["test"])
        return
    mod = _module(host, meta["module"], meta.get("version"), meta.get("state"))
    mod.update({k: v for k, v in (facts or {}).items() if k in MODULE_FACTS})
    if not _record_check(report, mod, meta, outcome, message):
        return
    stage = meta["stage"]
    if _RANK[outcome] > _RANK[mod["stages"][stage]]:
        mod["stages"][stage] = outcome
    if outcome == "fail":
        mod["failures"].append({"test": meta["test"], "stage": stage, "message": message or ""})


def _order(check: dict[str, Any]) -> tuple[int, str, str]:
    stage = STAGES.index(check["stage"]) if check["stage"] in STAGES else -1
    return stage, check["test"], check.get("id") or ""


def finish(report: dict[str, Any], exitstatus: int) -> dict[str, Any]:
    report["exitstatus"] = int(exitstatus)
    for host in report["hosts"]:
        host.get("checks", []).sort(key=_order)
        for mod in host["modules"]:
            mod["checks"].sort(key=_order)
    for host in report["hosts"]:
        failed = host.get("problems") or any(m["failures"] for m in host["modules"])
        host["outcome"] = "unreachable" if host.get("unreachable") else "fail" if failed else "pass"
    s = report["summary"]
    s["unreachable_hosts"] = [h["host"] for h in report["hosts"] if h["outcome"] == "unreachable"]
    gone = f"; unreachable: {', '.join(s['unreachable_hosts'])}" if s["unreachable_hosts"] else ""
    broken = [
        f"{h['host']}/{m['name']} ({', '.join(k for k, v in m['stages'].items() if v == 'fail')})"
        for h in report["hosts"]
        for m in h["modules"]
        if m["failures"]
    ] + [f"{h['host']} (host)" for h in report["hosts"] if h["problems"]]
    s["text"] = _counts_text(s) + gone + (f"; failing: {', '.join(broken)}" if broken else "")
    s["lines"] = failure_lines(report)
    return report


def _counts_text(summary: dict[str, Any]) -> str:
    text = (
        f"{summary.get('passed', 0)} passed, {summary.get('failed', 0)} failed, "
        f"{summary.get('skipped', 0)} skipped"
    )
    unobservable = summary.get("unobservable", 0)
    unreachable = summary.get("unreachable", 0)
    return (
        text
        + (f", {unobservable} not observable" if unobservable else "")
        + (f", {unreachable} unreachable" if unreachable else "")
    )


def failure_lines(report: dict[str, Any]) -> list[str]:
    """One line per failure: ``host: unreachable: why`` for a host SSH could not reach,
    ``host/module [stage] test: first problem`` for a failed check."""
    lines = []
    for host in report.get("hosts", []):
        if host.get("unreachable"):
            lines.append(f"{host['host']}: unreachable: {host['unreachable']}")
        for problem in host.get("problems", []):
            lines.append(f"{host['host']}: {_first_line(problem)}")
        for mod in host.get("modules", []):
            for failure in mod.get("failures", []):
                lines.append(
                    f"{host['host']}/{mod['name']} [{failure['stage']}] {failure['test']}: "
                    f"{_first_line(failure['message'])}"
                )
    return lines


def unobservable_lines(report: dict[str, Any]) -> list[str]:
    """One line per check that was not observable: ``host/module [stage] test: why``."""
    return [
        f"{host['host']}/{mod['name']} [{check['stage']}] {check['test']}: "
        f"{_first_line(check.get('message') or '')}"
        for host in report.get("hosts", [])
        for mod in host.get("modules", [])
        for check in mod.get("checks", [])
        if check.get("outcome") == "unobservable"
    ]


def _secure_boot_text(host: dict[str, Any]) -> str:
    state = host.get("secure_boot") or {}
    if state.get("efi") is None:
        text = "Secure Boot state not observed"
    elif not state["efi"]:
        text = "no UEFI, so no Secure Boot"
    else:
        flag = state.get("secure_boot")
        text = "Secure Boot " + ("unknown" if flag is None else "on" if flag else "off")
        if state.get("setup_mode"):
            text += " (setup mode)"
    lockdown = host.get("lockdown")
    return text + (f", lockdown {lockdown}" if lockdown else ", no lockdown file")


def signing_lines(report: dict[str, Any]) -> list[str]:
    """One line per host with signing expectations: its Secure Boot state and lockdown
    mode, and the signer its modules must have."""
    lines = []
    for host in report.get("hosts", []):
        signing = host.get("signing")
        if not signing:
            continue
        trust = "trusted" if signing.get("trusted") else "not trusted"
        lines.append(
            f"{host['host']}: {_secure_boot_text(host)}; modules signed by "
            f"{signing.get('signer')!r} (key id {signing.get('sig_key')}, certificate "
            f"SHA-256 {signing.get('fingerprint')}, {trust} by the kernel)"
        )
    return lines


def rollout_lines(report: dict[str, Any]) -> list[str]:
    """Per module of a package host, what its rollout state fact says was rolled out
    (``HOST/MODULE: VERSION signed by SIGNER, since WHEN``), and a line per package host
    whose fact is missing or unreadable. DKMS hosts have none."""
    lines = []
    for host in report.get("hosts", []):
        if host.get("delivery") != "deb":
            continue
        name, rollout = host["host"], host.get("rollout")
        if not rollout:
            lines.append(f"{name}: no rollout state (packages not installed by a rollout)")
            continue
        if rollout.get("error"):
            lines.append(f"{name}: the rollout state cannot be read: {rollout['error']}")
            continue
        pending = rollout.get("pending") or []
        for module, good in sorted((rollout.get("good") or {}).items()):
            # an absent module's entry has no version: its packages were removed
            what = (
                f"{good['version']} signed by {good.get('signer')!r}"
                if good.get("version")
                else "removed"
            )
            lines.append(
                f"{name}/{module}: {what}, since {good.get('when')}"
                + (" (a rollout is pending)" if module in pending else "")
            )
        for module in pending:
            if module not in (rollout.get("good") or {}):
                lines.append(f"{name}/{module}: rolled out, not yet gated (pending)")
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
    """The first problem of a message, without its ``HOST/MODULE test_NAME: `` head
    (the line that quotes it names them already)."""
    for line in message.splitlines():
        stripped = line.strip().lstrip("- ").strip()
        if stripped and not stripped.endswith(":"):
            return _ORIGIN.sub("", stripped)
    return message.strip().splitlines()[0] if message.strip() else ""


def render_report(source: str | Path | dict[str, Any], ascii_only: bool = False) -> RenderableType:
    """A rich renderable of a report.json (a path, or the loaded dict)."""
    report = load(source)
    summary = report.get("summary", {})
    failed = summary.get("failed", 0)
    unobservable = summary.get("unobservable", 0)
    unreachable = summary.get("unreachable", 0)
    title = Text.assemble(
        ("kmodlab verify: ", "bold"),
        (f"{summary.get('passed', 0)} passed", "green"),
        ", ",
        (f"{failed} failed", "bold red" if failed else "green"),
        f", {summary.get('skipped', 0)} skipped",
        (f", {unobservable} not observable", _STYLE["unobservable"]) if unobservable else "",
        (f", {unreachable} unreachable", _STYLE["unreachable"]) if unreachable else "",
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
        outcome = (
            "unreachable" if host.get("unreachable") else "fail" if host.get("problems") else ""
        )
        if outcome:
            table.add_row(
                host["host"],
                Text("(host)", style="italic"),
                "",
                "",
                *[Text(_LABEL[outcome], style=_STYLE[outcome]) for _stage in STAGES],
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
    signing = signing_lines(report)
    if signing:
        parts.append(Text("Signing:", style="bold"))
        parts.extend(Text(line) for line in signing)
    rollout = rollout_lines(report)
    if rollout:
        parts.append(Text("Rollout:", style="bold"))
        parts.extend(Text(line) for line in rollout)
    lines = failure_lines(report)
    if lines:
        parts.append(Text("Failures:", style="bold red"))
        parts.extend(Text(line, style="red") for line in lines)
    unseen = unobservable_lines(report)
    if unseen:
        parts.append(Text("Not observable:", style="bold magenta"))
        parts.extend(Text(line, style="magenta") for line in unseen)
    return Group(*parts)


def render_text(source: str | Path | dict[str, Any], width: int = 120) -> str:
    """The report as plain text (no colours): the table, then one unwrapped line per
    host with signing expectations, per rolled-out module of a package host, per
    failure and per check not observable (e.g. for
    Ansible's output, where each line becomes a list item)."""
    report = load(source)
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    table = render_report(report, ascii_only=True)
    assert isinstance(table, Group)
    console.print(table.renderables[0])
    for heading, lines in (
        ("Signing:", signing_lines(report)),
        ("Rollout:", rollout_lines(report)),
        ("Failures:", failure_lines(report)),
        ("Not observable:", unobservable_lines(report)),
    ):
        if lines:
            console.print(heading, soft_wrap=True)
            for line in lines:
                console.print(line, soft_wrap=True, markup=False, highlight=False)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"
