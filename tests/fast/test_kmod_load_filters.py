"""The kmod_load role's filters: parameters, configuration files, fact, failures."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from kmodlab.selection import resolve

REPO = Path(__file__).resolve().parents[2]
MODULES = Path(__file__).parent / "fixtures" / "kmod" / "modules"
filters = importlib.import_module("ansible_collections.kmodlab.lab.plugins.filter.kmod_load")
plan = importlib.import_module("ansible_collections.kmodlab.lab.plugins.filter.kmod_load_plan")
kmod_config = importlib.import_module(
    "ansible_collections.kmodlab.lab.plugins.module_utils.kmod_config"
)
paramlib = importlib.import_module("ansible_collections.kmodlab.lab.plugins.module_utils.params")


def record(name: str, **entry):
    return resolve(MODULES, [{"name": name, **entry}])[0]


def test_filter_errors_name_the_module():
    from ansible.errors import AnsibleFilterError

    bad = record("hello-5", params={"mystring": 'a"b'})
    with pytest.raises(AnsibleFilterError, match="hello-5: parameter mystring"):
        filters.kmod_args(bad)
    with pytest.raises(AnsibleFilterError, match="hello-5: parameter mystring"):
        plan.kmod_load_with_files([bad])
    assert filters.kmod_args(record("base", params={"level": 3})) == "level=3"


def test_fact_keeps_previous_entry_of_failed_modules():
    recs = resolve(
        MODULES, [{"name": "base", "params": {"level": 2}}, {"name": "hello-5", "persist": False}]
    )
    previous = {"modules": {"base": {"kmod": "base", "state": "present", "params": {"level": 1}}}}
    fact = filters.kmod_load_fact(recs, {"base": {"loaded": True}}, previous)
    assert fact["modules"]["base"] == previous["modules"]["base"]
    assert fact["modules"]["hello-5"] == {
        "kmod": "hello_5",
        "version": "1.0.0",
        "state": "present",
        "persist": False,
        "params": {"myint": 42, "myintarray": [10, -20, 30], "myshort": 7, "mystring": "hello lab"},
    }
    assert "base" not in filters.kmod_load_fact(recs, {"base": {}}, None)["modules"]


def test_load_problems_and_failure_message():
    entry = {
        "name": "hello-5",
        "kmod": "hello_5",
        "loaded": True,
        "missing": ["ghost"],
        "mismatches": [{"param": "myint", "live": "1", "wanted": "42"}],
        "param_errors": [],
    }
    problems = filters.kmod_load_problems(entry)
    assert "parameter ghost is declared visible" in problems[0]
    assert "myint is '1' after loading, wanted '42'" in problems[1]
    assert filters.kmod_load_problems({"name": "x", "loaded": False}) == [
        "x is not loaded after modprobe"
    ]

    rec = record("hello-5", params={"myint": 13})
    probe_entry = {
        "param_errors": [
            {
                "param": "myint",
                "value": "13",
                "message": "hello_5: `13' invalid for parameter `myint'",
            }
        ],
        "kernel_log": ["hello_5: `13' invalid for parameter `myint'"],
    }
    failed = {"msg": "modprobe: ERROR: could not insert 'hello_5': Invalid argument"}
    before = {"previous": {"loaded": True, "params": {"myint": "5", "myshort": "7"}}}
    message = filters.kmod_load_failure(rec, failed, probe_entry, "True", before)
    assert message == (
        "hello-5: the kernel refused parameter myint=13: hello_5: `13' invalid for parameter "
        "`myint'; modprobe said \"could not insert 'hello_5': Invalid argument\". The previous "
        "configuration was loaded again (myint=5 myshort=7)."
    )
    new = filters.kmod_load_failure(
        rec, failed, probe_entry, False, {"previous": {"loaded": False}}
    )
    assert new.endswith("hello-5 was not loaded before and is left unloaded.")
    lost = filters.kmod_load_failure(rec, failed, probe_entry, False, before)
    assert lost.endswith("failed too: hello-5 is not loaded.")


# state, persist, with params -> (modprobe.d file, modules-load.d file)
FILE_TABLE = [
    ("present", True, True, (True, True)),
    ("present", True, False, (False, True)),
    ("present", False, True, (False, False)),
    ("config", True, True, (True, True)),
    ("config", False, True, (True, False)),
    ("config", False, False, (False, False)),
    ("absent", True, True, (False, False)),
    ("absent", False, True, (False, False)),
]


@pytest.mark.parametrize(("state", "persist", "with_params", "files"), FILE_TABLE)
def test_kmod_load_files_follows_the_table(state, persist, with_params, files):
    # hello-5 has lab parameters; gadget has none
    name, kmod = ("hello-5", "hello_5") if with_params else ("gadget", "gadget")
    params = {"myint": 7, "mystring": "two words"} if with_params else {}
    rec = record(name, state=state, persist=persist, params=params)
    assert bool(rec["params"]) is with_params
    (with_files,) = plan.FilterModule().filters()["kmod_load_with_files"]([rec])
    found = with_files["files"]
    modprobe, modules_load = f"/etc/modprobe.d/{name}.conf", f"/etc/modules-load.d/{name}.conf"
    assert sorted(found) == [modprobe, modules_load]
    assert (found[modprobe] is not None, found[modules_load] is not None) == files
    if found[modprobe] is not None:
        lines = found[modprobe].splitlines()
        assert lines[0].startswith("# Managed by kmodlab (kmod_load): ")
        assert lines[1:] == [
            f"options {kmod} {paramlib.options_string(paramlib.declarations(rec), rec['params'])}"
        ]
        assert 'mystring="two words"' in lines[1]
        assert found[modprobe].endswith("\n")
    if found[modules_load] is not None:
        lines = found[modules_load].splitlines()
        assert lines[0].startswith("# Managed by kmodlab (kmod_load): ")
        assert lines[1:] == [kmod] and found[modules_load].endswith("\n")


def test_config_files_in_other_folders():
    rec = record("base", params={"level": 3})
    found = kmod_config.wanted_files(rec, "/tmp/m", "/tmp/l")
    assert found["/tmp/m/base.conf"].splitlines()[1] == "options base level=3"
    assert found["/tmp/l/base.conf"].splitlines()[1] == "base"


def test_fact_records_the_key_the_loaded_file_was_signed_with():
    recs = resolve(MODULES, [{"name": "base"}, {"name": "hello-5", "state": "config"}])
    before = [{"name": "base", "installed": {"sig_key": "AA:01"}}]
    after = [{"name": "base", "installed": {"sig_key": "BB:02"}}]
    fact = filters.kmod_load_fact(recs, {}, None, [before, after])
    assert fact["modules"]["base"]["sig_key"] == "BB:02"
    assert "sig_key" not in fact["modules"]["hello-5"]
    # not probed this run: the recorded key stays
    kept = filters.kmod_load_fact(recs, {}, fact, [[], None])
    assert kept["modules"]["base"]["sig_key"] == "BB:02"
