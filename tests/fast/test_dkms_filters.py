"""The dkms_module role's failure report (filter kmodlab.lab.dkms_failure_report)."""

from __future__ import annotations

from ansible_collections.kmodlab.lab.plugins.filter.dkms_failure_report import dkms_failure_report


def test_nothing_failed_means_no_report() -> None:
    assert dkms_failure_report({"packages": [{"name": "a", "failed": False}]}) == []
    assert dkms_failure_report({}) == []


def test_each_failed_module_with_its_log_and_what_stays_installed() -> None:
    run = {
        "kernel": "6.1.0-41-amd64",
        "packages": [
            {"name": "memory", "version": "1.0.0", "failed": False},
            {
                "name": "hello-2",
                "version": "1.1.0",
                "failed": True,
                "step": "build",
                "msg": "'dkms build' failed (rc=10)",
                "log_tail": ["hello-2.c:9:1: error: expected ';'", "make: *** Error 2"],
                "before": {"1.0.0": "installed"},
                "after": {"1.0.0": "installed", "1.1.0": "added"},
            },
            {
                "name": "chardev",
                "version": "2.0.0",
                "failed": True,
                "step": "install",
                "msg": "'dkms install' failed",
                "before": {"1.0.0": "installed"},
                "after": {"1.0.0": "built"},
            },
        ],
    }
    assert dkms_failure_report(run) == [
        "dkms_module: 2 of 3 module(s) failed for kernel 6.1.0-41-amd64; the others are handled.",
        "hello-2 1.1.0 (build failed): 'dkms build' failed (rc=10)",
        "  make.log, last lines:",
        "    hello-2.c:9:1: error: expected ';'",
        "    make: *** Error 2",
        "  still installed: hello-2 1.0.0",
        "chardev 2.0.0 (install failed): 'dkms install' failed",
        "  no version of chardev is installed any more (before: 1.0.0)",
    ]
