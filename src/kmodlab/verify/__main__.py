"""Run the verify suite: ``python -m kmodlab.verify [OPTIONS] [PYTEST ARGS...]``.

    python -m kmodlab.verify --expectations DIR [--report-dir DIR] \\
        --hosts=ansible://lab1,ansible://lab2 --ansible-inventory=inventory/lab [-x -k ...]

Options it does not know go to pytest (testinfra's --hosts, --ansible-inventory,
--sudo, --connection, -k, -x, -n...). Exit status is pytest's: 0 all passed, 1 some
failed, 2-5 the run itself failed. report.json and report.txt are written into the
report folder in every case, so callers always have something to show.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

from kmodlab.verify import report as _report

# The suite's path, found without importing it (pytest must import it first, so that
# testinfra and the suite get pytest's assertion rewriting).
SUITE = importlib.util.find_spec("kmodlab.verify.suite").origin  # type: ignore[union-attr]


def pytest_args(expectations: str, report_dir: str | None, extra: list[str]) -> list[str]:
    args = [
        str(SUITE),
        "-p",
        "kmodlab.verify.plugin",
        "-p",
        "no:cacheprovider",
        f"--kmodlab-expectations={expectations}",
        "--rootdir",
        str(Path(str(SUITE)).parent),
    ]
    if report_dir:
        args.append(f"--kmodlab-report-dir={report_dir}")
    return args + extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kmodlab.verify",
        description="Run the kmodlab verify suite (other options go to pytest).",
    )
    parser.add_argument("--expectations", required=True, help="folder of HOST.json files")
    parser.add_argument("--report-dir", help="write report.json and report.txt here")
    args, extra = parser.parse_known_args(argv)
    report_dir = args.report_dir
    if report_dir:
        Path(report_dir).mkdir(parents=True, exist_ok=True)
        for name in ("report.json", "report.txt"):
            (Path(report_dir) / name).unlink(missing_ok=True)
    status = int(pytest.main(pytest_args(args.expectations, report_dir, extra)))
    if report_dir and not (Path(report_dir) / "report.json").exists():
        # pytest stopped before the plugin could write (usage error, no tests, crash)
        broken = _report.new_report()
        broken["hosts"].append(
            {
                "host": "(run)",
                "kernel": None,
                "problems": [
                    f"pytest exited with status {status} before reporting; see its output"
                ],
                **dict.fromkeys(_report.HOST_FACTS),
                "checks": [],
                "modules": [],
            }
        )
        broken["summary"]["failed"] = 1
        _report.write(_report.finish(broken, status), report_dir)
    return status


if __name__ == "__main__":
    sys.exit(main())
