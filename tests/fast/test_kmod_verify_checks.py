"""The verify checks against a fixture observation of a healthy host, then broken ones.

Every check must pass on the healthy host and fail, with a message naming what is
wrong, as soon as one observed fact is off.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.kmodlab.lab.plugins.module_utils import (
    dkms_tree,
    kmod_config,
    modinfo,
    params,
)

from kmodlab.selection import resolve
from kmodlab.verify import checks
from kmodlab.verify.observe import Observation

MODULES = Path(__file__).parent / "fixtures" / "kmod" / "modules"
KERNEL = "6.1.0-18-amd64"


def recs() -> dict[str, dict[str, Any]]:
    return {
        r["name"]: r
        for r in resolve(
            MODULES,
            [
                {"name": "hello-5", "params": {"mybool": True}},
                {"name": "gadget"},
                {"name": "memory", "params": {"major": 61}},
                {"name": "user", "state": "absent"},
                {"name": "base", "state": "config", "persist": False, "params": {"level": 2}},
            ],
        )
    }


def f(mode: int) -> dict[str, Any]:
    return {"exists": True, "type": "file", "mode": mode, "link": False}


D = {"exists": True, "type": "directory", "mode": 0o755, "link": False}
NONE = {"exists": False, "error": "No such file or directory"}
MODINFO = (
    "filename:       /lib/modules/{k}/updates/dkms/{n}.ko\n"
    "license:        GPL\nauthor:         kmodlab <kmodlab@example.org>\n"
    "srcversion:     ABC123\nvermagic:       {k} SMP preempt mod_unload modversions \n"
)


def healthy() -> dict[str, Any]:
    h5 = "/sys/module/hello_5"
    stat = {
        h5: D,
        f"{h5}/initstate": f(0o444),
        f"{h5}/parameters": D,
        f"{h5}/parameters/myshort": NONE,
        f"{h5}/parameters/myint": f(0o644),
        f"{h5}/parameters/mylong": f(0o640),
        f"{h5}/parameters/mystring": f(0o444),
        f"{h5}/parameters/mybool": f(0o644),
        f"{h5}/parameters/myintarray": f(0o600),
        "/etc/modprobe.d/hello-5.conf": f(0o644),
        "/etc/modules-load.d/hello-5.conf": f(0o644),
        "/sys/module/gadget/initstate": f(0o444),
        "/sys/module/gadget/parameters/greeting": f(0o444),
        "/etc/modprobe.d/gadget.conf": NONE,
        "/etc/modules-load.d/gadget.conf": f(0o644),
        "/dev/gadget": {"exists": True, "type": "char", "mode": 0o666, "major": 240, "minor": 0},
        "/sys/class/gadget/gadget": D,
        "/sys/class/gadget/gadget/dev": f(0o444),
        "/proc/gadget": f(0o444),
        "/sys/module/memory/initstate": f(0o444),
        "/sys/module/memory/parameters/major": f(0o444),
        "/etc/modprobe.d/memory.conf": f(0o644),
        "/etc/modules-load.d/memory.conf": f(0o644),
        "/dev/memory": {"exists": True, "type": "char", "mode": 0o666, "major": 61, "minor": 0},
        "/sys/module/user/initstate": NONE,
        "/etc/modprobe.d/user.conf": NONE,
        "/etc/modules-load.d/user.conf": NONE,
        "/sys/module/base/initstate": NONE,
        "/etc/modprobe.d/base.conf": f(0o644),
        "/etc/modules-load.d/base.conf": NONE,
        # user is absent: DKMS removed it
        "/var/lib/dkms/user": NONE,
        "/usr/src/user-2.0.1": NONE,
        **{
            f"/lib/modules/{KERNEL}/updates/dkms/user{suffix}": NONE
            for suffix in (".ko", ".ko.xz", ".ko.gz", ".ko.zst")
        },
    }
    read = {
        "/proc/devices": "Character devices:\n  1 mem\n 61 memory\n240 gadget\n\nBlock devices:\n",
        f"{h5}/initstate": "live\n",
        f"{h5}/srcversion": "ABC123\n",
        f"{h5}/parameters/myint": "42\n",
        f"{h5}/parameters/mylong": "9999\n",
        f"{h5}/parameters/mystring": "hello lab\n",
        f"{h5}/parameters/mybool": "Y\n",
        f"{h5}/parameters/myintarray": "10,-20,30\n",
        "/etc/modprobe.d/hello-5.conf": "#\n# Ansible managed\n#\n"
        'options hello_5 mybool=Y myint=42 myintarray=10,-20,30 myshort=7 mystring="hello lab"\n',
        "/etc/modules-load.d/hello-5.conf": "# managed\nhello_5\n",
        "/sys/module/gadget/initstate": "live\n",
        "/sys/module/gadget/srcversion": "ABC123\n",
        "/sys/module/gadget/parameters/greeting": "hi\n",
        "/etc/modules-load.d/gadget.conf": "gadget\n",
        "/sys/class/gadget/gadget/dev": "240:0\n",
        "/proc/gadget": "header\ngadget ok\n",
        "/sys/module/memory/initstate": "live\n",
        "/sys/module/memory/parameters/major": "61\n",
        "/etc/modprobe.d/memory.conf": "options memory major=61\n",
        "/etc/modules-load.d/memory.conf": "memory\n",
        "/etc/modprobe.d/base.conf": "options base level=2\n",
    }
    commands = {
        "uname": {"rc": 0, "stdout": KERNEL + "\n", "stderr": ""},
    }
    dkms = {
        "entries": [
            dkms_entry("hello-5", "1.0.0", KERNEL, "installed"),
            dkms_entry("gadget", "0.3.0", KERNEL, "installed"),
            dkms_entry("memory", "1.0.0", KERNEL, "installed"),
            dkms_entry("base", "1.0.0", KERNEL, "installed"),
            dkms_entry("hello-5", "0.9.0", "5.10.0-1-amd64", "built"),
        ]
    }
    for name in ("hello-5", "gadget", "memory", "base"):
        commands[f"modinfo:{name}"] = {
            "rc": 0,
            "stdout": MODINFO.format(k=KERNEL, n=name),
            "stderr": "",
        }
    return {
        "euid": 0,
        "dkms": dkms,
        "stat": stat,
        "read": {p: {"ok": True, "text": t} for p, t in read.items()},
        "list": {
            f"{h5}/parameters": ["mybool", "myint", "myintarray", "mylong", "mystring"],
            "/sys/module/gadget/parameters": ["greeting"],
            "/sys/module/memory/parameters": ["major"],
        },
        "commands": commands,
        "kernel_log": {
            "source": "kmsg",
            "lines": [
                "Linux version",
                "gadget: ready on major 239",
                "gadget: gone",
                "gadget: ready on major 240",
                "hello_5: hello, world; myint=42",
                "hello_5: myshort=7",
            ],
        },
        "functional": {
            "gadget#0": [{"ok": True, "data_b64": base64.b64encode(b"hi\n").decode()}],
            "gadget#1": [{"ok": False, "errno": "EINVAL", "error": "Invalid argument"}],
        },
    }


CHECKS = {
    "hello-5": [
        checks.dkms_built,
        checks.dkms_installed,
        checks.module_file,
        checks.loaded,
        checks.params,
        checks.param_files,
        checks.persistence,
        checks.dmesg_load,
        checks.modinfo,
    ],
    "gadget": [
        checks.loaded,
        checks.params,
        checks.param_files,
        checks.persistence,
        checks.proc_device_checks,
        checks.dev_nodes,
        checks.sysfs,
        checks.procfs,
        checks.dmesg_load,
        checks.modinfo,
    ],
    "memory": [checks.params, checks.proc_device_checks, checks.dev_nodes, checks.persistence],
    "user": [checks.not_loaded, checks.persistence, checks.dkms_removed],
    "base": [checks.dkms_installed, checks.module_file, checks.persistence],
}


def problems(data: dict[str, Any], name: str, check) -> list[str]:
    return check(recs()[name], Observation(data), KERNEL)


@pytest.mark.parametrize(
    ("name", "check"),
    [(n, c) for n, cs in CHECKS.items() for c in cs],
    ids=[f"{n}-{c.__name__}" for n, cs in CHECKS.items() for c in cs],
)
def test_healthy_host_passes(name, check):
    assert problems(healthy(), name, check) == []


def test_healthy_host_functional_and_host_checks():
    obs = Observation(healthy())
    gadget = recs()["gadget"]
    assert checks.functional(gadget, 0, obs) == []
    assert checks.functional(gadget, 1, obs) == []
    assert checks.host(KERNEL, obs) == []


def broken(change) -> dict[str, Any]:
    data = copy.deepcopy(healthy())
    change(data)
    return data


def dkms_entry(name, version, kernel, status, diff=False):
    """An entry exactly as dkms_tree.read_tree returns it."""
    return dkms_tree.entry(name, version, kernel, "x86_64", status, diff)


def set_dkms(*entries):
    return lambda d: d.__setitem__("dkms", {"entries": list(entries)})


def set_read(path, text):
    return lambda d: d["read"].__setitem__(path, {"ok": True, "text": text})


def set_stat(path, value):
    return lambda d: d["stat"].__setitem__(path, value)


BROKEN = [
    (
        "hello-5",
        checks.dkms_built,
        set_dkms(),
        "not built or installed",
    ),
    (
        "hello-5",
        checks.dkms_installed,
        set_dkms(dkms_entry("hello-5", "1.0.0", KERNEL, "built")),
        "not installed for kernel",
    ),
    (
        "hello-5",
        checks.dkms_installed,
        set_dkms(dkms_entry("hello-5", "1.0.0", KERNEL, "installed", diff=True)),
        "Diff between built and installed module",
    ),
    (
        "hello-5",
        checks.dkms_built,
        lambda d: d.__setitem__("dkms", {"error": "reading /var/lib/dkms failed: boom"}),
        "the DKMS tree could not be read",
    ),
    (
        "hello-5",
        checks.module_file,
        lambda d: d["commands"]["modinfo:hello-5"].update(
            stdout=MODINFO.format(k=KERNEL, n="hello-5").replace("updates/dkms", "extra")
        ),
        "not under /lib/modules/6.1.0-18-amd64/updates/dkms/",
    ),
    (
        "hello-5",
        checks.module_file,
        lambda d: d["commands"]["modinfo:hello-5"].update(
            stdout=MODINFO.format(k=KERNEL, n="hello-5").replace(
                "vermagic:       6.1.0-18", "vermagic:       6.1.0-17"
            )
        ),
        "vermagic",
    ),
    ("hello-5", checks.loaded, set_read("/sys/module/hello_5/initstate", "going\n"), "not live"),
    (
        "hello-5",
        checks.loaded,
        set_read("/sys/module/hello_5/srcversion", "OLD\n"),
        "not the installed one",
    ),
    (
        "hello-5",
        checks.params,
        set_read("/sys/module/hello_5/parameters/myint", "7\n"),
        "myint is '7', wanted '42'",
    ),
    (
        "hello-5",
        checks.params,
        set_read("/sys/module/hello_5/parameters/mybool", "N\n"),
        "mybool is 'N'",
    ),
    (
        "hello-5",
        checks.params,
        set_read("/sys/module/hello_5/parameters/myintarray", "10,-20\n"),
        "myintarray is '10,-20', wanted '10,-20,30'",
    ),
    (
        "hello-5",
        checks.params,
        set_stat("/sys/module/hello_5/initstate", NONE),
        "not loaded",
    ),
    (
        "hello-5",
        checks.param_files,
        set_stat("/sys/module/hello_5/parameters/mylong", f(0o644)),
        "mylong has mode 0644, declared 0640",
    ),
    (
        "hello-5",
        checks.param_files,
        lambda d: d["list"]["/sys/module/hello_5/parameters"].append("myshort"),
        "perm 0000 should keep it out of sysfs",
    ),
    (
        "hello-5",
        checks.param_files,
        lambda d: d["list"]["/sys/module/hello_5/parameters"].append("debug"),
        "debug is not declared",
    ),
    (
        "hello-5",
        checks.persistence,
        set_read("/etc/modprobe.d/hello-5.conf", "options hello_5 myint=41\n"),
        "options are",
    ),
    (
        "hello-5",
        checks.persistence,
        set_stat("/etc/modules-load.d/hello-5.conf", NONE),
        "is missing",
    ),
    (
        "hello-5",
        checks.dmesg_load,
        lambda d: d["kernel_log"]["lines"].append("hello_5: goodbye, world"),
        "is older than the unload message",
    ),
    (
        "hello-5",
        checks.modinfo,
        lambda d: d["commands"]["modinfo:hello-5"].update(stdout="license: Proprietary\n"),
        "license is ['Proprietary']",
    ),
    (
        "hello-5",
        checks.modinfo,
        lambda d: d["commands"]["modinfo:hello-5"].update(stdout="license: GPL\nversion: 0.9\n"),
        "modinfo version is 0.9",
    ),
    (
        "gadget",
        checks.persistence,
        set_stat("/etc/modprobe.d/gadget.conf", f(0o644)),
        "it has no parameters",
    ),
    (
        "gadget",
        checks.proc_device_checks,
        set_read("/proc/devices", "Character devices:\n  1 mem\n"),
        "no char device 'gadget'",
    ),
    (
        "gadget",
        checks.dev_nodes,
        set_stat(
            "/dev/gadget", {"exists": True, "type": "char", "mode": 0o666, "major": 241, "minor": 0}
        ),
        "major 241, /proc/devices gives 'gadget' major [240]",
    ),
    (
        "gadget",
        checks.dev_nodes,
        set_stat(
            "/dev/gadget", {"exists": True, "type": "char", "mode": 0o600, "major": 240, "minor": 0}
        ),
        "mode 0600, expected 0666",
    ),
    ("gadget", checks.dev_nodes, set_stat("/dev/gadget", f(0o666)), "is a file, not a char device"),
    ("gadget", checks.dev_nodes, set_stat("/dev/gadget", NONE), "does not exist"),
    ("gadget", checks.sysfs, set_read("/sys/class/gadget/gadget/dev", "240:1\n"), "does not match"),
    (
        "gadget",
        checks.sysfs,
        set_stat("/sys/class/gadget/gadget", f(0o644)),
        "expected a directory",
    ),
    ("gadget", checks.procfs, set_stat("/proc/gadget", f(0o644)), "mode 0644, expected 0444"),
    ("gadget", checks.procfs, set_read("/proc/gadget", "gadget ok, not\n"), "does not match"),
    (
        "memory",
        checks.proc_device_checks,
        set_read("/proc/devices", "Character devices:\n 60 memory\n"),
        "on major [60], expected 61",
    ),
    (
        "memory",
        checks.params,
        set_read("/sys/module/memory/parameters/major", "60\n"),
        "major is '60'",
    ),
    (
        "user",
        checks.not_loaded,
        set_stat("/sys/module/user/initstate", f(0o444)),
        "is loaded but its state is absent",
    ),
    ("user", checks.persistence, set_stat("/etc/modprobe.d/user.conf", f(0o644)), "it is absent"),
    (
        "user",
        checks.dkms_removed,
        set_dkms(dkms_entry("user", "2.0.1", KERNEL, "installed")),
        "DKMS still has user: user/2.0.1, 6.1.0-18-amd64, x86_64: installed",
    ),
    (
        "user",
        checks.dkms_removed,
        set_dkms(dkms_entry("user", "1.0.0", "5.10.0-1-amd64", "built")),
        "DKMS still has user: user/1.0.0",
    ),
    ("user", checks.dkms_removed, set_stat("/var/lib/dkms/user", D), "/var/lib/dkms/user exists"),
    (
        "user",
        checks.dkms_removed,
        set_stat(f"/lib/modules/{KERNEL}/updates/dkms/user.ko", f(0o644)),
        f"/lib/modules/{KERNEL}/updates/dkms/user.ko exists",
    ),
    ("user", checks.dkms_removed, set_stat("/usr/src/user-2.0.1", D), "/usr/src/user-2.0.1 exists"),
    (
        "user",
        checks.dkms_removed,
        lambda d: d["stat"].pop("/var/lib/dkms/user"),
        "/var/lib/dkms/user was not observed",
    ),
    (
        "user",
        checks.dkms_removed,
        set_stat("/var/lib/dkms/user", {"exists": False, "error": "Permission denied"}),
        "cannot tell whether /var/lib/dkms/user exists: Permission denied",
    ),
    (
        "user",
        checks.dkms_removed,
        lambda d: d.__setitem__("dkms", {"error": "boom"}),
        "the DKMS tree could not be read: boom",
    ),
    (
        "base",
        checks.persistence,
        set_stat("/etc/modules-load.d/base.conf", f(0o644)),
        "persist is false",
    ),
    (
        "base",
        checks.persistence,
        set_read("/etc/modprobe.d/base.conf", "options base level=3\n"),
        "wanted",
    ),
]


@pytest.mark.parametrize(
    ("name", "check", "change", "words"), BROKEN, ids=[f"{b[0]}-{b[3][:30]}" for b in BROKEN]
)
def test_broken_host_fails(name, check, change, words):
    found = problems(broken(change), name, check)
    assert found, f"{check.__name__} passed on a broken host"
    assert any(words in p for p in found), found


def test_functional_failures():
    gadget = recs()["gadget"]
    read_wrong = broken(
        lambda d: d["functional"]["gadget#0"][0].update(data_b64=base64.b64encode(b"ho\n").decode())
    )
    assert "read 'ho\\n', expected" in checks.functional(gadget, 0, Observation(read_wrong))[0]
    accepted = broken(lambda d: d["functional"]["gadget#1"][0].update(ok=True, errno=None))
    assert (
        "succeeded, expected EINVAL (Invalid argument)"
        in checks.functional(gadget, 1, Observation(accepted))[0]
    )
    other = broken(
        lambda d: d["functional"]["gadget#1"][0].update(errno="EIO", error="Input/output error")
    )
    assert (
        "failed with EIO (Input/output error), expected EINVAL"
        in checks.functional(gadget, 1, Observation(other))[0]
    )
    missing = broken(lambda d: d["functional"].pop("gadget#0"))
    assert "did not run" in checks.functional(gadget, 0, Observation(missing))[0]


def test_host_failures():
    assert "rendered for" in checks.host("6.1.0-99-amd64", Observation(healthy()))[0]
    assert "not root" in checks.host(KERNEL, Observation(broken(lambda d: d.update(euid=1000))))[0]
    no_log = broken(lambda d: d.update(kernel_log={"source": "none", "lines": []}))
    assert "kernel log could not be read" in checks.host(KERNEL, Observation(no_log))[0]


def test_kernel_context():
    obs = Observation(
        broken(lambda d: d["kernel_log"]["lines"].extend(["hello_50: other", "hello-5 x"]))
    )
    assert checks.kernel_context(recs()["hello-5"], obs) == [
        "hello_5: hello, world; myint=42",
        "hello_5: myshort=7",
        "hello-5 x",
    ]


# ------------------------------------------------------------------ dmesg: the current load


def dmesg(record: dict[str, Any], lines: list[str]) -> list[str]:
    return checks.dmesg_load(record, Observation({"kernel_log": {"lines": lines}}), KERNEL)


def two_messages(unload: list[str]) -> dict[str, Any]:
    """gadget with two load messages, and the given unload messages."""
    rec = copy.deepcopy(recs()["gadget"])
    rec["manifest"]["expect"]["dmesg"] = {
        "load": ["gadget: ready on major [0-9]+", "gadget: node /dev/gadget"],
        "unload": unload,
    }
    return rec


def test_dmesg_an_old_load_line_is_not_the_current_load():
    gadget = recs()["gadget"]
    # loaded, unloaded, loaded again without its message: the old line must not count
    old = ["gadget: ready on major 240", "gadget: gone", "other: x"]
    (problem,) = dmesg(gadget, old)
    assert "'gadget: ready on major 240' is older than the unload message 'gadget: gone'" in problem
    assert dmesg(gadget, [*old, "gadget: ready on major 241"]) == []


def test_dmesg_later_messages_in_order_from_the_newest_first_one():
    rec = two_messages(["gadget: gone"])
    load = ["gadget: ready on major 240", "noise", "gadget: node /dev/gadget"]
    assert dmesg(rec, load) == []
    # the second message only from an earlier load (before the newest first message)
    (problem,) = dmesg(rec, ["gadget: node /dev/gadget", "gadget: ready on major 240"])
    assert "no kernel message of the current load" in problem and "/gadget: node" in problem
    # a module that prints nothing on unload: the newest first message starts the window
    quiet = two_messages([])
    reloaded = [*load, "gadget: ready on major 241"]
    assert "gadget: node /dev/gadget" in dmesg(quiet, reloaded)[0]
    assert dmesg(quiet, [*reloaded, "gadget: node /dev/gadget"]) == []


def test_dmesg_no_load_message_at_all():
    (problem,) = dmesg(recs()["gadget"], ["Linux version"])
    assert "no kernel message matches /gadget: ready on major [0-9]+/" in problem
    assert dmesg(recs()["base"], []) != []
    no_patterns = copy.deepcopy(recs()["gadget"])
    no_patterns["manifest"]["expect"]["dmesg"] = {"load": [], "unload": []}
    assert dmesg(no_patterns, []) == []


# ------------------------------------------------------------------ the loaded build


def without_srcversion(d: dict[str, Any]) -> None:
    """Both sides without srcversion (our modules on Debian 12): build IDs decide."""
    d["read"].pop("/sys/module/hello_5/srcversion")
    info = d["commands"]["modinfo:hello-5"]
    info["stdout"] = info["stdout"].replace("srcversion:     ABC123\n", "")
    ko = f"/lib/modules/{KERNEL}/updates/dkms/hello-5.ko"
    d["build_id"] = {
        "/sys/module/hello_5/notes/.note.gnu.build-id": {"ok": True, "build_id": "5cde13"},
        ko: {"ok": True, "build_id": "5cde13"},
    }


def loaded(change) -> list[str]:
    return checks.loaded(recs()["hello-5"], Observation(broken(change)), KERNEL)


def test_loaded_build_without_srcversion_compares_build_ids():
    assert loaded(without_srcversion) == []

    def rebuilt(d):
        without_srcversion(d)
        d["build_id"][f"/lib/modules/{KERNEL}/updates/dkms/hello-5.ko"]["build_id"] = "99aa"

    (problem,) = loaded(rebuilt)
    assert "(build ID 5cde13) is not the installed" in problem and "(build ID 99aa)" in problem

    def usr_lib(d):
        without_srcversion(d)
        info = d["commands"]["modinfo:hello-5"]
        info["stdout"] = info["stdout"].replace(
            "filename:       /lib/", "filename:       /usr/lib/"
        )

    assert loaded(usr_lib) == []


def test_loaded_build_not_observable_without_srcversion_or_build_id():
    def no_notes(d):
        without_srcversion(d)
        d["build_id"]["/sys/module/hello_5/notes/.note.gnu.build-id"] = {
            "ok": False,
            "error": "No such file or directory",
        }

    (problem,) = loaded(no_notes)
    assert problem.startswith(checks.NOT_OBSERVABLE)
    assert "notes/.note.gnu.build-id: No such file or directory" in problem
    # a failure besides stays a failure (the suite fails when any problem is real)
    both = loaded(lambda d: (no_notes(d), set_read("/sys/module/hello_5/initstate", "going\n")(d)))
    assert any("not live" in p for p in both) and any(p.startswith("not observable") for p in both)


def test_loaded_build_srcversion_on_one_side_only():
    (problem,) = loaded(lambda d: d["read"].pop("/sys/module/hello_5/srcversion"))
    assert "has srcversion none, the installed file ABC123: they are different builds" in problem

    def disk_only(d):
        info = d["commands"]["modinfo:hello-5"]
        info["stdout"] = info["stdout"].replace("srcversion:     ABC123\n", "")

    (problem,) = loaded(disk_only)
    assert "has srcversion ABC123, the installed file none" in problem


def test_not_observable_prefix():
    assert checks.NOT_OBSERVABLE == "not observable: "


def test_expected_values_come_from_the_module_utils():
    # the checks use the normalisation kmod_load uses (module_utils/params.py)
    assert checks.sysfs_value is params.sysfs_value
    p = {"type": "bool"}
    assert [params.sysfs_value(p, v) for v in (True, False, "y", 0)] == ["Y", "N", "Y", "N"]
    assert params.sysfs_value({"type": "int", "array": True}, [1, -2]) == "1,-2"
    assert params.kernel_args('a=1 s="x y" t=') == {"a": "1", "s": "x y", "t": ""}
    assert params.wanted_major(recs()["memory"], {"name": "memory", "major_param": "major"}) == 61
    assert params.wanted_major(recs()["gadget"], {"name": "gadget", "major": "dynamic"}) is None


def test_persistence_accepts_exactly_what_kmod_load_writes():
    # the role writes kmod_config.wanted_files (the kmod_load_files filter); the check
    # reads the same rule: those contents pass, and a file it does not write fails
    for name, rec in recs().items():
        data = healthy()
        for path, content in kmod_config.wanted_files(rec).items():
            if content is None:
                data["stat"][path] = NONE
                data["read"].pop(path, None)
            else:
                data["stat"][path] = f(0o644)
                data["read"][path] = {"ok": True, "text": content}
        assert problems(data, name, checks.persistence) == [], name
        for path, content in kmod_config.wanted_files(rec).items():
            if content is None:
                extra = copy.deepcopy(data)
                extra["stat"][path] = f(0o644)
                assert problems(extra, name, checks.persistence), (name, path)


# ------------------------------------------------------------------ modinfo: the one parser

SIG_KEY = "6C:CE:CE:7E:4C:6C:0D:1F:61:49:F3:DD:27:DF:CC:5C:BB:41:9E:A1"
SIGNED = (
    "sig_id:         PKCS#7\n"
    "signer:         kmodlab module signing\n"
    "sig_key:        6C:CE:CE:7E:4C:6C:0D:1F:61:49:\n"
    "\t\tF3:DD:27:DF:CC:5C:BB:41:9E:A1\n"
    "sig_hashalgo:   sha256\n"
    "signature:      30:45:02:20:1B:2C:\n"
    "\t\t3D:4E:00:11\n"
)
SIGNING = {
    "signer": "kmodlab module signing",
    "sig_key": SIG_KEY,
    "fingerprint": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "trusted": True,
}


def test_modinfo_parse_blocks_and_continuation_lines():
    text = (
        "filename:       /lib/modules/k/updates/dkms/base.ko.xz\nalias:          a1\n"
        "alias:          a2\nparm:           level:the level (int)\n"
        + "filename:       /lib/modules/k/updates/dkms/hello-5.ko\n"
        + SIGNED
        + "not a field\n\n"
    )
    base, hello = modinfo.parse(text)
    assert base == {
        "filename": ["/lib/modules/k/updates/dkms/base.ko.xz"],
        "alias": ["a1", "a2"],
        "parm": ["level:the level (int)"],
    }
    # wrapped hex dumps are appended to their value without the whitespace
    assert hello["sig_key"] == [SIG_KEY]
    assert hello["signature"] == ["30:45:02:20:1B:2C:3D:4E:00:11"]
    assert modinfo.signature(hello) == {
        "signer": "kmodlab module signing",
        "sig_key": SIG_KEY,
        "sig_hashalgo": "sha256",
        "sig_id": "PKCS#7",
    }
    assert modinfo.signature(base) == dict.fromkeys(modinfo.SIGNATURE_FIELDS)
    # lines before any filename (a fragment) make a module of their own
    assert modinfo.parse("license: GPL\n") == [{"license": ["GPL"]}]
    assert modinfo.parse("") == modinfo.parse(None) == []


def test_modinfo_key_ids_are_normalised():
    assert modinfo.normal_key(" 1a:2b:\n\t3c ") == "1A:2B:3C"
    assert modinfo.normal_key("1a2b3c") == "1A:2B:3C"
    assert modinfo.normal_key("") is None and modinfo.normal_key(None) is None


def test_modinfo_fields_joins_every_module_of_the_output():
    data = healthy()
    info = data["commands"]["modinfo:hello-5"]
    info["stdout"] += "filename:       /lib/modules/x/other.ko\nlicense:        MIT\n"
    fields = checks.modinfo_fields(Observation(data), recs()["hello-5"])
    assert fields["license"] == ["GPL", "MIT"]
    assert fields["filename"][0] == f"/lib/modules/{KERNEL}/updates/dkms/hello-5.ko"


# ------------------------------------------------------------------ signing


def signed_host() -> dict[str, Any]:
    """The healthy host with hello-5 signed as SIGNING says, loaded without taint E."""
    data = healthy()
    data["commands"]["modinfo:hello-5"]["stdout"] += SIGNED
    data["read"]["/sys/module/hello_5/taint"] = {"ok": True, "text": "O\n"}
    data["secure_boot"] = {
        "efi": True,
        "secure_boot": True,
        "setup_mode": False,
        "lockdown": "integrity",
    }
    return data


def signature(change=None, signing=None) -> list[str]:
    data = signed_host()
    if change is not None:
        change(data)
    return checks.signature(recs()["hello-5"], Observation(data), KERNEL, signing or SIGNING)


def set_modinfo(old, new):
    def change(d):
        info = d["commands"]["modinfo:hello-5"]
        info["stdout"] = info["stdout"].replace(old, new)

    return change


def test_signature_passes_with_the_expected_signer_and_key():
    assert signature() == []
    # the expected key id as a bare lower-case hex string matches too
    bare = {**SIGNING, "sig_key": SIG_KEY.replace(":", "").lower()}
    assert signature(signing=bare) == []


EXPECTED = (
    f"expected a signature by 'kmodlab module signing' with key id {SIG_KEY} "
    f"(certificate SHA-256 {SIGNING['fingerprint']})"
)
FILE = f"module hello_5 (/lib/modules/{KERNEL}/updates/dkms/hello-5.ko)"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (set_modinfo(SIGNED, ""), f"{FILE} is unsigned, {EXPECTED}"),
        (
            set_modinfo("signer:         kmodlab module signing", "signer:         DKMS module"),
            f"{FILE} is signed by 'DKMS module' with key id {SIG_KEY}, {EXPECTED}",
        ),
        (
            set_modinfo("6C:CE:CE:7E", "AA:BB:CC:DD"),
            f"{FILE} is signed by 'kmodlab module signing' with key id "
            f"AA:BB:CC:DD:4C:6C:0D:1F:61:49:F3:DD:27:DF:CC:5C:BB:41:9E:A1, {EXPECTED}",
        ),
        (
            set_modinfo("sig_id:         PKCS#7\n", ""),
            f"{FILE} has an incomplete signature (sig_id none, signer kmodlab module signing, "
            f"key id {SIG_KEY}; a PKCS#7 one with both is needed), {EXPECTED}",
        ),
        (
            set_modinfo("signer:         kmodlab module signing\n", "signer:\n"),
            f"{FILE} has an incomplete signature (sig_id PKCS#7, signer none, key id {SIG_KEY}; "
            f"a PKCS#7 one with both is needed), {EXPECTED}",
        ),
        (
            lambda d: d["commands"]["modinfo:hello-5"].update(
                rc=1, stdout="", stderr="modinfo: ERROR: Module hello_5 not found.\n"
            ),
            f"modinfo -k {KERNEL} hello_5 failed: modinfo: ERROR: Module hello_5 not found.",
        ),
    ],
    ids=["unsigned", "other-signer", "other-key", "no-sig-id", "no-signer", "modinfo-failed"],
)
def test_signature_failures_name_found_and_expected(change, message):
    assert signature(change) == [message]


def taint(change=None) -> list[str]:
    data = signed_host()
    if change is not None:
        change(data)
    return checks.taint(recs()["hello-5"], Observation(data), KERNEL, SIGNING)


def test_taint_without_e_passes():
    assert taint() == []
    assert taint(set_read("/sys/module/hello_5/taint", "\n")) == []


def test_taint_failures():
    (problem,) = taint(set_read("/sys/module/hello_5/taint", "OE\n"))
    assert problem.startswith(
        "module hello_5 carries taint E: the kernel could not verify its signature (taint OE;"
    )
    assert SIGNING["fingerprint"] in problem
    (problem,) = taint(lambda d: d["read"].pop("/sys/module/hello_5/taint"))
    assert problem.startswith("/sys/module/hello_5/taint: cannot read")
    (problem,) = taint(set_stat("/sys/module/hello_5/initstate", NONE))
    assert problem == "hello_5 is not loaded, so this cannot be checked"


def host_problems(change=None, **signing) -> list[str]:
    """checks.host on the signed host, with SIGNING or ``signing=`` instead."""
    data = signed_host()
    if change is not None:
        change(data)
    return checks.host(KERNEL, Observation(data), signing.get("signing", SIGNING))


def test_host_with_signing_needs_a_readable_secure_boot_state_when_trusted():
    assert host_problems() == []
    unreadable = {"efi": True, "secure_boot": None, "setup_mode": None, "lockdown": None}
    (problem,) = host_problems(lambda d: d.update(secure_boot=unreadable))
    assert problem == (
        f"the kernel should trust the signing certificate (SHA-256 {SIGNING['fingerprint']}), "
        "but the Secure Boot state of this EFI host cannot be read (/sys/firmware/efi/efivars/"
        "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c is missing or unreadable: is "
        "efivarfs mounted?)"
    )
    (problem,) = host_problems(lambda d: d.pop("secure_boot"))
    assert problem.endswith("but the Secure Boot state cannot be read: not observed")
    # not trusted, no signing, or no UEFI: only reported, never a problem
    assert (
        host_problems(
            lambda d: d.update(secure_boot=unreadable), signing={**SIGNING, "trusted": False}
        )
        == []
    )
    assert host_problems(lambda d: d.update(secure_boot=unreadable), signing=None) == []
    no_efi = {"efi": False, "secure_boot": False, "setup_mode": None, "lockdown": "none"}
    assert host_problems(lambda d: d.update(secure_boot=no_efi)) == []
    sb_off = {"efi": True, "secure_boot": False, "setup_mode": False, "lockdown": "none"}
    assert host_problems(lambda d: d.update(secure_boot=sb_off)) == []


# ------------------------------------------------------------------ package (deb) hosts

KMODLAB = f"/lib/modules/{KERNEL}/updates/kmodlab"
VERSIONS = {"hello-5": "1.0.0", "gadget": "0.3.0", "memory": "1.0.0", "base": "1.0.0"}


def pkg(name: str, kernel: str = KERNEL) -> str:
    return f"kmodlab-{name}-modules-{kernel}"


def ran(stdout: str = "", rc: int = 0, stderr: str = "") -> dict[str, Any]:
    return {"rc": rc, "stdout": stdout, "stderr": stderr}


def deb_healthy() -> dict[str, Any]:
    """The healthy host with its modules delivered as packages: no DKMS; dpkg shows each
    present or config module's package installed, shipping updates/kmodlab/KMOD.ko."""
    data = healthy()
    del data["dkms"]
    rec = recs()
    for name in VERSIONS:
        kmod = rec[name]["kmod"]
        data["commands"][f"modinfo:{name}"]["stdout"] = MODINFO.format(k=KERNEL, n=kmod).replace(
            "updates/dkms", "updates/kmodlab"
        )
    query = "".join(f"{pkg(n)}\t{v}\tii \n" for n, v in VERSIONS.items())
    # user is absent: its package left nothing but (none) config files; an old kernel's too
    query += f"{pkg('user')}\t2.0.1\trc \n{pkg('user', '5.10.0-1-amd64')}\t\tun \n"
    data["dpkg"] = {
        "query": ran(query),
        "list": {
            pkg(n): ran(f"/.\n/lib\n{KMODLAB}\n{KMODLAB}/{rec[n]['kmod']}.ko\n") for n in VERSIONS
        },
        "verify": {pkg(n): ran() for n in VERSIONS},
    }
    for suffix in (".ko", ".ko.xz", ".ko.gz", ".ko.zst"):
        data["stat"][f"{KMODLAB}/user{suffix}"] = NONE
    return data


def deb_problems(data: dict[str, Any], name: str, check) -> list[str]:
    return check(recs()[name], Observation(data), KERNEL)


def deb_module_file(record, obs, kernel):
    return checks.module_file(record, obs, kernel, "deb")


DEB_CHECKS = [
    (name, check)
    for name in VERSIONS
    for check in (checks.package_built, checks.package_installed, deb_module_file)
] + [("user", checks.package_removed), ("hello-5", checks.loaded)]


@pytest.mark.parametrize(
    ("name", "check"), DEB_CHECKS, ids=[f"{n}-{c.__name__}" for n, c in DEB_CHECKS]
)
def test_healthy_package_host_passes(name, check):
    assert deb_problems(deb_healthy(), name, check) == []


def test_a_dkms_host_fails_the_package_checks_and_the_other_way_round():
    """Each delivery's checks fail on the other's host: neither can pass by accident."""
    dkms, deb = Observation(healthy()), Observation(deb_healthy())
    hello = recs()["hello-5"]
    assert checks.package_installed(hello, dkms, KERNEL) == [
        "dpkg-query could not list the kmodlab packages: dpkg-query was not run"
    ]
    assert checks.package_built(hello, dkms, KERNEL)
    assert (
        "(where the package kmodlab-hello-5-modules-6.1.0-18-amd64 installs it)"
        in (checks.module_file(hello, dkms, KERNEL, "deb")[0])
    )
    assert checks.dkms_built(hello, deb, KERNEL) == [
        "the DKMS tree could not be read: the DKMS tree was not read"
    ]
    assert "(where DKMS installs it)" in checks.module_file(hello, deb, KERNEL)[0]


def set_query(text: str):
    return lambda d: d["dpkg"].__setitem__("query", ran(text))


def replace_query(old: str, new: str):
    return lambda d: d["dpkg"]["query"].update(
        stdout=d["dpkg"]["query"]["stdout"].replace(old, new)
    )


H5 = pkg("hello-5")
BROKEN_DEB = [
    (
        "hello-5",
        checks.package_installed,
        replace_query(f"{H5}\t1.0.0\tii ", ""),
        f"dpkg knows no package {H5}: hello-5 1.0.0 for kernel {KERNEL} is not installed",
    ),
    (
        "hello-5",
        checks.package_installed,
        replace_query(f"{H5}\t1.0.0\tii ", f"{H5}\t1.0.0\tiF "),
        f"{H5} is iF (install ok half-configured), not installed (ii, install ok installed)",
    ),
    (
        "hello-5",
        checks.package_installed,
        replace_query(f"{H5}\t1.0.0\tii ", f"{H5}\t1.0.0\tri "),
        "is ri (remove ok installed), not installed",
    ),
    (
        "hello-5",
        checks.package_installed,
        replace_query(f"{H5}\t1.0.0\tii ", f"{H5}\t1.1.0\tii "),
        f"{H5} is at version 1.1.0, the manifest says 1.0.0",
    ),
    (
        "hello-5",
        checks.package_installed,
        lambda d: d["dpkg"].__setitem__("query", ran(rc=2, stderr="dpkg-query: error: locked")),
        "dpkg-query could not list the kmodlab packages: dpkg-query exited with 2: dpkg-query: "
        "error: locked",
    ),
    (
        "hello-5",
        checks.package_built,
        lambda d: d["dpkg"]["list"].__setitem__(
            H5, ran(rc=1, stderr=f"dpkg-query: package '{H5}' is not installed")
        ),
        f"dpkg -L {H5} failed: dpkg-query: package '{H5}' is not installed (hello-5 is not "
        f"installed from a package for {KERNEL})",
    ),
    (
        "hello-5",
        checks.package_built,
        lambda d: d["dpkg"]["list"].__setitem__(H5, ran(f"/.\n{KMODLAB}/other.ko\n")),
        f"{H5} does not ship {KMODLAB}/hello_5.ko (it ships {KMODLAB}/other.ko)",
    ),
    (
        "hello-5",
        checks.package_built,
        lambda d: d["commands"]["modinfo:hello-5"].update(
            stdout=MODINFO.format(k=KERNEL, n="hello_5").replace("updates/dkms", "extra")
        ),
        f"modinfo resolves hello_5 to /lib/modules/{KERNEL}/extra/hello_5.ko, which {H5} does "
        "not ship",
    ),
    (
        "hello-5",
        checks.package_built,
        lambda d: d["dpkg"]["verify"].__setitem__(H5, ran(f"??5??????   {KMODLAB}/hello_5.ko\n")),
        f"{KMODLAB}/hello_5.ko is not the file {H5} shipped (dpkg --verify: ??5??????   "
        f"{KMODLAB}/hello_5.ko): reinstall the package",
    ),
    (
        "hello-5",
        checks.package_built,
        lambda d: d["dpkg"]["verify"].__setitem__(H5, ran(f"missing     {KMODLAB}/hello_5.ko\n")),
        f"{KMODLAB}/hello_5.ko of {H5} is missing",
    ),
    (
        "hello-5",
        checks.package_built,
        lambda d: d["dpkg"].pop("verify"),
        f"dpkg --verify {H5} was not run",
    ),
    (
        "hello-5",
        deb_module_file,
        lambda d: d["commands"]["modinfo:hello-5"].update(
            stdout=MODINFO.format(k=KERNEL, n="hello-5").replace("updates/dkms", "updates/kmodlab")
        ),
        f"modinfo filename is {KMODLAB}/hello-5.ko, not {KMODLAB}/hello_5.ko (where the package "
        f"{H5} installs it)",
    ),
    (
        "hello-5",
        deb_module_file,
        lambda d: d["commands"]["modinfo:hello-5"].update(
            stdout=MODINFO.format(k="6.1.0-17-amd64", n="hello_5").replace(
                "updates/dkms", "updates/kmodlab"
            )
        ),
        "vermagic '6.1.0-17-amd64 SMP",
    ),
    (
        "user",
        checks.package_removed,
        replace_query(f"{pkg('user')}\t2.0.1\trc ", f"{pkg('user')}\t2.0.1\tii "),
        f"{pkg('user')} 2.0.1 is still ii (install ok installed): remove it (apt-get purge "
        f"{pkg('user')})",
    ),
    (
        "user",
        checks.package_removed,
        replace_query(f"{pkg('user')}\t2.0.1\trc ", f"{pkg('user')}\t2.0.1\trU "),
        "is still rU (remove ok unpacked)",
    ),
    (
        "user",
        checks.package_removed,
        replace_query(
            f"{pkg('user', '5.10.0-1-amd64')}\t\tun ",
            f"{pkg('user', '5.10.0-1-amd64')}\t1.0.0\tii ",
        ),
        f"{pkg('user', '5.10.0-1-amd64')} 1.0.0 is still ii",
    ),
    (
        "user",
        checks.package_removed,
        set_stat(f"{KMODLAB}/user.ko", f(0o644)),
        f"{KMODLAB}/user.ko exists (removing the package deletes it)",
    ),
    (
        "user",
        checks.package_removed,
        lambda d: d["dpkg"].pop("query"),
        "dpkg-query could not list the kmodlab packages: dpkg-query was not run",
    ),
]


@pytest.mark.parametrize(
    ("name", "check", "change", "words"),
    BROKEN_DEB,
    ids=[f"{b[0]}-{b[1].__name__}-{b[3][:30]}" for b in BROKEN_DEB],
)
def test_broken_package_host_fails(name, check, change, words):
    data = deb_healthy()
    change(data)
    found = deb_problems(data, name, check)
    assert found, f"{check.__name__} passed on a broken host"
    assert any(words in p for p in found), found


def test_package_removed_reads_only_the_modules_own_packages():
    """Another module whose name starts the same (user-extra, user-modules-x) is not
    this module's package, whatever its state."""
    data = deb_healthy()
    others = f"kmodlab-user-extra-modules-{KERNEL}\t1.0\tii \n"
    others += f"kmodlab-user-modules-x-modules-{KERNEL}\t1.0\tii \n"
    data["dpkg"]["query"]["stdout"] += others
    assert deb_problems(data, "user", checks.package_removed) == []


def test_rollout_state_as_the_collector_extracts_it():
    data = deb_healthy()
    assert checks.rollout_state(Observation(data)) is None
    data["rollout"] = {"found": False}
    assert checks.rollout_state(Observation(data)) is None
    good = {"hello-5": {"version": "1.0.0", "signer": "kmodlab", "when": "2025-01-01T10:00:00Z"}}
    data["rollout"] = {"found": True, "good": good, "pending": ["gadget"]}
    assert checks.rollout_state(Observation(data)) == {"good": good, "pending": ["gadget"]}
    data["rollout"] = {"error": "/etc/ansible/facts.d/kmodlab_rollout.fact: not JSON"}
    assert checks.rollout_state(Observation(data)) == data["rollout"]
