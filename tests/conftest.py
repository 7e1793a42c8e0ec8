"""Both tiers: no silent skips in the fast tier.

A fast-tier test (anything outside ``tests/vm``) that skips fails instead: a ``skipif``
mark, ``pytest.skip`` in a test or a fixture, ``pytest.importorskip``, a module skipped at
collection, an empty parameter set. The failure gives the skip's reason (which says what
to install) and how to allow it. A run allows skips only through ``KMODLAB_ALLOW_SKIPS``:
comma-separated entries, each a test id, a file or test id prefix ending before ``::`` or
``[``, or a piece of the skip's reason (case-insensitive), e.g.
``KMODLAB_ALLOW_SKIPS="needs root, tests/fast/test_module_build.py"``. The run prints the
list and every skip it allowed, so a run that skipped something says so.

The VM tier may skip (it has none today): its tests are marked ``vm``.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest
from ansible.plugins.loader import init_plugin_loader

# The collection (this repository, linked into the virtualenv by scripts/install-deps) is
# imported through Ansible's collection loader, as in a real run: tests import its
# plugins as ansible_collections.kmodlab.lab.plugins..., and in-process lookups and filters
# find it by FQCN.
init_plugin_loader()


def _collection_is_this_repository() -> None:
    """Another copy of kmodlab.lab earlier in Ansible's collection path (for example one
    installed with ansible-galaxy in ~/.ansible/collections) would be tested instead."""
    import ansible_collections.kmodlab.lab as collection

    found = Path(next(iter(collection.__path__))).resolve()
    here = Path(__file__).resolve().parents[1]
    if found != here:
        raise pytest.UsageError(
            f"kmodlab.lab resolves to {found}, not to this repository ({here}): remove that "
            "copy (or run scripts/install-deps, which links the repository into .venv)"
        )


_collection_is_this_repository()

ALLOW_ENV = "KMODLAB_ALLOW_SKIPS"
VM_DIR = Path(__file__).resolve().parent / "vm"


def allow_list() -> list[str]:
    return [e.strip() for e in os.environ.get(ALLOW_ENV, "").split(",") if e.strip()]


def allowed_by(nodeid: str, reason: str) -> str | None:
    """The entry of KMODLAB_ALLOW_SKIPS that allows this skip, or None."""
    for entry in allow_list():
        if nodeid == entry or nodeid.startswith((f"{entry}::", f"{entry}[")):
            return entry
        if entry.lower() in reason.lower():
            return entry
    return None


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def fail_unless_allowed(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = skip_reason(report)
    if allowed_by(report.nodeid, reason) is not None:
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped in the fast tier, which does not skip silently: {reason}\n"
        "Install or enable what it names (scripts/install-deps installs what the fast tier "
        "needs; run the tests as root), or allow this skip for the run, e.g.\n"
        f"  {ALLOW_ENV}='{report.nodeid}'\n"
        "(comma-separated test ids, files or pieces of skip reasons)"
    )


def in_vm_tier(path: Path) -> bool:
    return path.resolve().is_relative_to(VM_DIR)


def reported_in_vm_tier(report: pytest.TestReport | pytest.CollectReport, root: Path) -> bool:
    return "vm" in getattr(report, "keywords", {}) or in_vm_tier(root / report.fspath)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and item.get_closest_marker("vm") is None
        and not in_vm_tier(item.path)
    ):
        fail_unless_allowed(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if report.skipped and not in_vm_tier(collector.path):
        fail_unless_allowed(report)
    return report


def pytest_report_header(config: pytest.Config) -> str:
    entries = allow_list()
    if not entries:
        return f"{ALLOW_ENV}: none (a fast-tier skip fails)"
    return f"{ALLOW_ENV}: {', '.join(entries)}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    entries = allow_list()
    skipped = [
        r
        for r in terminalreporter.stats.get("skipped", [])
        if not hasattr(r, "wasxfail")
        and not reported_in_vm_tier(r, terminalreporter.config.rootpath)
    ]
    if not entries and not skipped:
        return
    terminalreporter.section(f"fast-tier skips allowed by {ALLOW_ENV}")
    terminalreporter.write_line(f"{ALLOW_ENV}={', '.join(entries)}")
    used = set()
    for r in skipped:
        reason = skip_reason(r)
        entry = allowed_by(r.nodeid, reason)
        used.add(entry)
        terminalreporter.write_line(f"SKIPPED {r.nodeid}: {reason} (allowed by {entry!r})")
    if not skipped:
        terminalreporter.write_line("nothing skipped")
    for entry in entries:
        if entry not in used:
            terminalreporter.write_line(f"unused entry: {entry!r}")
