"""Faults injected behind the toolkit's back on the converged lab VM, on a real kernel.

Each round injects faults into different modules, then:
1. kmod_verify alone (``lab.yml --tags kmod_verify``) fails, and report.json names the
   host, the module and the check that caught each fault, and nothing else failed;
2. ``lab.yml --check --diff`` says what it would change and changes nothing (the
   host's state is compared before and after);
3. ``lab.yml`` repairs the host, and its verify stage passes with every check of the
   lab ran again (assert_repaired: the report lists, for every lab module, exactly the
   checks the manifests call for, each observed and passed).

Rounds that need the same repair share it: the hand-edited modprobe file (formerly
round 2) rides in round 4, the hidden parameter changed by a reload (formerly round 3)
in round 6; each keeps its own injection and every one of its former asserts.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from vmhelpers import LAB_MODULES, PLAIN, ROOT, Guest, playbook, recap

from kmodlab.manifest import load_manifest

# A failure halfway leaves the lab converged again for the tests after it.
pytestmark = pytest.mark.usefixtures("restores_lab")

HELLO5 = load_manifest(ROOT / "modules/hello-5")
_MEMORY = load_manifest(ROOT / "modules/memory")
MEMORY_MAJOR = _MEMORY.expected_major(_MEMORY.expect.proc_devices[0], _MEMORY.wanted_params())
# The /dev nodes the manifests expect, and the two the rounds tamper with.
DEV_NODES = {
    name: load_manifest(ROOT / "modules" / name).expect.dev_nodes[0]
    for name in LAB_MODULES
    if load_manifest(ROOT / "modules" / name).expect.dev_nodes
}
CHARDEV, MEMORY = DEV_NODES["chardev"].path, DEV_NODES["memory"].path


def stat_mode(node: str) -> str:
    """The manifest's mode of a /dev node as `stat -c %a` prints it."""
    mode = next(n.mode for n in DEV_NODES.values() if n.path == node)
    assert mode is not None, node
    return f"{int(mode, 8):o}"


# Everything a lab.yml run could change on the host, as text: which modules are loaded
# (and which instance: the kernfs inode of /sys/module/KMOD changes on every load), the
# live parameters, the toolkit's files, the DKMS tree and the /dev nodes.
SNAPSHOT = r"""
set -u
for m in /sys/module/*; do
  [ -e "$m/initstate" ] || continue
  echo "module $(basename $m) $(stat -c %i $m)"
  for p in "$m"/parameters/*; do
    [ -r "$p" ] && echo "param $p=$(cat $p)"
  done
done
for f in /etc/modprobe.d/*.conf /etc/modules-load.d/*.conf; do
  [ -e "$f" ] && echo "file $f $(md5sum < $f | cut -c1-32)"
done
find /var/lib/dkms /lib/modules/$(uname -r)/updates -printf 'dkms %p %s\n' 2>/dev/null | sort
for d in "$@"; do echo "dev $d $(stat -c '%F %t:%T %a' $d 2>&1)"; done
"""


def snapshot(guest: Guest) -> list[str]:
    nodes = " ".join(shlex.quote(n.path) for n in DEV_NODES.values())
    out = guest.run(f"sudo bash -c {shlex.quote(SNAPSHOT)} snapshot {nodes}")
    return sorted(out.splitlines())


def verify_alone(guest: Guest, report_dir: Path) -> tuple[str, dict]:
    proc = playbook(guest, "--tags", "kmod_verify", "-e", f"kmod_verify_report_dir={report_dir}")
    report = json.loads((report_dir / "report.json").read_text())
    return proc.stdout, report


def failures(report: dict, host: str = PLAIN) -> dict[str, list[dict]]:
    """{module: [failure, ...]} of one host."""
    for entry in report["hosts"]:
        if entry["host"] == host:
            assert not entry["problems"], entry["problems"]
            return {m["name"]: m["failures"] for m in entry["modules"] if m["failures"]}
    raise AssertionError(f"{host} is not in the report: {report}")


def assert_caught(output: str, report: dict, caught: dict[str, dict[str, str]]) -> None:
    """Exactly the faulty modules failed; each by the named check, with the named words."""
    found = failures(report)
    assert sorted(found) == sorted(caught), json.dumps(found, indent=1)
    for module, checks in caught.items():
        for test, words in checks.items():
            hits = [f for f in found[module] if f["test"] == test]
            assert hits, f"{module}: {test} did not fail: {found[module]}"
            assert re.search(words, hits[0]["message"]), hits[0]["message"]
            # The play's failure summary names host, module and check too.
            assert f"{PLAIN}/{module} [" in output and test in output, output[-4000:]


def assert_repaired(guest: Guest, report_dir: Path) -> str:
    """lab.yml repairs the host; its verify stage then passes with every check.

    The report of that run (signing stage included, so the signature check is in) is
    the evidence that no check vanished: every lab module with exactly LAB_CHECKS, each
    of which observed something and passed (formerly a verify run of its own,
    test_report_lists_every_check_of_every_module)."""
    proc = playbook(guest, "-e", f"kmod_verify_report_dir={report_dir}")
    assert proc.returncode == 0, proc.stdout[-5000:]
    report = json.loads((report_dir / "report.json").read_text())
    assert failures(report) == {}, "the repaired lab still fails checks"
    modules = {m["name"] for h in report["hosts"] for m in h["modules"]}
    assert modules == set(LAB_MODULES), modules
    assert_every_check_listed(report, proc.stdout)
    return proc.stdout


def assert_every_check_listed(report: dict, output: str) -> None:
    """The report of a converged lab lists every check of every module, all passed."""
    assert report["exitstatus"] == 0, f"verify exit status {report['exitstatus']}: {output[-4000:]}"
    (host,) = report["hosts"]
    assert host["host"] == PLAIN and not host["problems"], (
        f"report host: {host['host']}, {host['problems']}"
    )
    assert [c["outcome"] for c in host["checks"]] == ["pass"], f"host checks: {host['checks']}"
    modules = {m["name"]: m for m in host["modules"]}
    assert sorted(modules) == sorted(LAB_CHECKS), f"report modules: {sorted(modules)}"
    for name, kinds in LAB_CHECKS.items():
        checks = modules[name]["checks"]
        assert sorted(c["kind"] for c in checks) == sorted(kinds), (
            f"{name}: checks listed differ from LAB_CHECKS",
            checks,
        )
        assert modules[name]["counts"]["total"] == len(kinds), (
            f"{name}: counts.total {modules[name]['counts']['total']}, wanted {len(kinds)}"
        )
        # Every check observed something and passed: none "not observable".
        assert {c["outcome"] for c in checks} == {"pass"}, (
            f"{name}: not every check passed",
            checks,
        )


def changed_tasks(output: str) -> list[str]:
    """The play's tasks that reported a change, with the changed lines under each."""
    found, task = [], ""
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line.rstrip(" *")
        elif line.startswith("changed:"):
            found.append(f"{task}: {line}")
    return found


def assert_check_mode_changes_nothing(guest: Guest, expect_changes: bool) -> str:
    before = snapshot(guest)
    proc = playbook(guest, "--check", "--diff")
    assert proc.returncode == 0, proc.stdout[-5000:]
    counters = recap(proc.stdout)
    assert counters is not None, proc.stdout[-3000:]
    assert (counters["changed"] > 0) == expect_changes, changed_tasks(proc.stdout)
    assert snapshot(guest) == before
    return proc.stdout


@pytest.fixture
def report_dir(tmp_path: Path) -> Path:
    return tmp_path


# The checks the verify suite must run for each lab module (state present, lab
# parameters), written out by hand from the manifests: the evidence that no check
# vanished. Every module has these eight (signature: the sign stage ran, and the plain
# VM's kernel does not trust the key, Secure Boot being off: no taint check); the rest
# per module.
BASE = [
    "dkms_built",
    "dkms_installed",
    "signature",
    "module_file",
    "persistence",
    "loaded",
    "modinfo",
    "dmesg_load",
]
LAB_CHECKS = {
    "hello-1": BASE,
    "hello-2": BASE,
    "hello-3": BASE,
    "hello-4": BASE,
    "startstop": BASE,
    "hello-5": [*BASE, "params", "param_files"],
    "procfs1": [*BASE, "procfs", "functional"],
    "hello-sysfs": [*BASE, "sysfs", "functional", "functional"],
    "chardev": [*BASE, "proc_devices", "dev_nodes", "sysfs", "functional", "functional"],
    "memory": [*BASE, "param_files", "proc_devices", "dev_nodes", "sysfs", "functional"],
    "symexport": [*BASE, "sysfs"],
    "symuse": [*BASE, "sysfs", "functional"],
}


def test_converged_lab_check_mode_changes_nothing(converged: Guest) -> None:
    assert_check_mode_changes_nothing(converged, expect_changes=False)


# Round 1: a fault in each of five modules at once.
ROUND1: dict[str, tuple[str, dict[str, str]]] = {
    "hello-1": ("rmmod hello_1", {"test_loaded": r"not loaded"}),
    "chardev": (f"rm {CHARDEV}", {"test_dev_nodes": re.escape(CHARDEV)}),
    "memory": (f"chmod 0600 {MEMORY}", {"test_dev_nodes": rf"{re.escape(MEMORY)}.*(0600|mode)"}),
    "hello-5": (
        "echo 5 > /sys/module/hello_5/parameters/myint; "
        "echo Y > /sys/module/hello_5/parameters/myflags",
        {"test_params": r"(?s)(?=.*myint is '5')(?=.*myflags is 'Y,Y,N,N', wanted 'N,Y,N,N')"},
    ),
    "procfs1": (
        "dkms remove procfs1/{v} --all --no-depmod".format(
            v=load_manifest(ROOT / "modules/procfs1").version
        ),
        {"test_dkms_built": r"procfs1", "test_dkms_installed": r"procfs1"},
    ),
}


def test_round1_each_fault_caught_named_and_repaired(converged: Guest, report_dir: Path) -> None:
    for command, _checks in ROUND1.values():
        converged.run(f"sudo bash -c {shlex.quote(command)}")
    output, report = verify_alone(converged, report_dir / "verify")
    assert_caught(output, report, {m: checks for m, (_command, checks) in ROUND1.items()})

    dry = assert_check_mode_changes_nothing(converged, expect_changes=True)
    assert "hello-1" in dry and "hello-5" in dry and "procfs1" in dry

    repaired = assert_repaired(converged, report_dir / "repair")
    recap_counts = recap(repaired)
    assert recap_counts is not None and recap_counts["changed"] > 0
    assert converged.run(f"stat -c %a {MEMORY}").strip() == stat_mode(MEMORY)
    assert converged.run("cat /sys/module/hello_5/parameters/myint").strip() == str(
        HELLO5.wanted_params()["myint"]
    )


def test_round4_kernel_refuses_init_and_round2_modprobe_file_edited_by_hand(
    converged: Guest, report_dir: Path
) -> None:
    """A test module holds memory's major under memory's own name (so /proc/devices looks
    right and only the kernel can refuse: EBUSY) and chardev's device class (EEXIST).
    The play quotes the kernel's own lines, never a stack trace; nothing is half-loaded;
    once the squatter is gone lab.yml restores both.

    Round 2 shares the verify run and the repair: after the refused run (so that it
    cannot touch the file), hello-5's modprobe.d file is edited by hand; kmod_verify alone
    catches it (persistence) beside the two refused modules, and the repair puts the
    file back as it was."""
    src = ROOT / "tests/vm/squatter"
    conf = "/etc/modprobe.d/hello-5.conf"
    converged.run("rm -rf /tmp/squatter && mkdir /tmp/squatter")
    for f in ("squatter.c", "Kbuild"):
        converged.run(f"cat > /tmp/squatter/{f}", stdin=(src / f).read_bytes())
    converged.run("make -s -C /lib/modules/$(uname -r)/build M=/tmp/squatter modules")
    squat = f"insmod /tmp/squatter/squatter.ko major={MEMORY_MAJOR} label=memory classname=chardev"
    converged.run(f"sudo rmmod memory chardev && sudo {squat}")
    try:
        assert re.search(
            rf"^\s*{MEMORY_MAJOR} memory$", converged.run("cat /proc/devices"), re.M
        ), f"the squatter does not hold major {MEMORY_MAJOR} as memory"

        proc = playbook(converged, "-e", f"kmod_verify_report_dir={report_dir / 'refused'}")
        assert proc.returncode != 0, "lab.yml passed although the kernel refuses two modules"
        out = proc.stdout
        memory = _failure_message(out, "memory: loading")
        assert "Device or resource busy" in memory, out[-5000:]
        assert f"memory: cannot register major {MEMORY_MAJOR}" in memory, memory
        chardev = _failure_message(out, "chardev: loading")
        assert "cannot create duplicate filename" in chardev and "/class/chardev" in chardev, (
            chardev
        )
        for message in (memory, chardev):
            assert "+0x" not in message and "Call Trace" not in message, message
        # Nothing half-done: neither is loaded, no /dev nodes, the rest as before.
        loaded = converged.run("cut -d' ' -f1 /proc/modules").split()
        assert "memory" not in loaded and "chardev" not in loaded and "squatter" in loaded, (
            f"after the refused run: {loaded}"
        )
        for node in (MEMORY, CHARDEV):
            assert "rc=1" in converged.run(f"test -e {node}", check=False), f"{node} exists"
        for name in LAB_MODULES:
            if name not in ("memory", "chardev"):
                assert name.replace("-", "_") in loaded, f"{name} is no longer loaded"

        # Round 2: hello-5's modprobe.d file edited by hand.
        original = converged.run(f"cat {conf}")
        converged.run(f"sudo sed -i 's/myint=[0-9-]*/myint=43/' {conf}")
        assert converged.run(f"cat {conf}") != original, f"the edit did not change {conf}"

        # kmod_verify alone names each fault: the two refused modules, the edited file.
        output, report = verify_alone(converged, report_dir / "verify")
        assert_caught(
            output,
            report,
            {
                "memory": {"test_loaded": r"not loaded"},
                "chardev": {"test_loaded": r"not loaded"},
                "hello-5": {"test_persistence": re.escape(conf)},
            },
        )
    finally:
        converged.run("sudo rmmod squatter", check=False)
    assert_repaired(converged, report_dir / "repair")
    assert re.search(rf"^\s*{MEMORY_MAJOR} memory$", converged.run("cat /proc/devices"), re.M), (
        f"memory does not hold major {MEMORY_MAJOR} after the repair"
    )
    assert converged.run(f"cat {conf}") == original, f"the repair did not put {conf} back"


def _failure_message(output: str, start: str) -> str:
    """The play's failure message that starts with ``start`` (folded lines joined)."""
    text = " ".join(line.strip() for line in output.splitlines())
    found = re.search(re.escape(start) + r".*?(?:left unloaded|loaded again)", text)
    assert found, output[-5000:]
    return found.group(0)


INSTANCES = r"""
for m in /sys/module/*; do
  if [ -e "$m/initstate" ]; then echo "${m##*/} $(stat -c %i "$m")"; fi
done
"""


def instances(guest: Guest) -> dict[str, str]:
    """{kmod: kernfs inode of /sys/module/KMOD}: a new inode is a new load."""
    out = guest.run(f"bash -c {shlex.quote(INSTANCES)}")
    return dict(line.split() for line in out.splitlines())


def test_round5_parameter_change_reloads_that_module_once(
    converged: Guest, report_dir: Path
) -> None:
    wanted = HELLO5.wanted_params()["myint"]
    goodbye = "sudo dmesg | grep -c 'hello_5: goodbye, world (parameters)' || true"
    for value in (wanted + 1, wanted):
        before, unloads = instances(converged), int(converged.run(goodbye))
        override = {"kmodlab_host_modules": [{"name": "hello-5", "params": {"myint": value}}]}
        proc = playbook(
            converged,
            "-e",
            json.dumps(override),
            "-e",
            f"kmod_verify_report_dir={report_dir / str(value)}",
        )
        assert proc.returncode == 0, proc.stdout[-5000:]
        after = instances(converged)
        assert {k for k in before if after.get(k) != before[k]} == {"hello_5"}
        assert int(converged.run(goodbye)) == unloads + 1
        live = converged.run("cat /sys/module/hello_5/parameters/myint").strip()
        assert live == str(value)


def test_round6_module_in_use_left_alone_and_round3_hidden_parameter_changed_by_a_reload(
    converged: Guest, report_dir: Path
) -> None:
    """chardev must be reloaded (its /dev node has the wrong mode) while a process holds
    it open: the play says so and changes nothing; once the process is gone, it repairs.

    Round 3 shares the repair: once the holder is gone (so the refused run above saw
    chardev's fault alone), hello-5 is loaded again by hand with another myshort, which
    has no sysfs file: the module's own load message is the evidence. kmod_verify alone
    catches it (and chardev's mode, still wrong); the one repair reloads both."""
    converged.run(f"sudo chmod 0600 {CHARDEV}")
    holder = converged.run(
        f"sudo bash -c 'sleep 900 < {CHARDEV} > /dev/null 2>&1 & echo $!'"
    ).strip()
    try:
        before, snap = instances(converged), snapshot(converged)
        proc = playbook(converged, "-e", f"kmod_verify_report_dir={report_dir / 'busy'}")
        assert proc.returncode != 0, "lab.yml passed although chardev is in use"
        text = " ".join(line.strip() for line in proc.stdout.splitlines())
        assert re.search(
            rf"chardev must be unloaded \({re.escape(CHARDEV)} has mode 0600.*in use", text
        ), proc.stdout[-5000:]
        assert instances(converged) == before, "the refused run loaded or unloaded a module"
        assert snapshot(converged) == snap, "the refused run changed the host"
    finally:
        converged.run(f"sudo kill {holder}", check=False)

    # Round 3: hello-5's hidden parameter changed by a reload.
    wanted = HELLO5.wanted_params()["myshort"]
    other = wanted + 1
    converged.run(f"sudo rmmod hello_5 && sudo modprobe hello-5 myshort={other}")
    # The visible parameters are as wanted (modprobe.d), only the hidden one differs.
    assert converged.run("cat /sys/module/hello_5/parameters/myint").strip() == str(
        HELLO5.wanted_params()["myint"]
    ), "hello-5's visible myint is not the wanted one after the reload by hand"
    output, report = verify_alone(converged, report_dir / "verify")
    assert_caught(
        output,
        report,
        {
            "hello-5": {"test_params": rf"myshort.*{other}"},
            "chardev": {"test_dev_nodes": rf"{re.escape(CHARDEV)}.*(0600|mode)"},
        },
    )

    repaired = assert_repaired(converged, report_dir / "repair")
    assert converged.run(f"stat -c %a {CHARDEV}").strip() == stat_mode(CHARDEV), (
        f"the repair did not restore the mode of {CHARDEV}"
    )
    assert "myshort" in repaired, "the repair does not say it reloads hello-5 for myshort"
    log = converged.run("sudo dmesg | grep 'hello_5: myshort=' | tail -1")
    assert f"myshort={wanted}" in log, log
