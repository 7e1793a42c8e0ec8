"""Fast tier: kmodlab.lab.dkms on a full disk (the fake dkms of test_dkms.py).

A new version whose build or sources hit "No space left on device" leaves nothing half
added: not in DKMS, no source folder of its own (the controller has the same files, and
they take space on the full filesystem), the previous version installed; its message
says the disk is full, not that the sources are wrong.
"""

from __future__ import annotations

import errno
import os

import pytest

# dkms is the fixture, used by name
from test_dkms import (  # pylint: disable=unused-import
    ARCH,
    K,
    by_name,
    dkms,  # noqa: F401
    pkg,
    run,
)

ENOSPC_LOG = "/usr/bin/ld: final link failed: No space left on device"


def full_disk_build(fake):
    """Builds of ``fake`` fail as on a full disk: make.log ends with ld's ENOSPC."""
    dispatch = fake.dispatch

    def failing(module, argv, **kwargs):
        if argv[1] != "build":
            return dispatch(module, argv, **kwargs)
        fake.calls.append(list(argv))
        name, version = argv[argv.index("-m") + 1], argv[argv.index("-v") + 1]
        build = fake.tree / name / version / "build"
        build.mkdir(parents=True, exist_ok=True)
        (build / "make.log").write_text(f"DKMS make.log for {name}-{version}\n{ENOSPC_LOG}\n")
        return (
            10,
            "Building module:\n(bad exit status: 2)\n",
            f"Error! Bad return status for module build on kernel: {K} ({ARCH})\n",
        )

    fake.dispatch = failing


def test_a_full_disk_during_a_build_leaves_nothing_of_the_new_version(dkms):  # noqa: F811
    run(dkms, [pkg("hello", "1.0")])
    full_disk_build(dkms)
    res = run(dkms, [pkg("hello", "2.0")])
    p = by_name(res)["hello"]
    assert p["failed"] is True and p["step"] == "build"
    assert p["msg"].startswith(
        f"'dkms build -m hello -v 2.0 -k {K}' failed (rc=10): No space left on device: the "
        f"disk is full: free space on it (df -h {dkms.tree} {dkms.src} /tmp) and re-run"
    )
    assert "fix the module's sources" not in p["msg"]
    assert p["log_tail"][-1] == ENOSPC_LOG
    # the old version stays installed; nothing of the new one is left
    assert p["after"] == {"1.0": "installed"}
    assert dkms.reg == {("hello", "1.0"): {K: "installed"}}
    assert not (dkms.tree / "hello/2.0").exists()
    assert not (dkms.src / "hello-2.0").exists() and (dkms.src / "hello-1.0").is_dir()
    assert p["actions"] == [
        "sources",
        "add",
        "remove 2.0 (cleanup)",
        f"delete {dkms.src}/hello-2.0",
    ]


def test_sources_that_do_not_fit_leave_no_folder(dkms, monkeypatch):  # noqa: F811
    run(dkms, [pkg("hello", "1.0")])
    real = os.fdopen

    def no_space(fd, *args, **kwargs):
        handle = real(fd, *args, **kwargs)
        handle.close()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # the one atomic write (module_utils/files.py) the module writes sources with
    monkeypatch.setattr(os, "fdopen", no_space)
    res = run(dkms, [pkg("hello", "2.0")])
    p = by_name(res)["hello"]
    assert p["step"] == "sources"
    assert "No space left on device" in p["msg"] and "the disk is full" in p["msg"]
    assert not (dkms.src / "hello-2.0").exists()
    assert dkms.reg == {("hello", "1.0"): {K: "installed"}}
    assert p["actions"] == [f"delete {dkms.src}/hello-2.0"]


@pytest.mark.parametrize("existing", [True, False])
def test_a_compile_error_keeps_the_sources_for_debugging(dkms, existing):  # noqa: F811
    if existing:
        (dkms.src / "broken-0.1").mkdir()
    res = run(dkms, [pkg("broken", "0.1", c="int x = no_such_symbol;\n")])
    p = by_name(res)["broken"]
    assert "fix the module's sources" in p["msg"]
    assert (dkms.src / "broken-0.1/broken.c").is_file()
