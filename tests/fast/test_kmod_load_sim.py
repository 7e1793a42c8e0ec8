"""The kmod_load role end to end against a pretend kernel (see kmod_sim/harness.py).

Covers: first load with files and fact, the idempotent re-run (one probe, nothing
else touches the host), check mode, reload only on change (live value, hidden
parameter, installed build), a parameter the kernel refuses (previous configuration
back, the kernel's message in the failure), a major already taken, dependencies and
their cascade, both absent (the user unloaded first), absent/config/persist, a module
in use, missing unload messages; fixed-size arrays, a hidden parameter reloaded behind
the role's back (read from the module's message), /dev nodes removed or changed by hand,
a refused init quoted in the kernel's words, and the modules no other depends on loaded
in one kmodlab.lab.kmod_modprobe call that goes on past a refused one.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
import yaml
from kmod_sim.harness import MODULES, Sim, available, manifest_vars

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
    assert conf.startswith("# Managed by kmodlab (kmod_load): ")
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
        extra=manifest_vars(modules),
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
        extra=manifest_vars(modules),
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


def test_both_absent_unloads_the_user_before_what_it_uses(sim: Sim):
    # the pretend kernel, like the real one, refuses to unload base while user holds it
    assert sim.run([{"name": "user"}, {"name": "base"}]).rc == 0
    assert (sim.sys / "base" / "holders" / "user").exists()
    # listed dependency first: the order of the entries does not matter
    res = sim.run([{"name": "base", "state": "absent"}, {"name": "user", "state": "absent"}])
    assert res.rc == 0, res.explain()
    assert not sim.loaded("user") and not sim.loaded("base")
    lines = sim.kmsg_lines()
    assert lines[lines.index("user: down") :] == ["user: down", "base: down"], lines
    assert not (sim.modules_load_d / "user.conf").exists()
    assert not (sim.modules_load_d / "base.conf").exists()


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


def test_independent_modules_load_in_one_call_past_a_refused_one(sim: Sim):
    """Modules no other depends on are loaded by one kmodlab.lab.kmod_modprobe call, one
    modprobe each in load order; the kernel refusing the middle one neither stops the
    last one nor leaves the refused one changed: it is put back as it was, and the play
    fails with the kernel's message, as when a module loaded on its own is refused."""
    assert sim.run([{"name": "hello-5", "params": {"myint": 5}}]).rc == 0
    conf_before = (sim.modprobe_d / "hello-5.conf").read_text()
    sim.spec["modules"][HELLO]["reject"] = {"myint": ["13"]}
    sim.save_spec()
    calls_before = len(sim.modprobe_calls())

    res = sim.run(
        [{"name": "base"}, {"name": "hello-5", "params": {"myint": 13}}, {"name": "memory"}]
    )
    assert res.rc != 0
    message = " ".join(m for m in res.failure_messages() if m.startswith("hello-5"))
    assert message.startswith(
        "hello-5: the kernel refused parameter myint=13: hello_5: `13' invalid for parameter "
        "`myint'; modprobe said \"could not insert 'hello_5': Invalid argument\". "
        "The previous configuration was loaded again ("
    ), message
    assert "myint=5" in message, message
    # the two others are loaded; hello-5 runs as it was, with its files and fact entry
    assert sim.loaded("base") and sim.loaded("memory")
    assert sim.loaded(HELLO) and sim.values(HELLO)["myint"] == "5"
    assert sim.values(HELLO)["mystring"] == "hello lab"
    assert (sim.modprobe_d / "hello-5.conf").read_text() == conf_before
    assert sim.fact()["modules"]["hello-5"]["params"]["myint"] == 5
    assert {"base", "memory"} <= set(sim.fact()["modules"])

    # one module call loaded the three of them, one modprobe each, in load order
    batch = [r for _n, r in res.tasks() if r.get("action") == "kmodlab.lab.kmod_modprobe"]
    assert len(batch) == 1, [n for n, _r in res.tasks()]
    assert [m["name"] for m in batch[0]["modules"]] == ["base", "hello-5", "memory"]
    assert batch[0]["failed_modules"] == ["hello-5"]
    calls = sim.modprobe_calls()[calls_before:]
    assert [c.split()[:2] for c in calls] == [["--", "base"], ["--", HELLO], ["--", "memory"]]
    assert "myint=13" in calls[1].split(), calls
    # none of them went the one-at-a-time way (community.general.modprobe), but for the
    # restore of hello-5 with its previous parameters
    one_by_one = [
        n
        for n, r in res.tasks()
        if r.get("action") == "community.general.modprobe" and not r.get("skipped")
    ]
    assert [n.split(" : ")[-1] for n in one_by_one] == [
        "Load again with the previous parameters - hello-5"
    ], one_by_one


def test_tags_run_a_single_phase(sim: Sim):
    res = sim.run([{"name": "base"}], tags="kmod_load_configure")
    assert res.rc == 0, res.explain()
    assert (sim.modules_load_d / "base.conf").exists()
    assert not sim.loaded("base")
    res = sim.run([{"name": "base"}], tags="kmod_load_load")
    assert res.rc == 0, res.explain()
    assert sim.loaded("base")


def planned(res) -> list[str]:
    """The play's "load, reload, unload and why" lines."""
    for name, result in res.tasks():
        if name.endswith("Show what will be loaded, reloaded and unloaded, and why"):
            msg = result.get("msg") or []
            return msg if isinstance(msg, list) else [str(msg)]
    return []


def test_fixed_size_arrays_compare_as_the_kernel_shows_them(sim: Sim):
    mods = [{"name": "base", "params": {"slots": [5, 6], "flags": [False]}}]
    res = sim.run(mods)
    assert res.rc == 0, res.explain()
    # no count variable: every element shows, those not given as initialised
    assert (sim.sys / "base" / "parameters" / "slots").read_text() == "5,6,-1,-1\n"
    assert (sim.sys / "base" / "parameters" / "flags").read_text() == "N,Y,N\n"
    # modprobe is given only the elements asked for
    assert "options base flags=N slots=5,6\n" in (sim.modprobe_d / "base.conf").read_text()
    again = sim.run(mods)
    assert again.rc == 0 and again.changed == 0, again.explain()

    # an element the lab does not set, changed by hand, is drift too
    (sim.sys / "base" / "parameters" / "flags").write_text("N,N,N\n")
    res = sim.run(mods)
    assert res.rc == 0, res.explain()
    assert "base: reload (parameter flags is 'N,N,N', wanted 'N,Y,N')" in planned(res)
    assert (sim.sys / "base" / "parameters" / "flags").read_text() == "N,Y,N\n"
    assert sim.run(mods).changed == 0


def test_hidden_parameter_changed_by_a_reload_behind_the_back(sim: Sim):
    assert sim.run([{"name": "hello-5"}]).rc == 0
    # the fact still says myshort=7; only the module's own message tells otherwise
    sim.rmmod_by_hand(HELLO)
    sim.insmod_by_hand(HELLO, "myshort=3")
    assert sim.values(HELLO)["myshort"] == "3"
    res = sim.run([{"name": "hello-5"}])
    assert res.rc == 0, res.explain()
    assert (
        "hello-5: reload (parameter myshort (not visible in sysfs) is '3' by the module's "
        "message 'hello_5: myshort=3', wanted '7')"
    ) in planned(res), planned(res)
    assert sim.values(HELLO)["myshort"] == "7"
    assert sim.run([{"name": "hello-5"}]).changed == 0


def test_dev_node_removed_or_changed_is_made_again(sim: Sim):
    mods = [{"name": "memory"}]
    node = sim.dev / "memory"
    assert sim.run(mods).rc == 0
    assert stat.S_ISCHR(node.stat().st_mode) and stat.S_IMODE(node.stat().st_mode) == 0o666

    def repaired(reason: str) -> None:
        res = sim.run(mods)
        assert res.rc == 0, res.explain()
        assert f"memory: reload ({reason})" in planned(res), planned(res)
        st = node.stat()
        assert stat.S_ISCHR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o666
        assert st.st_rdev == os.makedev(60, 0)

    node.chmod(0o600)
    repaired("/dev/memory has mode 0600, the manifest says 0666")
    node.unlink()
    repaired("/dev/memory is missing (manifest expect.dev_nodes)")
    # something else at the path: the kernel would not replace it, so it is removed
    node.unlink()
    node.write_text("squatter\n")
    repaired("/dev/memory is a file, not a char device")
    node.unlink()
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    repaired("/dev/memory is char 1:3, not the node of 'memory' (major 60, minor 0)")
    assert sim.run(mods).changed == 0


# A second module tries to create the device class another one holds: the kernel
# warns with a stack dump, then kobject_add_internal fails with -EEXIST.
CLASS_TAKEN = [
    [4, "sysfs: cannot create duplicate filename '/class/chardev'"],
    [4, "CPU: 1 PID: 1733 Comm: modprobe Tainted: G           OE      6.1.0-18-amd64 #1"],
    [4, "Hardware name: QEMU Standard PC (Q35 + ICH9, 2009), BIOS 1.16.2-debian 04/01/2014"],
    [4, "Call Trace:"],
    [4, " <TASK>"],
    [4, " dump_stack_lvl+0x44/0x5c"],
    [4, " sysfs_warn_dup.cold+0x17/0x24"],
    [4, " sysfs_create_dir_ns+0xbc/0xd0"],
    [4, " kobject_add_internal+0xb1/0x2b0"],
    [4, " kobject_add+0x7e/0xb0"],
    [4, " ? _raw_spin_unlock+0xa/0x30"],
    [4, " __class_register+0xd2/0x170"],
    [4, " __class_create+0x48/0x80"],
    [4, " ? 0xffffffffc0a4d000"],
    [4, " memory_start+0x6a/0x1000 [memory]"],
    [4, " do_one_initcall+0x5a/0x220"],
    [4, " entry_SYSCALL_64_after_hwframe+0x64/0xce"],
    [4, "RIP: 0033:0x7f6d1a8f9729"],
    [4, "RSP: 002b:00007ffc65d3d5a8 EFLAGS: 00000246 ORIG_RAX: 0000000000000139"],
    [4, "R10: 0000000000000005 R11: 0000000000000246 R12: 0000000000040000"],
    [4, " </TASK>"],
    [
        3,
        "kobject_add_internal failed for chardev with -EEXIST, don't try to register "
        "things with the same name in the same directory.",
    ],
]


def test_refused_init_quotes_the_kernel_not_the_stack(sim: Sim):
    sim.spec["modules"]["memory"]["init_error"] = {"errno": "EEXIST", "lines": CLASS_TAKEN}
    sim.save_spec()
    res = sim.run([{"name": "hello-5"}, {"name": "memory"}])
    assert res.rc != 0
    message = " ".join(m for m in res.failure_messages() if m.startswith("memory"))
    assert message == (
        'memory: loading with no parameters failed; modprobe said "could not insert '
        "'memory': File exists\"; the kernel said: sysfs: cannot create duplicate filename "
        "'/class/chardev' | kobject_add_internal failed for chardev with -EEXIST, don't try "
        "to register things with the same name in the same directory. memory was not "
        "loaded before and is left unloaded."
    ), message
    assert "+0x" not in message
    assert not sim.loaded("memory") and sim.loaded(HELLO)
