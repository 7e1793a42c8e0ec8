"""The kmod_load role end to end against a pretend kernel (see kmod_sim/harness.py).

Covers: first load with files and fact, the idempotent re-run (one probe, nothing
else touches the host), check mode, reload only on change (live value, hidden
parameter, installed build), a parameter the kernel refuses (previous configuration
back, the kernel's message in the failure), a major already taken, dependencies and
their cascade, absent/config/persist, a module in use, missing unload messages.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from kmod_sim.harness import MODULES, Sim, available

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

HELLO = "hello_5"


@pytest.fixture
def sim(tmp_path: Path) -> Sim:
    return Sim(tmp_path / "host")


def test_first_run_loads_persists_and_records(sim: Sim):
    res = sim.run([{"name": "hello-5", "params": {"mybool": True}}])
    assert res.rc == 0, res.explain()
    values = sim.values(HELLO)
    assert values["myshort"] == "7"  # hidden parameter, from the lab params
    assert values["mystring"] == "hello lab"  # a space survives modprobe.d and argv
    assert values["myintarray"] == ["10", "-20", "30"]
    assert values["mybool"] == "Y"
    conf = (sim.modprobe_d / "hello-5.conf").read_text()
    assert conf.startswith("#\n# Ansible managed\n#\n")
    assert (
        'options hello_5 myint=42 myintarray=10,-20,30 mybool=Y myshort=7 mystring="hello lab"'
        in conf.replace("mybool=Y myint=42", "myint=42 mybool=Y")
        or 'options hello_5 mybool=Y myint=42 myintarray=10,-20,30 myshort=7 mystring="hello lab"'
        in conf
    ), conf
    assert (sim.modules_load_d / "hello-5.conf").read_text().splitlines()[-1] == HELLO
    fact = sim.fact()
    assert fact == {
        "modules": {
            "hello-5": {
                "kmod": HELLO,
                "version": "1.0.0",
                "state": "present",
                "persist": True,
                "params": {
                    "mybool": True,
                    "myint": 42,
                    "myintarray": [10, -20, 30],
                    "myshort": 7,
                    "mystring": "hello lab",
                },
            }
        }
    }


def test_rerun_touches_nothing_but_the_probe(sim: Sim):
    mods = [{"name": "hello-5"}, {"name": "base"}, {"name": "user"}, {"name": "memory"}]
    assert sim.run(mods).rc == 0
    again = sim.run(mods)
    assert again.rc == 0, again.explain()
    assert again.changed == 0, again.changed_tasks()
    remote = again.remote_tasks()
    assert [name.split(" : ")[-1] for name in remote] == [
        "Probe live parameters, files and the last applied state of all modules"
    ], remote
    check = sim.run(mods, check=True)
    assert check.rc == 0 and check.changed == 0, check.explain()


def test_check_mode_on_a_new_host_reports_changes_and_changes_nothing(sim: Sim):
    res = sim.run([{"name": "hello-5"}], check=True)
    assert res.rc == 0, res.explain()
    assert res.changed > 0
    assert not sim.loaded(HELLO)
    assert not (sim.modprobe_d / "hello-5.conf").exists()
    assert sim.fact() is None


def test_reload_only_on_change(sim: Sim):
    assert sim.run([{"name": "hello-5"}, {"name": "base"}]).rc == 0
    loads_before = sim.kmsg_lines().count("base: up")

    # a visible parameter changed in the inventory
    res = sim.run([{"name": "hello-5", "params": {"myint": 7}}, {"name": "base"}])
    assert res.rc == 0, res.explain()
    assert sim.values(HELLO)["myint"] == "7"
    assert "myint=7" in (sim.modprobe_d / "hello-5.conf").read_text()
    assert sim.kmsg_lines().count("base: up") == loads_before  # base left alone

    # a hidden parameter (perm 0) changed: only the recorded fact can tell
    res = sim.run([{"name": "hello-5", "params": {"myint": 7, "myshort": 9}}, {"name": "base"}])
    assert res.rc == 0, res.explain()
    assert sim.values(HELLO)["myshort"] == "9"

    # drift: someone wrote a live value by hand
    (sim.sys / HELLO / "parameters" / "myint").write_text("99\n")
    res = sim.run([{"name": "hello-5", "params": {"myint": 7, "myshort": 9}}, {"name": "base"}])
    assert res.rc == 0, res.explain()
    assert (sim.sys / HELLO / "parameters" / "myint").read_text() == "7\n"
    assert sim.kmsg_lines().count("hello_5: goodbye, world") == 3

    # a new build of the module was installed
    sim.spec["modules"]["base"]["installed_srcversion"] = "SRC2"
    sim.save_spec()
    res = sim.run([{"name": "hello-5", "params": {"myint": 7, "myshort": 9}}, {"name": "base"}])
    assert res.rc == 0, res.explain()
    assert sim.kmsg_lines().count("base: up") == loads_before + 1
    assert sim.kmsg_lines().count("hello_5: goodbye, world") == 3


def test_module_loaded_by_hand_with_hidden_params_is_reloaded_once(sim: Sim):
    sim.insmod_by_hand(HELLO, "myshort=3", "myint=42", "mystring=hello lab", "myintarray=10,-20,30")
    res = sim.run([{"name": "hello-5"}])
    assert res.rc == 0, res.explain()
    assert sim.values(HELLO)["myshort"] == "7"
    assert sim.run([{"name": "hello-5"}]).changed == 0


def test_kernel_refusal_puts_the_previous_configuration_back(sim: Sim):
    assert sim.run([{"name": "hello-5", "params": {"myint": 5}}]).rc == 0
    conf_before = (sim.modprobe_d / "hello-5.conf").read_text()
    fact_before = sim.fact()
    sim.spec["modules"][HELLO]["reject"] = {"myint": ["13"]}
    sim.save_spec()

    res = sim.run([{"name": "hello-5", "params": {"myint": 13}}])
    assert res.rc != 0
    message = " ".join(res.failure_messages())
    assert "hello-5" in message and "myint" in message, message
    assert "hello_5: `13' invalid for parameter `myint'" in message, message
    assert "previous configuration was loaded again" in message, message
    # loaded again as it was, hidden parameter included; files and fact as before
    assert sim.loaded(HELLO)
    assert sim.values(HELLO)["myint"] == "5"
    assert sim.values(HELLO)["myshort"] == "7"
    assert (sim.modprobe_d / "hello-5.conf").read_text() == conf_before
    assert sim.fact() == fact_before
    # and the good configuration is still idempotent
    assert sim.run([{"name": "hello-5", "params": {"myint": 5}}]).changed == 0


def test_wrong_manifest_type_kernel_message_and_nothing_left_loaded(sim: Sim, tmp_path: Path):
    modules = tmp_path / "modules"
    shutil.copytree(MODULES, modules)
    path = modules / "hello-5" / "module.yml"
    manifest = yaml.safe_load(path.read_text())
    for p in manifest["parameters"]:
        if p["name"] == "mylong":
            p["type"] = "charp"
            p["default"] = "9999"
    path.write_text(yaml.safe_dump(manifest))

    res = sim.run(
        [{"name": "hello-5", "params": {"mylong": "hello"}}],
        extra={"kmod_load_manifest_dir": str(modules)},
    )
    assert res.rc != 0
    message = " ".join(res.failure_messages())
    assert "hello_5: `hello' invalid for parameter `mylong'" in message, message
    assert "mylong=hello" in message, message
    assert "not loaded before and is left unloaded" in message, message
    assert not sim.loaded(HELLO)
    assert not (sim.modprobe_d / "hello-5.conf").exists()
    assert not (sim.modules_load_d / "hello-5.conf").exists()
    assert "hello-5" not in (sim.fact() or {}).get("modules", {})


def test_parameter_the_module_lacks_is_rolled_back(sim: Sim, tmp_path: Path):
    modules = tmp_path / "modules"
    shutil.copytree(MODULES, modules)
    path = modules / "base" / "module.yml"
    manifest = yaml.safe_load(path.read_text())
    manifest["parameters"].append(
        {"name": "ghost", "type": "int", "default": 0, "perm": "0644", "description": "x"}
    )
    path.write_text(yaml.safe_dump(manifest))
    res = sim.run(
        [{"name": "base", "params": {"ghost": 3}}],
        extra={"kmod_load_manifest_dir": str(modules)},
    )
    assert res.rc != 0
    message = " ".join(res.failure_messages())
    assert "ghost" in message and "unknown parameter 'ghost' ignored" in message, message
    assert not sim.loaded("base")


def test_fixed_major_taken_fails_before_touching_the_host(sim: Sim):
    sim.devices.write_text("Character devices:\n  1 mem\n 60 othermem\n\nBlock devices:\n")
    res = sim.run([{"name": "memory"}, {"name": "hello-5"}])
    assert res.rc != 0
    message = " ".join(res.failure_messages())
    assert "major 60" in message and "'othermem'" in message and "major=60" in message, message
    assert not sim.loaded("memory") and not sim.loaded(HELLO)
    assert not (sim.modprobe_d / "memory.conf").exists()
    # another major works
    res = sim.run([{"name": "memory", "params": {"major": 61}}])
    assert res.rc == 0, res.explain()
    assert " 61 memory" in sim.devices.read_text()


def test_dependencies_cascade_and_absent(sim: Sim):
    res = sim.run([{"name": "user", "params": {"secret": "s1"}}, {"name": "base"}])
    assert res.rc == 0, res.explain()
    assert sim.loaded("base") and sim.loaded("user")
    assert (sim.sys / "base" / "holders" / "user").exists()

    # base changes: user holds it, so user goes first and comes back after
    res = sim.run(
        [{"name": "user", "params": {"secret": "s1"}}, {"name": "base", "params": {"level": 2}}]
    )
    assert res.rc == 0, res.explain()
    assert sim.values("base")["level"] == "2"
    assert sim.values("user")["secret"] == "s1"
    lines = sim.kmsg_lines()
    tail = lines[lines.index("user: down") :]
    assert tail == ["user: down", "base: down", "base: up", "user: up"], lines

    # user absent: unloaded, its files removed, base stays
    res = sim.run([{"name": "user", "state": "absent"}, {"name": "base", "params": {"level": 2}}])
    assert res.rc == 0, res.explain()
    assert not sim.loaded("user") and sim.loaded("base")
    assert not (sim.modprobe_d / "user.conf").exists()
    assert not (sim.modules_load_d / "user.conf").exists()
    assert sim.fact()["modules"]["user"]["state"] == "absent"


def test_config_state_and_persist_false(sim: Sim):
    res = sim.run(
        [
            {"name": "hello-5", "state": "config", "persist": False},
            {"name": "base", "persist": False, "params": {"level": 3}},
            {"name": "memory", "state": "config"},
        ]
    )
    assert res.rc == 0, res.explain()
    assert not sim.loaded(HELLO) and not sim.loaded("memory")
    assert (sim.modprobe_d / "hello-5.conf").exists()
    assert not (sim.modules_load_d / "hello-5.conf").exists()
    assert not (sim.modprobe_d / "memory.conf").exists()  # no params: no options file
    assert (sim.modules_load_d / "memory.conf").exists()
    assert sim.loaded("base") and sim.values("base")["level"] == "3"
    assert not (sim.modprobe_d / "base.conf").exists()
    assert not (sim.modules_load_d / "base.conf").exists()


def test_module_in_use_blocks_the_reload(sim: Sim):
    assert sim.run([{"name": "base"}]).rc == 0
    (sim.sys / "base" / "refcnt").write_text("1\n")
    res = sim.run([{"name": "base", "params": {"level": 5}}])
    assert res.rc != 0
    message = " ".join(res.failure_messages())
    assert "base must be unloaded" in message and "in use" in message, message
    assert str(sim.values("base")["level"]) == "1"


def test_missing_unload_message_fails_the_play(sim: Sim):
    assert sim.run([{"name": "base"}]).rc == 0
    sim.spec["modules"]["base"]["unload_lines"] = []
    sim.save_spec()
    res = sim.run([{"name": "base", "params": {"level": 4}}])
    assert res.rc != 0
    message = " ".join(res.failure_messages())
    assert "base was unloaded but the kernel log has no line matching base: down" in message
    assert sim.values("base")["level"] == "4"
    # the fact records the load that did happen: the next run has nothing to do
    assert sim.run([{"name": "base", "params": {"level": 4}}]).changed == 0


def test_dependency_failure_skips_its_users(sim: Sim):
    sim.spec["modules"]["base"]["reject"] = {"level": ["9"]}
    sim.save_spec()
    res = sim.run([{"name": "base", "params": {"level": 9}}, {"name": "user"}, {"name": "memory"}])
    assert res.rc != 0
    message = " ".join(res.failure_messages())
    assert "base: the kernel refused parameter level=9" in message, message
    assert "user: not loaded because base, which it depends on, failed" in message, message
    assert not sim.loaded("base") and not sim.loaded("user")
    assert sim.loaded("memory")  # independent modules still get loaded


def test_tags_run_a_single_phase(sim: Sim):
    res = sim.run([{"name": "base"}], tags="kmod_load_configure")
    assert res.rc == 0, res.explain()
    assert (sim.modules_load_d / "base.conf").exists()
    assert not sim.loaded("base")
    res = sim.run([{"name": "base"}], tags="kmod_load_load")
    assert res.rc == 0, res.explain()
    assert sim.loaded("base")
