"""pytest plugin of the verify suite: options, and the report per host x module.

Loaded with ``-p kmodlab.verify.plugin`` (what ``python -m kmodlab.verify`` does), or
through the suite's ``pytest_plugins`` when a test file imports the suite (molecule).
It adds ``--kmodlab-expectations`` and ``--kmodlab-report-dir`` (or the environment
variables KMODLAB_VERIFY_EXPECTATIONS / KMODLAB_VERIFY_REPORT_DIR) and
``--kmodlab-dropped`` (hosts that left the play before the suite ran: each is probed and
reported, never left out), folds every test outcome of the suite into the report,
prints the table at the end of the run and writes report.json and report.txt into the
report folder when one is given.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from kmodlab.verify import report as _report
from kmodlab.verify.checks import NOT_OBSERVABLE
from kmodlab.verify.expectations import ENV_EXPECTATIONS, ENV_REPORT_DIR, Case
from kmodlab.verify.observe import UNREACHABLE

_KEY = "kmodlab"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kmodlab", "kmodlab verify suite")
    group.addoption(
        "--kmodlab-expectations",
        dest="kmodlab_expectations",
        default=None,
        help=f"folder of HOST.json expectation files (default: ${ENV_EXPECTATIONS})",
    )
    group.addoption(
        "--kmodlab-report-dir",
        dest="kmodlab_report_dir",
        default=None,
        help=f"write report.json and report.txt here (default: ${ENV_REPORT_DIR})",
    )
    group.addoption(
        "--kmodlab-dropped",
        dest="kmodlab_dropped",
        default="",
        help="comma-separated hosts that left the play before the suite ran (kmod_verify "
        "passes them): each is probed over SSH and reported as unreachable, or as failed",
    )


class ReportPlugin:
    """Collects outcomes of the suite's tests (found by their kmodlab_case parameter)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.report = _report.new_report()

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        keep, empty = [], []
        for item in items:
            callspec = getattr(item, "callspec", None)
            case = callspec.params.get("kmodlab_case") if callspec else None
            spec = getattr(getattr(item, "function", None), "kmodlab_check", None)
            if spec is not None and not isinstance(case, Case):
                # pytest's empty parameter set: a test neither its selection rule nor
                # the manifests call for on any host (the suite fails a test one of
                # them wants and the other does not, so nothing wanted vanishes here)
                empty.append(item)
                continue
            keep.append(item)
            if spec is None:
                continue
            test = item.originalname if hasattr(item, "originalname") else item.name
            functional = case.functional
            meta = {
                "host": case.host_name,
                "module": case.module,
                "version": case.record.get("version") if case.record else None,
                "state": case.record.get("state") if case.record else None,
                "kernel": case.expectation.kernel if case.expectation else None,
                "stage": spec["stage"],
                "test": test,
                "kind": test.removeprefix("test_"),
                "name": functional["name"] if functional is not None else None,
                "case": case.id,
            }
            item.user_properties.append((_KEY, meta))
        if empty:
            config.hook.pytest_deselected(items=empty)
            items[:] = keep

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        meta = dict(report.user_properties).get(_KEY)
        if meta is None:
            return
        if report.when == "call" or (report.when == "setup" and not report.passed):
            outcome = "pass" if report.passed else ("skip" if report.skipped else "fail")
        elif report.when == "teardown" and report.failed:
            outcome = "fail"
        else:
            return
        message = None
        if outcome == "skip":
            reason = _skip_reason(report)
            if reason.startswith(NOT_OBSERVABLE):
                outcome, message = "unobservable", reason[len(NOT_OBSERVABLE) :]
        elif outcome == "fail":
            message = _message(report)
            if message.startswith(UNREACHABLE):
                outcome, message = "unreachable", message[len(UNREACHABLE) :]
        # what the test saw besides its outcome (Secure Boot, a module's signature)
        facts = dict(report.user_properties).get(_report.FACTS)
        _report.add_result(self.report, meta, outcome, message, facts)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        _report.finish(self.report, int(exitstatus))
        directory = _report_dir(self.config)
        if directory and not hasattr(self.config, "workerinput"):
            _report.write(self.report, directory)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.report["hosts"]:
            return
        terminalreporter.section("kmodlab verify report")
        terminalreporter.write(_report.render_text(self.report))
        directory = _report_dir(self.config)
        if directory:
            terminalreporter.write_line(f"report: {os.path.join(directory, 'report.json')}")


def _message(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        text = str(crash.message)
    else:
        text = str(longrepr)
    for prefix in ("Failed: ", "AssertionError: "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text.strip()


def _skip_reason(report: pytest.TestReport) -> str:
    """A skip's reason ("Skipped: " dropped); the suite's not-observable checks skip
    with a reason starting with checks.NOT_OBSERVABLE."""
    longrepr = report.longrepr
    text = str(longrepr[2]) if isinstance(longrepr, tuple | list) else str(longrepr)
    return text.removeprefix("Skipped: ").strip()


def _report_dir(config: pytest.Config) -> str | None:
    value = config.getoption("kmodlab_report_dir", None) or os.environ.get(ENV_REPORT_DIR)
    return os.path.expanduser(value) if value else None


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("kmodlab-verify-report"):
        config.pluginmanager.register(ReportPlugin(config), "kmodlab-verify-report")
