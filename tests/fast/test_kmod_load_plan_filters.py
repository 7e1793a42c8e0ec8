"""The kmod_load role's plan filters (plugins/filter/kmod_load_plan.py), with plain data."""

from __future__ import annotations

from ansible_collections.kmodlab.lab.plugins.filter import kmod_load
from ansible_collections.kmodlab.lab.plugins.filter import kmod_load_plan as f

MP = "/etc/modprobe.d/hello-5.conf"
ML = "/etc/modules-load.d/hello-5.conf"


def test_only_the_files_the_probe_found_different() -> None:
    records = [
        {"name": "hello-5", "files": {ML: "hello_5\n", MP: "options hello_5 myint=7\n"}},
        {"name": "memory", "files": {"/etc/modules-load.d/memory.conf": None}},
    ]
    probed = [
        {"name": "hello-5", "files_changed": [MP]},
        {"name": "memory", "files_changed": ["/etc/modules-load.d/memory.conf"]},
    ]
    assert f.kmod_load_file_changes(records, probed) == [
        {"path": MP, "content": "options hello_5 myint=7\n"},
        {"path": "/etc/modules-load.d/memory.conf", "content": None},
    ]
    assert f.kmod_load_file_changes(records, [{"name": "hello-5", "files_changed": []}]) == []


def test_actions_with_reasons() -> None:
    probed = [
        {"name": "a", "action": "none", "reasons": []},
        {"name": "b", "action": "reload", "reasons": ["myint is 1, wanted 7", "x"]},
        {"name": "c", "action": "load", "reasons": ["not loaded"]},
    ]
    assert f.kmod_load_actions(probed) == [
        "b: reload (myint is 1, wanted 7; x)",
        "c: load (not loaded)",
    ]


def test_previous_files_put_back_or_removed() -> None:
    probed = {
        "files": {
            MP: {"exists": True, "content": "options hello_5 myint=1\n", "changed": True},
            ML: {"exists": False, "content": None, "changed": True},
            "/etc/other": {"exists": True, "content": "same\n", "changed": False},
        }
    }
    assert f.kmod_load_previous_files(probed) == [
        {"path": MP, "content": "options hello_5 myint=1\n"},
        {"path": ML, "content": None},
    ]


def test_unload_problems_name_the_patterns_and_the_last_lines() -> None:
    modules = [
        {"name": "ok", "messages_missing": {"unload": []}},
        {
            "name": "hello-1",
            "messages_missing": {"unload": ["Goodbye"]},
            "kernel_log": [f"line {i}" for i in range(8)],
        },
    ]
    (line,) = f.kmod_load_unload_problems(modules)
    assert line.startswith("hello-1 was unloaded but the kernel log has no line matching Goodbye")
    assert line.endswith("last lines: line 3 | line 4 | line 5 | line 6 | line 7")


def test_records_get_their_wanted_files() -> None:
    records = [
        {
            "name": "hello-5",
            "kmod": "hello_5",
            "state": "present",
            "persist": True,
            "params": {},
            "manifest": {"params": []},
        },
        {
            "name": "memory",
            "kmod": "memory",
            "state": "absent",
            "persist": True,
            "params": {},
            "manifest": {"params": []},
        },
    ]
    out = f.kmod_load_with_files(records)
    assert out[0]["files"][ML].splitlines()[-1] == "hello_5"
    assert out[0]["files"][MP] is None
    assert set(out[1]["files"].values()) == {None}
    assert "files" not in records[0]


def test_blocked_modules_and_batch_entries() -> None:
    by_name = {
        "a": {"name": "a", "kmod": "a", "params": {}, "manifest": {"depends": ["x", "y"]}},
        "b": {"name": "b", "kmod": "b", "params": {}, "manifest": {"depends": ["y"]}},
        "hello-5": {"name": "hello-5", "kmod": "hello_5", "params": {"myint": 7},
                    "manifest": {"parameters": [{"name": "myint", "type": "int"}]}},
    }  # fmt: skip
    assert kmod_load.kmod_load_blocked(["a", "b", "hello-5"], by_name, ["y", "x"]) == {
        "a": ["x", "y"],
        "b": ["y"],
    }
    assert kmod_load.kmod_load_blocked(["a", "b"], by_name, []) == {}
    assert kmod_load.kmod_load_batch(["hello-5", "b"], by_name) == [
        {"name": "hello-5", "kmod": "hello_5", "params": "myint=7"},
        {"name": "b", "kmod": "b", "params": ""},
    ]
