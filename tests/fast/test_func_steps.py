"""Fast tier: the functional-check step runner (module_utils/func_steps.py) on real files,
FIFOs and ioctls of this machine, and the controller's judgement of its results
(kmodlab.verify.checks.functional) on the same runs.

A FIFO stands in for a device whose open blocks: opening it for reading blocks until a
writer opens it, and O_NONBLOCK opens of the writing end fail with ENXIO. FIONREAD on a
pipe is a real ioctl that writes an int through its argument pointer.
"""

from __future__ import annotations

import base64
import os
import struct
import termios
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.kmodlab.lab.plugins.module_utils.func_steps import (
    ioctl_number,
    run_check,
)

from kmodlab.manifest import Functional
from kmodlab.verify import checks
from kmodlab.verify.observe import Observation

NO_LOG: list[tuple[Any, Any, str]] = []


def no_log() -> list[tuple[Any, Any, str]]:
    return NO_LOG


def judge(steps: list[dict[str, Any]], results: list[dict[str, Any]]) -> list[str]:
    """The controller's verdict, with the steps as a validated manifest gives them."""
    check = Functional.model_validate({"name": "t", "steps": steps})
    dumped = check.model_dump(mode="json", by_alias=True)
    record = {"name": "t", "manifest": {"expect": {"functional": [dumped]}}}
    obs = Observation({"functional": {"t#0": results}})
    return checks.functional(record, 0, obs)


@pytest.fixture(autouse=True)
def _functional_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "kmodlab.verify.observe.functional_id", lambda rec, index: f"{rec['name']}#{index}"
    )


def steps_of(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Steps as the collector receives them: validated, aliases, no None values."""
    check = Functional.model_validate({"name": "t", "steps": raw})
    dumped = check.model_dump(mode="json", by_alias=True)["steps"]
    return [{k: v for k, v in step.items() if v is not None} for step in dumped]


def run(raw: list[dict[str, Any]], log=no_log) -> tuple[list[dict[str, Any]], list[str]]:
    results = run_check(steps_of(raw), log)
    return results, judge(raw, results)


def verdict_of(raw: list[dict[str, Any]], log=no_log) -> list[str]:
    return run(raw, log)[1]


def outcome(raw: list[dict[str, Any]], log=no_log) -> list[dict[str, Any]]:
    return run(raw, log)[0]


def test_ioctl_numbers_are_encoded_as_the_kernel_does():
    # _IOR('k', 1, int) and _IOW('k', 2, char[64]) on x86-64, and a plain number
    assert ioctl_number({"dir": "read", "type": "k", "nr": 1, "size": 4}) == 0x80046B01
    assert ioctl_number({"dir": "write", "type": "k", "nr": 2, "size": 64}) == 0x40406B02
    assert ioctl_number({"dir": "none", "type": "T", "nr": 0x1B}) == 0x541B
    assert ioctl_number(0x541B) == termios.FIONREAD


def test_read_write_and_handles(tmp_path: Path):
    target = tmp_path / "f"
    target.write_text("")
    results, verdict = run(
        [
            {"op": "write", "path": str(target), "data": "hello"},
            {"op": "open", "path": str(target), "as": "a", "flags": ["O_RDWR", "O_APPEND"]},
            {"op": "write", "handle": "a", "data": " world"},
            {"op": "close", "handle": "a"},
            {"op": "read", "path": str(target), "expect": r"\Ahello world\Z"},
        ]
    )
    assert verdict == [], results
    assert target.read_text() == "hello world"
    verdict = verdict_of([{"op": "read", "path": str(target), "size": 5, "expect": r"\Ahello\Z"}])
    assert verdict == []
    verdict = verdict_of([{"op": "read", "path": str(target), "expect": r"\Anope\Z"}])
    assert verdict and "read 'hello world', expected /\\Anope\\Z/" in verdict[0]


def test_write_never_creates_and_errors_are_named(tmp_path: Path):
    missing = tmp_path / "missing"
    results, verdict = run([{"op": "write", "path": str(missing), "data": "x"}])
    assert not missing.exists()
    assert results[0]["errno"] == "ENOENT"
    assert verdict and "failed: ENOENT: No such file or directory" in verdict[0]
    verdict = verdict_of([{"op": "write", "path": str(missing), "data": "x", "error": "ENOENT"}])
    assert verdict == []
    verdict = verdict_of([{"op": "write", "path": str(missing), "data": "x", "error": "EINVAL"}])
    assert (
        verdict
        and "failed with ENOENT (No such file or directory), expected EINVAL" in (verdict[0])
    )
    (tmp_path / "f").write_text("")
    plain = str(tmp_path / "f")
    verdict = verdict_of([{"op": "write", "path": plain, "data": "x", "error": "EIO"}])
    assert verdict and "succeeded, expected EIO (Input/output error)" in verdict[0]


def test_open_that_blocks_until_another_step_happens(tmp_path: Path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    steps = [
        # the reader's open blocks: no writer yet
        {"op": "open", "path": str(fifo), "as": "r", "blocks": "reader"},
        # a non-blocking open of the other end is refused while... (reader pending: works)
        {"op": "open", "path": str(fifo), "as": "w", "flags": ["O_WRONLY"]},
        {"op": "wait", "for": "reader", "timeout": 5},
        {"op": "write", "handle": "w", "data": "ping"},
        {"op": "read", "handle": "r", "size": 4, "expect": r"\Aping\Z"},
    ]
    results, verdict = run(steps)
    assert results[0] == {"ok": True, "blocked": True}
    assert verdict == [], results
    # O_NONBLOCK on the writing end without a reader: ENXIO, named as such
    verdict = verdict_of(
        [
            {
                "op": "open",
                "path": str(fifo),
                "as": "w",
                "flags": ["O_WRONLY", "O_NONBLOCK"],
                "error": "ENXIO",
            }
        ]
    )
    assert verdict == []


def test_a_step_that_should_block_but_does_not_fails(tmp_path: Path):
    (tmp_path / "f").write_text("x")
    steps = [
        {"op": "open", "path": str(tmp_path / "f"), "as": "a", "blocks": "b", "block_ms": 100},
        {"op": "wait", "for": "b"},
    ]
    results, verdict = run(steps)
    assert results[0]["blocked"] is False
    assert (
        verdict and "expected to block for 100 ms, it finished at once (succeeded)" in (verdict[0])
    )


def test_a_step_still_blocked_at_its_wait_fails(tmp_path: Path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    steps = [
        {"op": "open", "path": str(fifo), "as": "r", "blocks": "reader", "block_ms": 100},
        {"op": "wait", "for": "reader", "timeout": 0.3},
    ]
    results, verdict = run(steps)
    assert verdict and "still blocked after 0.3 s" in verdict[0]
    # unblock the abandoned open so its thread ends
    os.close(os.open(fifo, os.O_WRONLY))
    del results


def test_ioctl_with_an_int_pointer_and_by_value():
    r, w = os.pipe()
    try:
        os.write(w, b"abc")
        path = f"/proc/self/fd/{r}"
        fionread = {"dir": "none", "type": "T", "nr": 0x1B}
        results, verdict = run(
            [
                {"op": "ioctl", "path": path, "request": fionread, "arg": {"int": -1}},
            ]
        )
        assert results[0]["value"] == 3 and results[0]["return"] == 0, results
        assert verdict == []
        verdict = verdict_of(
            [
                {
                    "op": "ioctl",
                    "path": path,
                    "request": fionread,
                    "arg": {"int": 0},
                    "expect_value": 4,
                }
            ]
        )
        assert verdict and "left 3 in the argument, expected 4" in verdict[0]
    finally:
        os.close(r)
        os.close(w)


def test_ioctl_on_a_file_that_has_none_is_enotty(tmp_path: Path):
    (tmp_path / "f").write_text("")
    tcgets = {"dir": "none", "type": "T", "nr": 1}
    steps = [{"op": "ioctl", "path": str(tmp_path / "f"), "request": tcgets, "error": "ENOTTY"}]
    verdict = verdict_of(steps)
    assert verdict == []
    # a string buffer goes in and comes back (TIOCGWINSZ on a pty writes 8 bytes)
    leader, follower = os.openpty()
    try:
        results, verdict = run(
            [
                {
                    "op": "ioctl",
                    "path": f"/proc/self/fd/{follower}",
                    "request": termios.TIOCGWINSZ,
                    "arg": {"string": "", "size": 8},
                }
            ]
        )
        assert verdict == [], results
        assert "buffer_b64" in results[0]
    finally:
        os.close(leader)
        os.close(follower)
    assert struct.calcsize("=i") == 4


def test_poll_a_path_and_the_kernel_log(tmp_path: Path):
    counter = tmp_path / "count"
    counter.write_text("0\n")

    def bump() -> None:
        time.sleep(0.5)
        counter.write_text("7\n")

    thread = threading.Thread(target=bump)
    thread.start()
    verdict = verdict_of([{"op": "poll", "path": str(counter), "expect": r"\A[1-9]", "timeout": 5}])
    thread.join()
    assert verdict == []
    verdict = verdict_of([{"op": "poll", "path": str(counter), "expect": r"\A9", "timeout": 0.5}])
    assert verdict and "no match for /\\A9/ within 0.5 s; last seen '7\\n'" in verdict[0]

    log = [(1, 6, "irq: old line 3")]
    calls = []

    def records() -> list[tuple[Any, Any, str]]:
        calls.append(1)
        if len(calls) == 3:  # the check's start, one poll, then the handler runs
            log.append((2, 6, "irq: handled line 3"))
        return list(log)

    # the old line is before the check started: only the new one may match
    verdict = verdict_of(
        [{"op": "poll", "dmesg": True, "expect": "handled line 3", "timeout": 2}], records
    )
    assert verdict == []
    log[:] = [(1, 6, "irq: old line 3")]
    verdict = verdict_of(
        [{"op": "poll", "dmesg": True, "expect": "old line 3", "timeout": 0.5}], lambda: log
    )
    assert verdict and "no match" in verdict[0]


def test_run_checks_rc_and_stdout():
    verdict = verdict_of([{"op": "run", "argv": ["sh", "-c", "echo hello"], "expect": "^hello$"}])
    assert verdict == []
    verdict = verdict_of([{"op": "run", "argv": ["sh", "-c", "echo oops >&2; exit 3"]}])
    assert verdict and "exited 3, expected 0: oops" in verdict[0]
    verdict = verdict_of([{"op": "run", "argv": ["sh", "-c", "exit 3"], "rc": 3}])
    assert verdict == []
    results, verdict = run([{"op": "run", "argv": ["/nonexistent/tool"]}])
    assert results[0]["errno"] == "ENOENT" and verdict


def test_steps_that_do_not_fit_their_op_are_refused():
    bad = [
        ([{"op": "read", "path": "/x", "data": "d"}], "a read step takes no data"),
        ([{"op": "read", "path": "/x", "handle": "h"}], "exactly one of path and handle"),
        ([{"op": "read", "handle": "h"}], "handle 'h' is not opened by an earlier step"),
        ([{"op": "open", "path": "/x", "as": "a", "blocks": "b"}], "never waited for"),
        ([{"op": "wait", "for": "b"}], "no earlier step blocks as 'b'"),
        ([{"op": "open", "path": "/x", "as": "a", "flags": ["O_BOGUS"]}], "unknown open flags"),
        ([{"op": "poll", "path": "/x", "dmesg": True, "expect": "a"}], "either a path or"),
        ([{"op": "ioctl", "path": "/x", "request": 1, "arg": {"string": "abc", "size": 2}}], ""),
        ([{"op": "run", "argv": ["true"], "blocks": "b"}], "a run step takes no blocks"),
    ]
    for steps, words in bad:
        with pytest.raises(ValueError, match=words or None):
            Functional.model_validate({"name": "t", "steps": steps})


def test_read_data_is_base64_so_binary_survives(tmp_path: Path):
    (tmp_path / "bin").write_bytes(b"\x00\xff\n")
    results = outcome([{"op": "read", "path": str(tmp_path / "bin")}])
    assert base64.b64decode(results[0]["data_b64"]) == b"\x00\xff\n"
