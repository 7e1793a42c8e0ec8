"""kmod_load's templates (rendered by Ansible's own templar) and its filters."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from kmodlab.selection import resolve

REPO = Path(__file__).resolve().parents[2]
MODULES = Path(__file__).parent / "fixtures" / "kmod" / "modules"
TEMPLATES = REPO / "roles" / "kmod_load" / "templates"
filters = importlib.import_module("ansible_collections.kmodlab.lab.plugins.filter.kmod_load")


_LOADER: list[bool] = []


def render(template: str, record: dict) -> str:
    from ansible.parsing.dataloader import DataLoader
    from ansible.plugins.loader import init_plugin_loader
    from ansible.template import Templar, trust_as_template

    if not _LOADER:
        init_plugin_loader()
        _LOADER.append(True)
    templar = Templar(
        loader=DataLoader(),
        variables={"kmod_load_item": record, "ansible_managed": "Ansible managed"},
    )
    return templar.template(trust_as_template((TEMPLATES / template).read_text()))


def record(name: str, **entry):
    return resolve(MODULES, [{"name": name, **entry}])[0]


def test_templates_mirror_their_destination():
    found = sorted(str(p.relative_to(TEMPLATES)) for p in TEMPLATES.rglob("*.j2"))
    assert found == ["etc/modprobe.d/module.conf.j2", "etc/modules-load.d/module.conf.j2"]


def test_modprobe_d_options_line():
    text = render(
        "etc/modprobe.d/module.conf.j2",
        record("hello-5", params={"mybool": True, "mylong": 1234567890123}),
    )
    lines = text.splitlines()
    assert lines[:3] == ["#", "# Ansible managed", "#"]
    assert lines[-1] == (
        "options hello_5 mybool=Y myint=42 myintarray=10,-20,30 mylong=1234567890123 "
        'myshort=7 mystring="hello lab"'
    )
    assert text.endswith("\n")


def test_modules_load_d_names_the_kernel_module():
    text = render("etc/modules-load.d/module.conf.j2", record("hello-5"))
    assert text.splitlines()[0] == "#"
    assert [ln for ln in text.splitlines() if not ln.startswith("#")] == ["hello_5"]


def test_filter_errors_name_the_module():
    from ansible.errors import AnsibleFilterError

    bad = record("hello-5", params={"mystring": 'a"b'})
    with pytest.raises(AnsibleFilterError, match="hello-5: parameter mystring"):
        filters.kmod_options(bad)
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
