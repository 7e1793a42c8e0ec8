"""What kmod_load and kmod_verify read off a host besides plain sysfs values.

- fixed-size array parameters (``counted: false``): sysfs shows every element, the ones
  not given as the array was initialised; both sides compare that way;
- parameters sysfs does not show (perm 0): their value comes from the module's own
  load message (manifest ``log``), through one parser for both sides;
- /dev nodes of a loaded module: missing or changed ones make kmod_load reload it;
- a refused load: the kernel's explaining lines, not the frames of a stack dump.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.kmodlab.lab.plugins.filter import kmod_load as filters
from ansible_collections.kmodlab.lab.plugins.module_utils import kernel_log as klog
from ansible_collections.kmodlab.lab.plugins.module_utils import kmod as k
from ansible_collections.kmodlab.lab.plugins.module_utils import nodes as kn
from ansible_collections.kmodlab.lab.plugins.module_utils import params as kp
from pydantic import ValidationError

from kmodlab.manifest import Parameter
from kmodlab.selection import resolve
from kmodlab.verify import checks
from kmodlab.verify.observe import Observation

MODULES = Path(__file__).parent / "fixtures" / "kmod" / "modules"
KERNEL = "6.1.0-18-amd64"


def recs(*entries: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in resolve(MODULES, list(entries))}


def param(record: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in record["manifest"]["parameters"] if p["name"] == name)


def loaded_state(live=None, logged=None, nodes=None):
    return {
        "loaded": True,
        "initstate": "live",
        "refcount": 0,
        "holders": [],
        "live": dict(live or {}),
        "missing": [],
        "unreadable": [],
        "srcversion": None,
        "version": None,
        "logged": dict(logged or {}),
        "dev_nodes": dict(nodes or {}),
    }


# ------------------------------------------------------------------ manifest


def fixed(**changes: Any) -> dict[str, Any]:
    base = {
        "name": "slots",
        "type": "int",
        "array": True,
        "counted": False,
        "max_count": 4,
        "default": [-1, -1, -1, -1],
        "perm": "0444",
        "description": "x",
    }
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"default": [-1, -1]}, "default must list all 4 initial values, it has 2"),
        ({"array": False, "default": 1, "max_count": None}, "counted: false is for array"),
        ({"counted": True, "perm": "0000", "log": "x=(\\d+)"}, "named group (?P<value>"),
        ({"counted": True, "log": "slots=(?P<value>.*)"}, "log is for parameters sysfs does"),
        ({"counted": True, "perm": "0000", "log": "x=(?P<value>"}, "not a valid regular"),
    ],
)
def test_manifest_refuses(changes, words):
    with pytest.raises(ValidationError, match=words.replace("(", r"\(").replace("?", r"\?")):
        Parameter.model_validate(fixed(**changes))


def test_manifest_accepts_fixed_arrays_and_log():
    p = Parameter.model_validate(fixed())
    assert p.counted is False and p.log is None
    hidden = Parameter.model_validate(
        fixed(counted=True, perm="0000", log=r"m: slots=(?P<value>[-0-9,]+)")
    )
    assert hidden.log and not hidden.visible
    # a wanted value may set fewer elements than the array holds
    assert p.validate_value([5]) == [5]
    with pytest.raises(ValueError, match="at most 4"):
        p.validate_value([1, 2, 3, 4, 5])


# ------------------------------------------------------------------ fixed-size arrays


@pytest.mark.parametrize(
    ("decl", "value", "shown", "given"),
    [
        (fixed(), [10, 11], "10,11,-1,-1", "10,11"),
        (fixed(), [1, 2, 3, 4], "1,2,3,4", "1,2,3,4"),
        (fixed(type="bool", default=[True, True, False, False]), [False], "N,Y,N,N", "N"),
        (fixed(type="bool", default=[True, True, False, False]), [1, 0, 1], "Y,N,Y,N", "Y,N,Y"),
        (fixed(counted=True, default=[1, 2]), [10, 11], "10,11", "10,11"),
    ],
)
def test_fixed_size_arrays_on_both_sides(decl, value, shown, given):
    # kmod_load (host side) and kmod_verify (controller side) use the one normalisation
    assert checks.sysfs_value is kp.sysfs_value
    assert kp.sysfs_value(decl, value) == shown
    assert kp.arg_value(decl, value) == given
    assert kp.param_tokens({"slots": decl}, {"slots": value}) == [f"slots={given}"]


def test_fixed_size_array_plan_and_previous():
    base = recs({"name": "base", "params": {"slots": [5, 6], "flags": [False]}})["base"]
    live = {"level": "1", "slots": "5,6,-1,-1", "flags": "N,Y,N"}
    recorded = {"state": "present", "params": base["params"]}
    assert k.reload_reasons(base, loaded_state(live), recorded) == []
    drift = dict(live, flags="N,N,N")
    assert k.reload_reasons(base, loaded_state(drift), recorded) == [
        "parameter flags is 'N,N,N', wanted 'N,Y,N'"
    ]
    # no longer wanted: back to its default, which sysfs shows whole
    assert k.reload_reasons(
        dict(base, params={}), loaded_state(dict(live, slots="-1,-1,-1,-1")), recorded
    ) == ["parameter flags is no longer wanted (back to its default)"]
    # to load it again as it runs: what sysfs shows, defaults left out
    assert k.previous_params(base, loaded_state(live), recorded) == {
        "flags": "N,Y,N",
        "slots": "5,6,-1,-1",
    }
    assert (
        k.previous_params(
            base, loaded_state({"level": "1", "slots": "-1,-1,-1,-1", "flags": "Y,Y,N"}), None
        )
        == {}
    )


def verify_obs(base_live: dict[str, str]) -> Observation:
    stat_ = {"/sys/module/base/initstate": {"exists": True, "type": "file", "mode": 0o444}}
    read = {"/sys/module/base/initstate": "live\n"}
    for name, text in base_live.items():
        read[f"/sys/module/base/parameters/{name}"] = text + "\n"
    read["/etc/modprobe.d/base.conf"] = "options base flags=N slots=5,6\n"
    read["/etc/modules-load.d/base.conf"] = "base\n"
    for path in ("/etc/modprobe.d/base.conf", "/etc/modules-load.d/base.conf"):
        stat_[path] = {"exists": True, "type": "file", "mode": 0o644}
    return Observation(
        {"stat": stat_, "read": {p: {"ok": True, "text": t} for p, t in read.items()}}
    )


def test_verify_fixed_size_arrays():
    base = recs({"name": "base", "params": {"slots": [5, 6], "flags": [False]}})["base"]
    good = verify_obs({"slots": "5,6,-1,-1", "flags": "N,Y,N"})
    assert checks.params(base, good, KERNEL) == []
    # the options line holds only the elements given
    assert checks.persistence(base, good, KERNEL) == []
    bad = verify_obs({"slots": "5,6", "flags": "N,N,N"})
    assert checks.params(base, bad, KERNEL) == [
        "flags is 'N,N,N', wanted 'N,Y,N'",
        "slots is '5,6', wanted '5,6,-1,-1'",
    ]


# ------------------------------------------------------------------ the module's own message


def test_logged_value_newest_since_the_last_load():
    decl = {"name": "myshort", "type": "short", "log": r"hello_5: myshort=(?P<value>-?\w+)\b"}
    unload = [r"hello_5: goodbye, world"]
    lines = [
        "hello_5: myshort=3",
        "hello_5: goodbye, world",
        "hello_5: myshort=0x10",
        "other: myshort=99",
        "hello_5: myshort=-4",
    ]
    assert klog.logged_value(decl, lines, unload) == {"text": "-4", "line": "hello_5: myshort=-4"}
    assert klog.logged_value(decl, lines[:3], unload)["text"] == "16"  # normalised like sysfs
    # unloaded since it printed: nothing of the current load
    assert klog.logged_value(decl, lines[:2], unload) is None
    assert klog.logged_value(decl, [], unload) is None
    assert klog.logged_value(dict(decl, log=None), lines) is None
    flag = {"name": "f", "type": "bool", "log": r"m: f=(?P<value>\w+)"}
    assert klog.logged_value(flag, ["m: f=true"])["text"] == "Y"
    word = {"name": "s", "type": "charp", "log": r"m: s=\"(?P<value>[^\"]*)\""}
    assert klog.logged_value(word, ['m: s="a b"'])["text"] == "a b"


HELLO_RECORD = {
    "state": "present",
    "params": {"myint": 42, "myshort": 7, "mystring": "hello lab", "myintarray": [10, -20, 30]},
}
HELLO_LIVE = {"myint": "42", "mystring": "hello lab", "myintarray": "10,-20,30"}


def test_kmod_load_reads_hidden_parameters_from_the_message():
    hello = recs({"name": "hello-5"})["hello-5"]
    lines = ["hello_5: hello, world; myint=42", "hello_5: myshort=3"]
    logged = klog.logged_params(hello, lines)
    assert logged == {"myshort": {"text": "3", "line": "hello_5: myshort=3"}}
    # reloaded behind the role's back: the fact still says 7, the module says 3
    assert k.reload_reasons(hello, loaded_state(HELLO_LIVE, logged), HELLO_RECORD) == [
        "parameter myshort (not visible in sysfs) is '3' by the module's message "
        "'hello_5: myshort=3', wanted '7'"
    ]
    right = klog.logged_params(hello, ["hello_5: myshort=7"])
    assert k.reload_reasons(hello, loaded_state(HELLO_LIVE, right), HELLO_RECORD) == []
    # loaded by hand without a record: what the module printed is enough
    assert k.reload_reasons(hello, loaded_state(HELLO_LIVE, right), None) == []
    # nothing printed (ring buffer moved on): back to the record
    assert k.reload_reasons(hello, loaded_state(HELLO_LIVE), None) == [
        "loaded without a kmodlab record; parameters myshort cannot be read back"
    ]
    # not wanted: the module must run with its default
    unset = dict(hello, params={k: v for k, v in hello["params"].items() if k != "myshort"})
    assert "wanted '1'" in k.reload_reasons(unset, loaded_state(HELLO_LIVE, right), None)[0]
    # to load it again as it runs: the value it printed
    assert k.previous_params(hello, loaded_state(HELLO_LIVE, logged), HELLO_RECORD)["myshort"] == (
        "3"
    )


def hello_obs(lines: list[str], source: str = "kmsg") -> Observation:
    read = {"/sys/module/hello_5/initstate": "live\n"}
    for name, text in HELLO_LIVE.items():
        read[f"/sys/module/hello_5/parameters/{name}"] = text + "\n"
    return Observation(
        {
            "stat": {"/sys/module/hello_5/initstate": {"exists": True, "type": "file"}},
            "read": {p: {"ok": True, "text": t} for p, t in read.items()},
            "kernel_log": {"source": source, "lines": lines},
        }
    )


def test_verify_reads_hidden_parameters_from_the_message():
    hello = recs({"name": "hello-5"})["hello-5"]
    assert checks.params(hello, hello_obs(["hello_5: myshort=7"]), KERNEL) == []
    assert checks.params(hello, hello_obs(["hello_5: myshort=8"]), KERNEL) == [
        "myshort is '8' by the module's message 'hello_5: myshort=8', wanted '7'"
    ]
    since = ["hello_5: myshort=7", "hello_5: goodbye, world"]
    assert (
        "no kernel message since the last load matches"
        in (checks.params(hello, hello_obs(since), KERNEL)[0])
    )
    unreadable = checks.params(hello, hello_obs([], source="none"), KERNEL)
    assert unreadable[0].startswith("not observable: myshort")


def test_verify_hidden_parameter_without_log_is_not_observable():
    user = recs({"name": "base"}, {"name": "user", "params": {"secret": "s1"}})["user"]
    obs = Observation(
        {
            "stat": {"/sys/module/user/initstate": {"exists": True, "type": "file"}},
            "read": {},
            "kernel_log": {"source": "kmsg", "lines": []},
        }
    )
    found = checks.params(user, obs, KERNEL)
    assert found == [
        "not observable: secret has perm 0000, so no file in sysfs, and the manifest gives "
        "no log regex to read it from the module's messages (wanted 's1')"
    ]
    assert all(p.startswith(checks.NOT_OBSERVABLE) for p in found)


# ------------------------------------------------------------------ /dev nodes


NODE = {"exists": True, "type": "char", "mode": 0o666, "link": False, "major": 60, "minor": 0}
DEVICES = {"char": {60: ["memory"]}, "block": {}}


@pytest.mark.parametrize(
    ("node", "reason", "foreign"),
    [
        ({"exists": False}, "/dev/memory is missing (manifest expect.dev_nodes)", False),
        (dict(NODE, mode=0o600), "/dev/memory has mode 0600, the manifest says 0666", False),
        (
            {"exists": True, "type": "file", "mode": 0o644},
            "/dev/memory is a file, not a char",
            True,
        ),
        (
            dict(NODE, major=1, minor=3),
            "/dev/memory is char 1:3, not the node of 'memory' (major 60, minor 0)",
            True,
        ),
        (dict(NODE, minor=1), "/dev/memory is char 60:1, not the node of 'memory'", True),
    ],
)
def test_dev_node_reasons(node, reason, foreign):
    memory = recs({"name": "memory"})["memory"]
    st = loaded_state({"major": "60"}, nodes={"/dev/memory": node})
    found = kn.dev_node_problems(memory, st["dev_nodes"], DEVICES)
    assert len(found) == 1 and found[0][1].startswith(reason) and found[0][2] is foreign
    recorded = {"state": "present", "params": {}}
    assert k.reload_reasons(memory, st, recorded, proc_devices=DEVICES) == [found[0][1]]
    out = k.plan([memory], {"memory": st}, {"memory": recorded}, proc_devices=DEVICES)
    assert out["actions"] == {"memory": "reload"} and out["reasons"]["memory"] == [found[0][1]]


def test_dev_node_as_the_manifest_says_is_no_reason():
    memory = recs({"name": "memory"})["memory"]
    st = loaded_state({"major": "60"}, nodes={"/dev/memory": NODE})
    assert (
        k.reload_reasons(memory, st, {"state": "present", "params": {}}, None, None, DEVICES) == []
    )
    # not read (e.g. an older probe): nothing to say
    assert kn.dev_node_problems(memory, {}, DEVICES) == []


def test_dev_node_state(tmp_path: Path):
    (tmp_path / "dev").mkdir()
    assert kn.dev_node_state(str(tmp_path), "/dev/memory") == {
        "exists": False,
        "error": "No such file or directory",
    }
    (tmp_path / "dev" / "memory").write_text("x")
    os.chmod(tmp_path / "dev" / "memory", 0o640)
    assert kn.dev_node_state(str(tmp_path), "/dev/memory") == {
        "exists": True,
        "type": "file",
        "mode": 0o640,
        "link": False,
    }
    if os.geteuid() == 0:
        (tmp_path / "dev" / "memory").unlink()
        os.mknod(tmp_path / "dev" / "memory", stat.S_IFCHR | 0o666, os.makedev(60, 0))
        os.chmod(tmp_path / "dev" / "memory", 0o666)
        assert kn.dev_node_state(str(tmp_path), "/dev/memory") == NODE


# ------------------------------------------------------------------ a refused load

# Modelled on what the kernel printed when a second module tried to create the device
# class "chardev" that the lab's chardev holds (levels as /dev/kmsg gives them).
CLASS_TAKEN = [
    (6, "hello_5: hello, world; myint=42"),
    (4, "sysfs: cannot create duplicate filename '/class/chardev'"),
    (4, "CPU: 1 PID: 1733 Comm: modprobe Tainted: G           OE      6.1.0-18-amd64 #1"),
    (4, "Hardware name: QEMU Standard PC (Q35 + ICH9, 2009), BIOS 1.16.2-debian 04/01/2014"),
    (4, "Call Trace:"),
    (4, " <TASK>"),
    (4, " dump_stack_lvl+0x44/0x5c"),
    (4, " sysfs_warn_dup.cold+0x17/0x24"),
    (4, " sysfs_create_dir_ns+0xbc/0xd0"),
    (4, " kobject_add_internal+0xb1/0x2b0"),
    (4, " ? _raw_spin_unlock+0xa/0x30"),
    (4, " __class_create+0x48/0x80"),
    (4, " ? 0xffffffffc0a4d000"),
    (4, " chardev_init+0x6a/0x1000 [chardup]"),
    (4, " do_one_initcall+0x5a/0x220"),
    (4, "RIP: 0033:0x7f6d1a8f9729"),
    (4, "Code: Unable to access opcode bytes at 0x7f6d1a8f96ff."),
    (4, "RSP: 002b:00007ffc65d3d5a8 EFLAGS: 00000246 ORIG_RAX: 0000000000000139"),
    (4, "RAX: ffffffffffffffda RBX: 000055e0c1a2a9b0 RCX: 00007f6d1a8f9729"),
    (4, "R10: 0000000000000005 R11: 0000000000000246 R12: 0000000000040000"),
    (4, " </TASK>"),
    (
        3,
        "kobject_add_internal failed for chardev with -EEXIST, don't try to register "
        "things with the same name in the same directory.",
    ),
    (3, "chardup: cannot create class chardev: error -17"),
    (6, "other: unrelated news"),
]
EXPLAINED = [
    "sysfs: cannot create duplicate filename '/class/chardev'",
    "kobject_add_internal failed for chardev with -EEXIST, don't try to register things "
    "with the same name in the same directory.",
    "chardup: cannot create class chardev: error -17",
]
CHARDUP = {"name": "chardup", "kmod": "chardup"}


def test_trace_lines_are_told_from_reasons():
    traces = [m for _ts, m in CLASS_TAKEN[2:21]]
    assert all(klog.trace_line(m) for m in traces), [m for m in traces if not klog.trace_line(m)]
    assert not any(klog.trace_line(m) for m in EXPLAINED)
    for line in (
        "------------[ cut here ]------------",
        "WARNING: CPU: 0 PID: 812 at fs/sysfs/dir.c:31 sysfs_warn_dup+0x5b/0x70",
        "Modules linked in: chardev(OE) memory(OE) hello_5(OE)",
        "---[ end trace 0000000000000000 ]---",
        "FS:  00007f6d1a7f1740(0000) GS:ffff9a3e3bd00000(0000) knlGS:0000000000000000",
        "CR2: 00007f6d1a8f96ff CR3: 0000000102b8e000 CR4: 0000000000750ee0",
        " <IRQ>",
    ):
        assert klog.trace_line(line), line
    for line in ("memory: cannot register major 60: error -16", "RAS: Correctable Errors"):
        assert not klog.trace_line(line), line


def test_failure_lines_quote_the_reason():
    regex = klog.mention_regex(CHARDUP)
    assert klog.failure_lines(CLASS_TAKEN, regex) == EXPLAINED
    # without levels (dmesg), the words of a line tell a warning
    plain = [(None, m) for _ts, m in CLASS_TAKEN]
    assert klog.failure_lines(plain, regex) == EXPLAINED
    # the module prints nothing and is in no frame: warnings and errors since the load
    quiet = [(lvl, m) for lvl, m in CLASS_TAKEN if "chardup" not in m]
    assert klog.failure_lines(quiet, regex) == EXPLAINED[:2]
    # what came before the module's last unload message belongs to that unload
    unload = [(3, "chardup: cannot free something"), (6, "chardup: bye")]
    assert klog.failure_lines(unload + CLASS_TAKEN, regex, ["chardup: bye"]) == EXPLAINED


def test_modprobe_error():
    assert (
        klog.modprobe_error("modprobe: ERROR: could not insert 'memory': Device or resource busy\n")
        == "could not insert 'memory': Device or resource busy"
    )
    twice = "modprobe: ERROR: could not insert 'x': File exists\n" * 2
    assert klog.modprobe_error(twice) == "could not insert 'x': File exists"
    assert klog.modprobe_error("something else") is None


def test_failure_message_quotes_modprobe_and_the_kernel():
    record = {"name": "chardup", "kmod": "chardup", "manifest": {"parameters": []}, "params": {}}
    err = "modprobe: ERROR: could not insert 'chardup': File exists\n"
    failed = {"msg": err, "stderr": err, "rc": 1}
    regex = klog.mention_regex(CHARDUP)
    entry = {
        "kernel_explain": klog.failure_lines(CLASS_TAKEN, regex),
        "kernel_log": [m for _ts, m in CLASS_TAKEN if regex.search(m)],
    }
    message = filters.kmod_load_failure(record, failed, entry, False, {"previous": {}})
    assert message == (
        'chardup: loading with no parameters failed; modprobe said "could not insert '
        "'chardup': File exists\"; the kernel said: " + " | ".join(EXPLAINED) + ". chardup was "
        "not loaded before and is left unloaded."
    )
    assert "+0x" not in message
    # an older probe entry without kernel_explain: its lines without the frames
    old = filters.kmod_load_failure(
        record, failed, {"kernel_log": entry["kernel_log"]}, False, {"previous": {}}
    )
    assert "+0x" not in old and "chardup: cannot create class chardev: error -17" in old
    # a squatted major: memory's own line and modprobe's EBUSY
    memory = {"name": "memory", "kmod": "memory", "manifest": {}, "params": {"major": 60}}
    busy = "modprobe: ERROR: could not insert 'memory': Device or resource busy\n"
    said = filters.kmod_load_failure(
        memory,
        {"msg": busy},
        {"kernel_explain": ["memory: cannot register major 60: error -16"]},
        False,
        {"previous": {}},
    )
    assert said.startswith(
        "memory: loading with major=60 failed; modprobe said \"could not insert 'memory': "
        'Device or resource busy"; the kernel said: memory: cannot register major 60: error -16.'
    ), said


def test_hidden_mismatch_after_loading_is_a_problem():
    entry = {
        "name": "hello-5",
        "loaded": True,
        "mismatches": [
            {
                "param": "myshort",
                "wanted": "7",
                "live": "1",
                "source": "kernel log",
                "line": "hello_5: myshort=1",
            }
        ],
    }
    assert filters.kmod_load_problems(entry) == [
        "hello-5: parameter myshort is '1' after loading by the module's message "
        "'hello_5: myshort=1', wanted '7'"
    ]


def test_a_module_signed_again_is_reloaded_so_the_kernel_checks_the_new_signature():
    base = recs({"name": "base", "params": {"slots": [5, 6], "flags": [False]}})["base"]
    live = {"level": "1", "slots": "5,6,-1,-1", "flags": "N,Y,N"}
    recorded = {"state": "present", "params": base["params"], "sig_key": "AA:01"}
    same = {"build_id": "b1", "sig_key": "AA:01"}
    assert k.reload_reasons(base, loaded_state(live), recorded, installed=same) == []
    resigned = {"build_id": "b1", "sig_key": "BB:02"}
    assert k.reload_reasons(base, loaded_state(live), recorded, installed=resigned) == [
        "the installed module is signed with key BB:02, it was loaded when signed with key AA:01"
    ]
    # nothing recorded (loaded by an older kmodlab, or by hand): no guess
    unrecorded = {"state": "present", "params": base["params"]}
    assert k.reload_reasons(base, loaded_state(live), unrecorded, installed=resigned) == []
