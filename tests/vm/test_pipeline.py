"""The module pipeline on a real VM: the DKMS lab (lab.yml with vars/dkms-lab.yml:
converge, a second run that changes nothing, both verified by kmod_verify), then bad
input, each proven on the converged VM."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from vmhelpers import LAB_MODULES, PLAIN, ROOT, Guest, assert_not_reached, playbook, recap

from kmodlab.manifest import load_manifest

HELLO5 = load_manifest(ROOT / "modules/hello-5").wanted_params()
_MEMORY = load_manifest(ROOT / "modules/memory")
MEMORY_MAJOR = _MEMORY.expected_major(_MEMORY.expect.proc_devices[0], _MEMORY.wanted_params())


def test_the_dkms_lab_converges_idempotently_and_verifies(converged: Guest) -> None:
    log = (converged.lab.path / "dkms-lab.log").read_text()
    first, second = log.split("\n# second run\n")
    for run in (first, second):
        # Both runs verified every module on the host (kmod_verify's report).
        assert re.search(r"kmodlab verify: [1-9]\d* passed, 0 failed", run), run[-3000:]
        for name in LAB_MODULES:
            assert re.search(rf"\| {PLAIN} +\| {re.escape(name)} +\|", run), name
    # The first run built and loaded (DKMS), the second changed nothing.
    assert (recap(first) or {}).get("changed", 0) > 0
    assert (recap(second) or {}).get("changed") == 0
    # The guest still runs: the tier's runs never reboot or stop it.
    assert converged.run("echo alive").strip() == "alive"


def test_every_module_of_the_lab_loaded(converged: Guest) -> None:
    """Each module of the DKMS lab is loaded, and its .ko is DKMS's."""
    kernel = converged.run("uname -r").strip()
    for name in LAB_MODULES:
        kmod = load_manifest(ROOT / "modules" / name).kmod
        path = converged.run(f"/sbin/modinfo -n {kmod}").strip()
        # DKMS names the file after BUILT_MODULE_NAME: the module's name, dashes kept.
        assert path == f"/lib/modules/{kernel}/updates/dkms/{name}.ko", (name, path)
    loaded = converged.run("cut -d' ' -f1 /proc/modules").split()
    for name in LAB_MODULES:
        assert load_manifest(ROOT / "modules" / name).kmod in loaded, name


# Each state of one lab package the DKMS tree reader must tell as dkms status does
# (dkms 3.0.10), and back to installed. Lines are printed by the reader, then by dkms,
# per state. $P, $V: the package and its version, from its manifest.
_TREE_MODULE = load_manifest(ROOT / "modules/hello-1")
_TREE_STATES = r"""
set -eu
K=$(uname -r); T=/var/lib/dkms/$P/$V/$K/$(uname -m)/module
COPY=/lib/modules/$K/updates/dkms/$P.ko
show() {
  echo "== $1"
  python3 -c 'import sys; sys.path.insert(0, "/tmp/kmlt"); import dkms_tree as s
print("\n".join(sorted(e["line"] for e in s.read_tree("/var/lib/dkms", [sys.argv[1]]))))' "$P"
  echo "-- dkms"
  dkms status -m "$P" | sort
}
show installed
cp $COPY /tmp/kmlt/keep.ko; echo replaced >> $COPY; show diff
cp /tmp/kmlt/keep.ko $COPY
dkms uninstall $P/$V --no-depmod >/dev/null; show built
mv $T/$P.ko /tmp/kmlt/built.ko; show nothing-built
mv /tmp/kmlt/built.ko $T/$P.ko
cp -r /usr/src/$P-$V /usr/src/$P-9.9
sed -i 's/^PACKAGE_VERSION=.*/PACKAGE_VERSION="9.9"/' /usr/src/$P-9.9/dkms.conf
dkms add $P/9.9 >/dev/null; show second-version-added
dkms remove $P/9.9 --all --no-depmod >/dev/null; rm -r /usr/src/$P-9.9
dkms install $P/$V --no-depmod >/dev/null; show reinstalled
cmp $COPY /tmp/kmlt/keep.ko
"""


def test_dkms_tree_reader_agrees_with_dkms_status(converged: Guest) -> None:
    """kmodlab.lab.dkms and the verify suite read DKMS state from the tree, not from dkms status
    (25 s on this guest): on the real dkms, the reader says what dkms status says."""
    reader = ROOT / "plugins/module_utils/dkms_tree.py"
    converged.run("mkdir -p /tmp/kmlt && cat > /tmp/kmlt/dkms_tree.py", stdin=reader.read_bytes())
    pkg = _TREE_MODULE
    script = f"P={shlex.quote(pkg.name)} V={shlex.quote(pkg.version)}; {_TREE_STATES}"
    out = converged.run(f"sudo bash -c {shlex.quote(script)}")
    states = re.findall(r"^== (\S+)\n(.*?)^-- dkms\n(.*?)(?=^== |\Z)", out, re.S | re.M)
    assert [s[0] for s in states] == [
        "installed",
        "diff",
        "built",
        "nothing-built",
        "second-version-added",
        "reinstalled",
    ], out
    for name, ours, theirs in states:
        assert ours.strip() == theirs.strip(), f"{name}:\n{out}"
    assert "Diff between built and installed" in states[1][1]
    assert f"{pkg.name}/9.9: added" in states[4][1]
    assert pkg.kmod in converged.run("cut -d' ' -f1 /proc/modules").split()


def test_unknown_module_rejected_before_any_host_is_touched(converged: Guest) -> None:
    before = converged.run("sudo stat -c %Y /etc/ansible/facts.d/kmodlab_dkms_module.fact")
    proc = playbook(converged, "-e", json.dumps({"kmodlab_modules": [{"name": "no-such-mod"}]}))
    assert proc.returncode != 0
    assert "unknown module 'no-such-mod'" in proc.stdout
    assert_not_reached(proc.stdout)
    after = converged.run("sudo stat -c %Y /etc/ansible/facts.d/kmodlab_dkms_module.fact")
    assert before == after


def test_a_package_beside_the_dkms_copy_is_refused_before_anything_changes(
    converged: Guest, tmp_path: Path
) -> None:
    """One copy per module: hello-1 is DKMS's on the converged lab; lab.yml with delivery
    deb for it builds the package in the container, then stops the host before installing
    it, naming the DKMS copy and the way to switch. Nothing on the host changed."""
    state = "ls /var/cache/kmodlab /etc/ansible/facts.d; dpkg-query -W 'kmodlab-*' 2>&1; true"
    before = converged.run(state)
    selection = {"kmodlab_delivery": "deb", "kmodlab_modules": [{"name": "hello-1"}]}
    proc = playbook(
        converged,
        "-e",
        json.dumps(selection),
        "-e",
        f"kmod_verify_report_dir={tmp_path}",
    )
    assert proc.returncode != 0, proc.stdout[-4000:]
    said = " ".join(proc.stdout.split())  # the callback wraps long messages
    assert "hello-1: DKMS already has this module on this host" in said, proc.stdout[-4000:]
    assert "(hello-1: /var/lib/dkms/hello-1)" in said
    assert "Nothing was changed" in said and "kmodlab_delivery: dkms" in said
    assert "TASK [kmodlab.lab.module_install : Install the prebuilt packages" in proc.stdout
    assert "TASK [kmodlab.lab.kmod_load" not in proc.stdout
    assert converged.run(state) == before
    assert "hello_1" in converged.run("cut -d' ' -f1 /proc/modules").split()


def test_wrong_parameter_type_rejected_naming_module_and_parameter(converged: Guest) -> None:
    entries = [{"name": "hello-5", "params": {"mylong": "hello"}}]
    proc = playbook(converged, "-e", json.dumps({"kmodlab_modules": entries}))
    assert proc.returncode != 0
    assert "hello-5" in proc.stdout and "mylong" in proc.stdout
    assert "'hello' is not an integer" in proc.stdout
    assert_not_reached(proc.stdout)
    # Still loaded with the lab's value, not defaults.
    assert converged.run("cat /sys/module/hello_5/parameters/myint").strip() == str(HELLO5["myint"])


@pytest.fixture
def manifests_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "modules"
    shutil.copytree(ROOT / "modules", dest)
    return dest


def test_broken_manifest_names_file_and_field(converged: Guest, manifests_copy: Path) -> None:
    path = manifests_copy / "hello-1" / "module.yml"
    data = yaml.safe_load(path.read_text())
    del data["license"]
    path.write_text(yaml.safe_dump(data))
    proc = playbook(converged, "-e", json.dumps({"kmodlab_manifest_dirs": [str(manifests_copy)]}))
    assert proc.returncode != 0
    assert f"{path}" in proc.stdout and "field license" in proc.stdout
    assert_not_reached(proc.stdout)


def test_kernel_rejects_parameter_previous_config_restored(
    converged: Guest, manifests_copy: Path
) -> None:
    """A value the schema lets through (mylong typed charp in a wrong manifest) but the
    kernel refuses: the play names module, parameter and the kernel's message, and the
    good configuration is back: loaded, in its modprobe.d file and in the local fact."""
    conf = "cat /etc/modprobe.d/hello-5.conf"
    fact = "sudo cat /etc/ansible/facts.d/kmodlab_kmod_load.fact"
    conf_before = converged.run(conf)
    fact_before = json.loads(converged.run(fact))["modules"]["hello-5"]
    path = manifests_copy / "hello-5" / "module.yml"
    data = yaml.safe_load(path.read_text())
    for p in data["parameters"]:
        if p["name"] == "mylong":
            p["type"] = "charp"
            p["default"] = "9999"
    data["lab"]["params"]["mylong"] = "hello"
    path.write_text(yaml.safe_dump(data))
    proc = playbook(
        converged,
        "-e",
        json.dumps({"kmodlab_manifest_dirs": [str(manifests_copy)]}),
        "--tags",
        "kmod_load",
    )
    out = proc.stdout
    assert proc.returncode != 0, out[-3000:]
    assert re.search(
        r"hello-5: the kernel refused parameter mylong=hello: .*invalid for parameter", out
    ), out[-3000:]
    assert converged.run("cat /sys/module/hello_5/parameters/myint").strip() == str(HELLO5["myint"])
    assert converged.run("sudo cat /sys/module/hello_5/parameters/mylong").strip() == str(
        HELLO5["mylong"]
    )
    assert converged.run(conf) == conf_before
    assert json.loads(converged.run(fact))["modules"]["hello-5"] == fact_before


def test_fixed_major_taken_names_major_and_owner(converged: Guest) -> None:
    devices = converged.run("cat /proc/devices")
    major = re.search(r"^\s*(\d+) chardev$", devices, re.M)
    assert major, devices
    entries = [{"name": "memory", "params": {"major": int(major.group(1))}}]
    proc = playbook(
        converged, "-e", json.dumps({"kmodlab_host_modules": entries}), "--tags", "kmod_load"
    )
    out = proc.stdout
    assert proc.returncode != 0
    assert major.group(1) in out and "chardev" in out, out[-3000:]
    # memory is back on its good major.
    assert re.search(rf"^\s*{MEMORY_MAJOR} memory$", converged.run("cat /proc/devices"), re.M)


def test_module_that_does_not_compile_others_still_verified(
    converged: Guest, manifests_copy: Path
) -> None:
    src = manifests_copy / "hello-2"
    data = yaml.safe_load((src / "module.yml").read_text())
    data["version"] = "1.0.1"
    (src / "module.yml").write_text(yaml.safe_dump(data))
    c_file = next(src.glob("*.c"))
    c_file.write_text(c_file.read_text() + "\nthis is not C;\n")
    report_dir = manifests_copy.parent / "report"
    proc = playbook(
        converged,
        "-e",
        json.dumps({"kmodlab_manifest_dirs": [str(manifests_copy)]}),
        "-e",
        f"kmod_verify_report_dir={report_dir}",
    )
    out = proc.stdout
    assert proc.returncode != 0
    # The compiler's own error, from the make.log tail, names the broken line.
    assert "make.log" in out and re.search(rf"{c_file.name}:\d+:\d+: error:", out), out[-4000:]
    # The old, good hello-2 is still installed and loaded; the others verified.
    assert "hello_2" in converged.run("cut -d' ' -f1 /proc/modules").split()
    kernel = converged.run("uname -r").strip()
    status = converged.run("sudo dkms status hello-2")
    assert f"hello-2/1.0.0, {kernel}, x86_64: installed" in status, status
    report = json.loads((report_dir / "report.json").read_text())
    (host,) = report["hosts"]
    failed = {m["name"] for m in host["modules"] if m["failures"]}
    assert failed == {"hello-2"}, report["summary"]
    passed = [m for m in host["modules"] if m["name"] != "hello-2"]
    assert len(passed) == len(LAB_MODULES) - 1 and all(
        m["counts"]["pass"] == m["counts"]["total"] for m in passed
    )
