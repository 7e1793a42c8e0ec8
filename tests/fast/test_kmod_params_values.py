"""Parameter values as the kernel takes and shows them, and the kmod_load plan.

Unit tests of plugins/module_utils (params, kernel_log, proc_devices, kmod: shared by
the probe module on the target, the filters on the controller and the verify suite).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from ansible_collections.kmodlab.lab.plugins.module_utils import kernel_log as klog
from ansible_collections.kmodlab.lab.plugins.module_utils import kmod as k
from ansible_collections.kmodlab.lab.plugins.module_utils import params as kp
from ansible_collections.kmodlab.lab.plugins.module_utils import proc_devices as kdev

from kmodlab.selection import resolve

MODULES = Path(__file__).parent / "fixtures" / "kmod" / "modules"


def decl(ptype, array=False, perm="0644", name="p", default=0):
    return {"name": name, "type": ptype, "array": array, "perm": perm, "default": default}


@pytest.mark.parametrize(
    ("ptype", "value", "text"),
    [
        ("bool", True, "Y"),
        ("bool", False, "N"),
        ("bool", 1, "Y"),
        ("bool", "n", "N"),
        ("invbool", True, "Y"),  # the kernel shows invbool in the sense given
        ("int", -20, "-20"),
        ("long", 1234567890123, "1234567890123"),
        ("ulong", "0x10", "16"),
        ("byte", 255, "255"),
        ("charp", "hello lab", "hello lab"),
        ("charp", 42, "42"),
        ("charp", "", ""),
    ],
)
def test_sysfs_value_scalars(ptype, value, text):
    assert kp.sysfs_value(decl(ptype), value) == text


def test_sysfs_value_arrays():
    assert kp.sysfs_value(decl("int", array=True), [10, -20, 30]) == "10,-20,30"
    assert kp.sysfs_value(decl("bool", array=True), [True, False]) == "Y,N"
    assert kp.sysfs_value(decl("charp", array=True), ["a", "b c"]) == "a,b c"


@pytest.mark.parametrize(
    ("d", "value", "words"),
    [
        (decl("bool"), "maybe", "not a boolean"),
        (decl("int"), True, "not an integer"),
        (decl("int"), "x", "not an integer"),
        (decl("charp"), 'say "hi"', "double quotes"),
        (decl("charp"), "a\nb", "newlines"),
        (decl("charp", array=True), ["a,b"], "comma"),
        (decl("int", array=True), 3, "takes a list"),
        (decl("int"), [3], "not a list"),
        (decl("float"), 1, "unknown type"),
    ],
)
def test_unrepresentable_values_name_the_parameter(d, value, words):
    with pytest.raises(kp.ParamError, match=words) as exc:
        kp.sysfs_value(d, value)
    assert "parameter p" in str(exc.value)


def test_tokens_args_and_options_strings():
    decls = {
        "myint": decl("int", name="myint"),
        "mystring": decl("charp", name="mystring"),
        "arr": decl("int", array=True, name="arr"),
        "flag": decl("bool", name="flag"),
    }
    params = {"mystring": "hello lab", "myint": 7, "arr": [1, 2], "flag": True}
    assert kp.param_tokens(decls, params) == ["arr=1,2", "flag=Y", "myint=7", "mystring=hello lab"]
    # community.general.modprobe shlex-splits its params: each token must survive whole
    assert shlex.split(kp.args_string(decls, params)) == kp.param_tokens(decls, params)
    # modprobe.d: the kernel groups a value with spaces by double quotes
    assert kp.options_string(decls, params) == 'arr=1,2 flag=Y myint=7 mystring="hello lab"'
    with pytest.raises(kp.ParamError, match="empty array"):
        kp.param_tokens(decls, {"arr": []})
    with pytest.raises(kp.ParamError, match="unknown parameter nope"):
        kp.param_tokens(decls, {"nope": 1})


def test_kmsg_and_proc_devices_parsing():
    text = "6,1,10,-;first\n SUBSYSTEM=x\n4,2,20,c;hello_5: `x' invalid for parameter `myint'\n"
    assert klog.parse_kmsg(text) == [
        (1, "first"),
        (2, "hello_5: `x' invalid for parameter `myint'"),
    ]
    devices = kdev.parse_proc_devices(
        "Character devices:\n  1 mem\n 60 memory\n\nBlock devices:\n  8 sd\n"
    )
    assert devices == {"char": {1: ["mem"], 60: ["memory"]}, "block": {8: ["sd"]}}


def test_param_errors_and_mentions():
    lines = [
        "hello_5: `hello' invalid for parameter `mylong'",
        "hello_5: `99999999999' too large for parameter `myshort'",
        "hello_5: unknown parameter 'ghost' ignored",
        "hello_50: something else",
    ]
    errors = klog.param_errors(lines)
    assert [(e["param"], e["value"]) for e in errors] == [
        ("mylong", "hello"),
        ("myshort", "99999999999"),
        ("ghost", None),
    ]
    regex = klog.mention_regex({"name": "hello-5", "kmod": "hello_5"})
    assert [bool(regex.search(x)) for x in lines] == [True, True, True, False]
    assert klog.missing_patterns(["invalid for", "nothing like this"], lines) == [
        "nothing like this"
    ]


# --------------------------------------------------------------------------- plan


@pytest.fixture
def records():
    return {
        r["name"]: r
        for r in resolve(
            MODULES, [{"name": "hello-5"}, {"name": "base"}, {"name": "user"}, {"name": "memory"}]
        )
    }


def loaded_state(live=None, holders=(), refcount=0, srcversion=None):
    return {
        "loaded": True,
        "initstate": "live",
        "refcount": refcount,
        "holders": list(holders),
        "live": dict(live or {}),
        "missing": [],
        "unreadable": [],
        "srcversion": srcversion,
        "version": None,
    }


UNLOADED = {"loaded": False, "holders": [], "live": {}, "missing": [], "refcount": None}
HELLO_LIVE = {
    "myint": "42",
    "mylong": "9999",
    "mystring": "hello lab",
    "mybool": "N",
    "myintarray": "10,-20,30",
}
HELLO_RECORD = {
    "state": "present",
    "params": {"myint": 42, "myshort": 7, "mystring": "hello lab", "myintarray": [10, -20, 30]},
}


def test_reload_reasons(records):
    hello = records["hello-5"]
    st = loaded_state(HELLO_LIVE)
    assert k.reload_reasons(hello, st, HELLO_RECORD) == []
    drift = loaded_state(dict(HELLO_LIVE, myint="5"))
    assert k.reload_reasons(hello, drift, HELLO_RECORD) == ["parameter myint is '5', wanted '42'"]
    hidden = dict(HELLO_RECORD, params=dict(HELLO_RECORD["params"], myshort=3))
    assert "myshort" in k.reload_reasons(hello, st, hidden)[0]
    assert "without a kmodlab record" in k.reload_reasons(hello, st, None)[0]
    assert (
        "options file changes" in k.reload_reasons(hello, st, HELLO_RECORD, options_changed=True)[0]
    )
    newer = k.reload_reasons(
        hello, loaded_state(HELLO_LIVE, srcversion="A"), HELLO_RECORD, False, {"srcversion": "B"}
    )
    assert newer == ["the installed module differs from the loaded one (srcversion A, installed B)"]
    # base declares only visible parameters: no record needed, live values decide
    assert k.reload_reasons(records["base"], loaded_state({"level": "1"}), None) == []
    removed = {"state": "present", "params": {"level": 5}}
    assert k.reload_reasons(records["base"], loaded_state({"level": "5"}), removed) == [
        "parameter level is no longer wanted (back to its default)"
    ]


def test_dynamic_major_is_not_a_mismatch(records):
    memory = dict(records["memory"], params={"major": 0})
    assert (
        k.reload_reasons(
            memory, loaded_state({"major": "240"}), {"state": "present", "params": {"major": 0}}
        )
        == []
    )


def test_previous_params_for_rollback(records):
    hello = records["hello-5"]
    st = loaded_state(dict(HELLO_LIVE, myint="5"))
    assert k.previous_params(hello, st, HELLO_RECORD) == {
        "myint": "5",  # live wins for visible parameters
        "myintarray": "10,-20,30",
        "myshort": "7",  # from the record: sysfs cannot show it
        "mystring": "hello lab",
    }  # mylong and mybool are at their defaults: left out
    assert k.previous_params(hello, UNLOADED, HELLO_RECORD) == {}
    assert kp.args_from_texts({"mystring": "a b", "x": "1"}) == "'mystring=a b' x=1"


def test_plan_load_reload_unload_and_cascade(records):
    recs = [records[n] for n in ("base", "hello-5", "memory", "user")]
    recs[0] = dict(recs[0], params={"level": 3})
    states = {
        "base": loaded_state({"level": "2"}, holders=["user"], refcount=1),
        "hello-5": UNLOADED,
        "memory": loaded_state({"major": "60"}),
        "user": loaded_state({}),
    }
    recorded = {
        "user": {"state": "present", "params": {}},
        "memory": {"state": "present", "params": {}},
    }
    out = k.plan(recs, states, recorded, {}, {}, {"char": {60: ["memory"]}, "block": {}})
    assert out["actions"] == {
        "base": "reload",
        "hello-5": "load",
        "memory": "none",
        "user": "reload",
    }
    assert out["reasons"]["user"] == ["it uses base, which is reloaded"]
    assert out["unload"] == ["user", "base"]
    assert out["load"] == ["base", "hello-5", "user"]
    assert out["blocked"] == [] and out["conflicts"] == []


def test_plan_blocks_and_conflicts(records):
    base = dict(records["base"], params={"level": 3})
    busy = {"base": loaded_state({"level": "2"}, refcount=1)}
    out = k.plan([base], busy, {}, {}, {}, {})
    assert "in use (refcount 1" in out["blocked"][0]
    # a holder that is reloaded with it may hold several references (GPIO lines it
    # requested, files it opened): not a stranger's use
    holders = {
        "base": loaded_state({"level": "2"}, holders=["user"], refcount=4),
        "user": loaded_state({}),
    }
    assert k.plan([base, records["user"]], holders)["blocked"] == []
    foreign = {"base": loaded_state({"level": "2"}, holders=["stranger"], refcount=1)}
    assert "stranger, which kmodlab does not manage" in k.plan([base], foreign)["blocked"][0]
    memory = records["memory"]
    out = k.plan(
        [memory], {"memory": UNLOADED}, {}, {}, {}, {"char": {60: ["othermem"]}, "block": {}}
    )
    assert out["conflicts"] == [
        "memory: char major 60 (parameter major=60) is already taken by 'othermem' in "
        "/proc/devices; choose a free major or unload that driver first"
    ]


def test_plan_absent_and_config(records):
    absent = dict(records["user"], state="absent")
    config = dict(records["hello-5"], state="config")
    states = {"user": loaded_state({}), "hello-5": UNLOADED}
    out = k.plan([config, absent], states)
    assert out["actions"] == {"hello-5": "none", "user": "unload"}
    assert out["unload"] == ["user"] and out["load"] == []


# --------------------------------------------------------------------------- one rule per fact


def test_a_major_of_0_fixes_no_major_everywhere(records):
    from kmodlab.manifest import load_manifest

    memory = records["memory"]
    device = memory["manifest"]["expect"]["proc_devices"][0]
    manifest = load_manifest(MODULES / "memory")
    model_device = manifest.expect.proc_devices[0]
    for value, major in ((0, None), ("0", None), (61, 61), ("0x3d", 61), (None, 60)):
        rec = dict(memory, params={} if value is None else {"major": value})
        assert kp.wanted_major(rec, device) == major
        assert manifest.expected_major(model_device, rec["params"]) == major
        want = kp.sysfs_value(kp.declarations(rec)["major"], value if value is not None else 60)
        assert kp.dynamic_major(rec, "major", want) is (major is None)
        # no conflict for a major the kernel chooses
        taken = {"char": {60: ["other"], 61: ["other"]}, "block": {}}
        assert bool(k.device_conflicts(rec, taken)) is (major is not None)
    for fixed, major in (("dynamic", None), (0, None), (240, 240)):
        assert kp.major_number(fixed) == major
    assert kp.major_number(True) is None and kp.major_number("x") is None


def test_options_line_splits_back_as_the_kernel_does():
    decls = {
        "s": decl("charp", name="s", default=""),
        "a": decl("int", array=True, name="a", default=[]),
        "b": decl("bool", name="b", default=False),
    }
    wanted = {"s": "hello lab", "a": [1, -2], "b": True}
    assert kp.kernel_args(kp.options_string(decls, wanted)) == kp.normalise_args(decls, wanted)
    assert kp.kernel_args('a=1 s="x y" t=') == {"a": "1", "s": "x y", "t": ""}


def test_proc_devices_one_table_for_both_questions():
    table = kdev.parse_proc_devices(
        "Character devices:\n  1 mem\n 60 memory\n 61 memory\n240 gadget\n\n"
        "Block devices:\n  8 sd\n 60 memblk\n"
    )
    assert kdev.majors_of(table, "memory") == [60, 61]
    assert kdev.majors_of(table, "memblk", "block") == [60]
    assert kdev.majors_of(table, "memory", "block") == []
    assert kdev.owners(table, 60) == ["memory"] and kdev.owners(table, 60, "block") == ["memblk"]
    assert kdev.owners(table, 99) == [] and kdev.majors_of({}, "x") == []


def test_kernel_log_reader_falls_back_in_order(tmp_path):
    calls = []

    def run(answers):
        def runner(argv):
            calls.append(argv[0])
            return answers.get(argv[0], (127, "", f"{argv[0]}: command not found"))

        return runner

    # a readable /dev/kmsg: sequence numbers and levels, nothing run
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "kmsg").write_text("6,7,1,-;hello_5: hi\n")
    assert klog.read_kernel_log(str(tmp_path), run({})) == {
        "source": "kmsg",
        "records": [(7, 6, "hello_5: hi")],
    }
    assert calls == []
    # another root without /dev/kmsg: nothing else is read
    log = klog.read_kernel_log(str(tmp_path / "none"), run({"dmesg": (0, "x\n", "")}))
    assert log["source"] == "none" and log["records"] == [] and calls == []
    # the real root when /dev/kmsg cannot be read: dmesg, else journalctl -k
    unreadable = str(tmp_path / "nope")
    orig = klog.KMSG
    try:
        klog.KMSG = unreadable
        log = klog.read_kernel_log("/", run({"dmesg": (0, "a\nb\n", "")}))
        assert log == {"source": "dmesg", "records": [(None, None, "a"), (None, None, "b")]}
        log = klog.read_kernel_log(
            "/", run({"dmesg": (1, "", "denied"), "journalctl": (0, "c\n", "")})
        )
        assert log == {"source": "journalctl", "records": [(None, None, "c")]}
        assert calls[-2:] == ["dmesg", "journalctl"]
        log = klog.read_kernel_log("/", run({"dmesg": (1, "", "denied")}))
        assert log["source"] == "none" and "journalctl" in log["error"]
    finally:
        klog.KMSG = orig
