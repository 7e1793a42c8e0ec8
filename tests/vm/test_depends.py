"""A module that uses another module's exported symbol, on a real kernel.

symuse calls symexport_count(), which symexport exports. On the converged lab VM: both
are loaded, the kernel records symuse as symexport's holder, symexport counted the call,
symuse's DKMS package names symexport in BUILD_DEPENDS and was linked against the
Module.symvers symexport's package kept (same CRC). Then lab.yml with both ``absent``
(and hello-3, which nothing depends on) unloads symuse before symexport and removes all
three from DKMS, and a plain lab.yml run puts the lab back.
"""

from __future__ import annotations

import json
from pathlib import Path

from vmhelpers import ROOT, Guest, playbook, recap

from kmodlab.manifest import load_manifest

EXPORTER = load_manifest(ROOT / "modules/symexport")
USER = load_manifest(ROOT / "modules/symuse")
# A lab module no other depends on, removed in the same run.
SOLO = load_manifest(ROOT / "modules/hello-3")
FUNCTION = "symexport_count"


def _loaded(guest: Guest) -> list[str]:
    return guest.run("cut -d' ' -f1 /proc/modules").split()


def _kernel_log(guest: Guest) -> list[str]:
    return guest.run("sudo dmesg").splitlines()


def _report(report_dir: Path) -> dict[str, dict]:
    report = json.loads((report_dir / "report.json").read_text())
    (host,) = report["hosts"]
    return {m["name"]: m for m in host["modules"]}


def _assert_pair_live(guest: Guest) -> None:
    """Both loaded, symuse holding symexport, and symexport's files showing the call."""
    loaded = _loaded(guest)
    assert EXPORTER.kmod in loaded and USER.kmod in loaded, loaded
    holders = guest.run(f"ls /sys/module/{EXPORTER.kmod}/holders").split()
    assert holders == [USER.kmod], holders
    assert guest.run(f"cat /sys/module/{EXPORTER.kmod}/refcnt").strip() == "1"
    # /proc/modules: name, size, use count, users
    fields = guest.run(f"grep '^{EXPORTER.kmod} ' /proc/modules").split()
    assert fields[2:4] == ["1", f"{USER.kmod},"], fields
    assert guest.run("cat /sys/kernel/symexport/last_caller").strip() == USER.kmod
    assert int(guest.run("cat /sys/kernel/symexport/calls").strip()) >= 1


def test_the_user_is_linked_against_the_exporter_and_holds_it(converged: Guest) -> None:
    kernel = converged.run("uname -r").strip()
    arch = converged.run("uname -m").strip()
    _assert_pair_live(converged)

    # the call, in both modules' words
    log = "\n".join(_kernel_log(converged))
    assert f"{USER.kmod}: {FUNCTION}() returned " in log, log[-3000:]
    assert f"{EXPORTER.kmod}: call " in log and f" from {USER.kmod}" in log, log[-3000:]
    # the kernel will not take symexport away from its user
    busy = converged.run(f"sudo rmmod {EXPORTER.kmod}", check=False)
    assert busy.startswith("rc=1") and "in use" in busy, busy
    assert EXPORTER.kmod in _loaded(converged)

    # the installed module records the dependency for modprobe and depmod
    assert converged.run(f"/sbin/modinfo -F depends {USER.kmod}").strip() == EXPORTER.name
    deps = converged.run(f"grep '/{USER.name}.ko' /lib/modules/{kernel}/modules.dep")
    assert f"/{EXPORTER.name}.ko" in deps, deps

    # DKMS: both installed; symuse's dkms.conf names its build dependency and symbols
    status = converged.run(f"sudo dkms status {EXPORTER.name}; sudo dkms status {USER.name}")
    for m in (EXPORTER, USER):
        assert f"{m.name}/{m.version}, {kernel}, {arch}: installed" in status, status
    conf = converged.run(f"cat /usr/src/{USER.name}-{USER.version}/dkms.conf")
    assert f'BUILD_DEPENDS=("{EXPORTER.name}")' in conf, conf
    assert (
        f"KBUILD_EXTRA_SYMBOLS=${{dkms_tree}}/{EXPORTER.name}"
        "/kernel-${kernelver}-${arch}/module/Module.symvers"
    ) in conf, conf
    exporter_conf = converged.run(f"cat /usr/src/{EXPORTER.name}-{EXPORTER.version}/dkms.conf")
    assert 'POST_BUILD="kmodlab-keep-symvers.sh ' in exporter_conf, exporter_conf

    # the Module.symvers symexport's POST_BUILD kept beside its build, and the CRC that
    # symuse's build took from it
    symvers = converged.run(
        f"sudo cat /var/lib/dkms/{EXPORTER.name}/kernel-{kernel}-{arch}/module/Module.symvers"
    )
    (entry,) = [ln.split("\t") for ln in symvers.splitlines() if f"\t{FUNCTION}\t" in ln]
    assert entry[3] == "EXPORT_SYMBOL_GPL", entry
    versions = converged.run(
        f"/sbin/modprobe --dump-modversions /lib/modules/{kernel}/updates/dkms/{USER.name}.ko"
    )
    assert f"{entry[0]}\t{FUNCTION}" in versions.splitlines(), versions
    make_log = converged.run(
        f"sudo cat /var/lib/dkms/{USER.name}/{USER.version}/{kernel}/{arch}/log/make.log"
    )
    assert "MODPOST" in make_log and "undefined" not in make_log, make_log
    assert "WARNING" not in make_log, make_log


def test_both_absent_unloads_the_user_first_then_the_lab_comes_back(
    converged: Guest, tmp_path: Path
) -> None:
    kernel = converged.run("uname -r").strip()
    mark = f"kmodlab test_depends: both absent from here ({tmp_path.name})"
    converged.run(f"echo '{mark}' | sudo tee /dev/kmsg > /dev/null")
    absent = {
        "kmodlab_host_modules": [
            {"name": EXPORTER.name, "state": "absent"},
            {"name": USER.name, "state": "absent"},
            # a module nothing depends on goes the same way (one run for both cases)
            {"name": SOLO.name, "state": "absent"},
        ]
    }
    proc = playbook(
        converged, "-e", json.dumps(absent), "-e", f"kmod_verify_report_dir={tmp_path}/gone"
    )
    assert proc.returncode == 0, proc.stdout[-5000:]
    counters = recap(proc.stdout)
    assert counters is not None and counters["failed"] == 0 and counters["changed"] > 0

    loaded = _loaded(converged)
    assert USER.kmod not in loaded and EXPORTER.kmod not in loaded, loaded
    assert SOLO.kmod not in loaded, loaded
    # the kernel's own order: symuse went first (symexport could not have gone before)
    log = _kernel_log(converged)
    marks = [i for i, ln in enumerate(log) if mark in ln]
    assert marks, log[-50:]
    new = log[marks[-1] + 1 :]
    user_gone = [i for i, ln in enumerate(new) if f"{USER.kmod}: goodbye" in ln]
    exporter_gone = [i for i, ln in enumerate(new) if f"{EXPORTER.kmod}: removed " in ln]
    assert len(user_gone) == 1 and len(exporter_gone) == 1, new
    assert user_gone[0] < exporter_gone[0], new
    # removed from DKMS entirely, with their sources, files and installed copies
    for m in (EXPORTER, USER, SOLO):
        assert converged.run(f"sudo dkms status {m.name}").strip() == "", m.name
        sources = converged.run(f"ls -d /usr/src/{m.name}-* 2>/dev/null || true").split()
        assert sources == [], sources
        for path in (
            f"/usr/src/{m.name}-{m.version}",
            f"/var/lib/dkms/{m.name}",
            f"/lib/modules/{kernel}/updates/dkms/{m.name}.ko",
            f"/etc/modprobe.d/{m.name}.conf",
            f"/etc/modules-load.d/{m.name}.conf",
        ):
            assert converged.run(f"test -e {path}", check=False).startswith("rc=1"), path
    gone = _report(tmp_path / "gone")
    for m in (EXPORTER, USER, SOLO):
        assert gone[m.name]["state"] == "absent" and not gone[m.name]["failures"], gone[m.name]

    # the lab as the inventory has it: both built (symexport first), loaded and verified
    proc = playbook(converged, "-e", f"kmod_verify_report_dir={tmp_path}/back")
    assert proc.returncode == 0, proc.stdout[-5000:]
    counters = recap(proc.stdout)
    assert counters is not None and counters["failed"] == 0, proc.stdout[-5000:]
    _assert_pair_live(converged)
    assert SOLO.kmod in _loaded(converged)
    back = _report(tmp_path / "back")
    for m in (EXPORTER, USER, SOLO):
        assert back[m.name]["state"] == "present" and not back[m.name]["failures"], back[m.name]
