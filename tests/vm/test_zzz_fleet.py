"""The fleet path on three bare VMs (last in the VM tier: the lab's two VMs are down by
then, so at most three VMs run at once).

``t-fa`` runs an image pinned to an older bookworm kernel ABI, ``t-fb`` boots with Secure
Boot and the project key enrolled, ``t-fc`` runs the release's current kernel; none has a
compiler, headers or DKMS. molecule ``fleet`` converges fleet.yml on them (build once per
ABI in the Docker builder, sign centrally, batches gated by kmod_verify), checks
idempotence and verifies. Then: no target holds the private key; a new version that fails
its gate on the canary is rolled back there and stops the rollout; a host that becomes
unreachable in its batch stops the rollout with the others untouched; a kernel upgrade
(packages for the new ABI installed before the reboot) boots with the modules loaded and
verified. The builder's own record counts the compilations.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from vmhelpers import ROOT, VENV, Guest, ansible_env, env_set, kmodlab, molecule, reboot

from kmodlab import keys
from kmodlab.fleet import artifacts
from kmodlab.lab import image, inventory, vms
from kmodlab.manifest import load_manifest

OLD_KERNEL = os.environ.get("KMODLAB_FLEET_OLD_KERNEL", "6.1.0-50-amd64")
NAMES = ("t-fa", "t-fb", "t-fc")
CANARY, SECOND, THIRD = NAMES
MODULES = ("hello-5", "memory", "symexport", "symuse")
VARS = ROOT / "molecule/fleet/vars/fleet.yml"
FACT = "/etc/ansible/facts.d/kmodlab_rollout.fact"
BOOT_ARGS = {
    "t-fa": ["--profile", "bare", "--kernel", OLD_KERNEL],
    "t-fb": ["--profile", "bare", "--secure-boot"],
    "t-fc": ["--profile", "bare"],
}


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tier's own artifact store: every compilation of this module is counted."""
    store = tmp_path_factory.mktemp("artifacts")
    with env_set("KMODLAB_ARTIFACT_DIR", str(store)):
        yield store


@pytest.fixture(scope="module")
def fleet(
    test_lab: vms.Lab,
    images: dict[str, image.Image],
    project_key: keys.KeyPair,
    artifact_dir: Path,
) -> Iterator[dict[str, Guest]]:
    """Boot the three fleet VMs at once; destroy them at the end."""
    image.build(image.Recipe.for_profile("bare", kernel=OLD_KERNEL), progress=print)
    stale = [n for n in NAMES if n in test_lab.load()]
    if stale:
        vms.destroy(test_lab, stale, progress=print)
    errors: list[BaseException] = []

    def boot(name: str) -> None:
        try:
            print(kmodlab("vm", "up", name, *BOOT_ARGS[name], lab=test_lab).stderr)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=boot, args=(n,)) for n in NAMES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        if errors:
            raise errors[0]
        inventory.write(test_lab)
        state = test_lab.load()
        yield {name: Guest(test_lab, state[name]) for name in NAMES}
    finally:
        if os.environ.get("KMODLAB_KEEP_VMS") != "1":
            vms.destroy(test_lab, [n for n in NAMES if n in test_lab.load()], print)


def _env(guest: Guest) -> dict[str, str]:
    return {**ansible_env(guest), "KMODLAB_MOLECULE_FLEET": ",".join(NAMES)}


def fleet_playbook(
    guest: Guest, *args: str, limit: str = ",".join(NAMES)
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV / "ansible-playbook"), "fleet.yml", "--limit", limit, "-e", f"@{VARS}", *args],
        cwd=ROOT,
        env=_env(guest),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )


def verify_playbook(guest: Guest, limit: str) -> subprocess.CompletedProcess[str]:
    """molecule fleet's verify play on some hosts."""
    return subprocess.run(
        [
            str(VENV / "ansible-playbook"),
            "molecule/fleet/verify.yml",
            "--limit",
            limit,
            "-e",
            f"@{VARS}",
        ],
        cwd=ROOT,
        env=_env(guest),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def rollout(guest: Guest) -> dict:
    return json.loads(guest.run(f"sudo cat {FACT}"))


def good_versions(guest: Guest) -> dict[str, str]:
    return {name: entry["version"] for name, entry in rollout(guest)["good"].items()}


def summary(guest: Guest) -> dict[str, dict]:
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local/state")
    doc = json.loads((state / "kmodlab/reports/fleet.json").read_text())
    return {row["host"]: row for row in doc["hosts"]}


def manifest_version(name: str) -> str:
    return str(yaml.safe_load((ROOT / "modules" / name / "module.yml").read_text())["version"])


def bumped_manifests(tmp_path: Path, version: str, impossible: bool) -> Path:
    """A copy of modules/ where hello-5 has ``version`` (and, with ``impossible``, a
    modinfo expectation its module can never meet)."""
    import shutil

    copy = tmp_path / "modules"
    shutil.copytree(ROOT / "modules", copy)
    path = copy / "hello-5" / "module.yml"
    data = yaml.safe_load(path.read_text())
    data["version"] = version
    if impossible:
        data.setdefault("expect", {}).setdefault("modinfo", {})["description"] = "^never this$"
    path.write_text(yaml.safe_dump(data))
    return copy


def compilations(store: Path) -> list[dict]:
    return artifacts.read_compilations(store)


def test_molecule_fleet_builds_once_per_abi_and_rolls_out(
    fleet: dict[str, Guest], artifact_dir: Path
) -> None:
    """molecule fleet: converge (fleet.yml), idempotence (changed=0), verify. One
    compilation per module and ABI, whatever the host count (three hosts, two ABIs)."""
    guest = fleet[CANARY]
    kernels = {name: g.run("uname -r").strip() for name, g in fleet.items()}
    assert kernels[CANARY] == OLD_KERNEL
    assert kernels[SECOND] == kernels[THIRD] != OLD_KERNEL, kernels
    assert "SecureBoot enabled" in fleet[SECOND].run("mokutil --sb-state")
    molecule("fleet", _env(guest), guest.lab)
    done = compilations(artifact_dir)
    counts = Counter((entry["module"], entry["abi"]) for entry in done)
    expected = {(m, k) for m in MODULES for k in (kernels[CANARY], kernels[THIRD])}
    assert set(counts) == expected, counts
    assert all(n == 1 for n in counts.values()), counts
    rows = summary(guest)
    for name in NAMES:
        assert rows[name]["state"] == "rolled out", rows
        assert set(rows[name]["modules"]) == set(MODULES), rows[name]
    for name, g in fleet.items():
        assert set(good_versions(g)) == set(MODULES), name


def test_no_target_holds_the_private_key(
    fleet: dict[str, Guest], project_key: keys.KeyPair
) -> None:
    """Signed centrally: no file on any target holds the private key (a line of its PEM
    body, searched over the whole file system)."""
    body = [ln for ln in project_key.key_path.read_text().splitlines() if not ln.startswith("-")]
    probe = body[len(body) // 2]
    for name, guest in fleet.items():
        # The pattern comes on stdin: on the command line, sudo would log it to the journal.
        out = guest.run(
            "sudo grep -rlsF --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev "
            "--exclude-dir=run -f - / ; echo rc=$?",
            stdin=probe.encode() + b"\n",
        )
        assert out.strip().endswith("rc=1"), f"{name} holds the private key: {out}"
        assert "rc=1" in guest.run("test -e /etc/kmodlab/signing", check=False), name


def test_a_failing_canary_is_rolled_back_and_stops_the_rollout(
    fleet: dict[str, Guest], tmp_path: Path
) -> None:
    """A new hello-5 whose manifest expects what it can never meet: the canary installs
    it, fails its gate and is back on the previous version (package, parameters), which
    still verifies; the other hosts are untouched; the play fails naming host, module and
    check."""
    canary = fleet[CANARY]
    old = manifest_version("hello-5")
    before = {name: g.run(f"sudo cat {FACT}") for name, g in fleet.items()}
    modules = bumped_manifests(tmp_path, "9.0.0", impossible=True)
    proc = fleet_playbook(canary, "-e", json.dumps({"kmodlab_manifest_dirs": [str(modules)]}))
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode != 0, out[-5000:]
    assert CANARY in out and "hello-5" in out and "test_modinfo" in out, out[-5000:]
    assert "Rollout stopped" in out, out[-5000:]
    state = rollout(canary)
    assert state["pending"] is None, state
    assert state["good"]["hello-5"]["version"] == old, state["good"]["hello-5"]
    assert canary.run("cat /sys/module/hello_5/parameters/myint").strip() == "7"
    kernel = canary.run("uname -r").strip()
    pkgs = canary.run(f"dpkg-query -W -f '${{Version}}' kmodlab-hello-5-modules-{kernel}")
    assert pkgs.strip() == old
    for name in (SECOND, THIRD):
        assert fleet[name].run(f"sudo cat {FACT}") == before[name], name
    rows = summary(canary)
    assert rows[CANARY]["state"] == "rolled back", rows
    assert rows[SECOND]["state"] == rows[THIRD]["state"] == "untouched", rows
    again = verify_playbook(canary, CANARY)
    assert again.returncode == 0, again.stdout[-5000:]


def test_an_unreachable_host_stops_the_rollout(fleet: dict[str, Guest], tmp_path: Path) -> None:
    """The second batch's host stops answering while its batch runs (its QEMU paused):
    the rollout stops there, the third host is untouched, and the summary says which host
    is in which state."""
    canary, second, third = (fleet[n] for n in NAMES)
    old = manifest_version("hello-5")
    before_third = third.run(f"sudo cat {FACT}")
    modules = bumped_manifests(tmp_path, "9.1.0", impossible=False)
    cmd = [
        str(VENV / "ansible-playbook"),
        "fleet.yml",
        "--limit",
        ",".join(NAMES),
        "-e",
        f"@{VARS}",
        "-e",
        json.dumps({"kmodlab_manifest_dirs": [str(modules)]}),
    ]
    pid = second.vm.pid
    assert pid is not None
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(canary), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    paused = False
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            # The play banner shows once per batch: the second one starts t-fb's batch.
            if not paused and sum("PLAY [Roll out in batches" in ln for ln in lines) == 2:
                os.kill(pid, signal.SIGSTOP)
                paused = True
        proc.wait(timeout=1200)
    finally:
        if paused:
            os.kill(pid, signal.SIGCONT)
    out = " ".join("".join(lines).split())
    assert paused, out[-5000:]
    assert proc.returncode != 0, out[-5000:]
    rows = summary(canary)
    assert rows[CANARY]["state"] == "rolled out" and rows[CANARY]["modules"]["hello-5"] == "9.1.0"
    assert rows[SECOND]["state"] == "unreachable", rows
    assert rows[THIRD]["state"] == "untouched", rows
    assert rows[THIRD]["modules"]["hello-5"] == old, rows
    assert third.run(f"sudo cat {FACT}") == before_third
    time.sleep(5)
    second.run("true")  # answers again once resumed


def test_kernel_upgrade_boots_with_the_modules(fleet: dict[str, Guest], artifact_dir: Path) -> None:
    """The canary runs the older ABI and has the release's current kernel installed, not
    yet its boot default (the pinned image: installing a kernel inside an emulated guest
    takes over six minutes). The upgrade is completed as the kernel package's postinst
    does it (linux-update-symlinks makes it the default); fleet.yml with that kernel as
    target installs its packages before the reboot (built from the cache: the other hosts
    run it); after the reboot into it, the modules are loaded and verify."""
    canary = fleet[CANARY]
    new = fleet[THIRD].run("uname -r").strip()
    assert canary.run("uname -r").strip() == OLD_KERNEL
    assert canary.run(f"dpkg-query -W -f '${{db:Status-Abbrev}}' linux-image-{new}").startswith(
        "ii"
    )
    assert "rc=1" in canary.run(f"test -e /lib/modules/{new}/updates/kmodlab", check=False)
    canary.run(f"sudo linux-update-symlinks install {new} /boot/vmlinuz-{new}")
    assert canary.run("readlink /vmlinuz").strip().endswith(f"vmlinuz-{new}")
    compiled_before = len(compilations(artifact_dir))
    proc = fleet_playbook(canary, "-e", json.dumps({"kmodlab_target_kernels": [new]}), limit=CANARY)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert len(compilations(artifact_dir)) == compiled_before, "the new ABI's modules were cached"
    for name in MODULES:
        pkg = f"kmodlab-{name}-modules-{new}"
        assert canary.run(f"dpkg-query -W -f '${{db:Status-Abbrev}}' {pkg}").startswith("ii"), pkg
    reboot(canary)
    assert canary.run("uname -r").strip() == new
    loaded = set(canary.run("cut -d' ' -f1 /proc/modules").split())
    kmods = {load_manifest(ROOT / "modules" / name).kmod for name in MODULES}
    assert kmods <= loaded, sorted(loaded)
    again = verify_playbook(canary, CANARY)
    assert again.returncode == 0, again.stdout[-5000:]


def test_the_lab_under_secure_boot_verifies_the_whole_catalog(
    fleet: dict[str, Guest], tmp_path: Path
) -> None:
    """`scripts/setup-lab --secure-boot`'s lab.yml (the lab inventory as it is: the whole
    catalog, delivery deb) on the tier's Secure Boot VM (t-fb: lockdown on, the project key
    enrolled): every module signed in the builder with the project key, loaded under
    lockdown and verified by its manifest's checks, its signer and key id the project
    key's."""
    guest = fleet[SECOND]
    assert "SecureBoot enabled" in guest.run("mokutil --sb-state")
    catalog = sorted(
        e["name"]
        for e in yaml.safe_load((ROOT / "inventory/lab/group_vars/all.yml").read_text())[
            "kmodlab_modules"
        ]
    )
    start = time.monotonic()
    proc = subprocess.run(
        [str(VENV / "ansible-playbook"), "lab.yml", "--limit", SECOND,
         "-e", f"kmod_verify_report_dir={tmp_path}"],
        cwd=ROOT, env=ansible_env(guest), capture_output=True, text=True, timeout=1800,
        check=False,
    )  # fmt: skip
    (guest.lab.path / "catalog-secure-boot.log").write_text(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-8000:]
    print(f"the catalog under Secure Boot: {time.monotonic() - start:.0f} s")
    report = json.loads((tmp_path / "report.json").read_text())
    (host,) = report["hosts"]
    assert host["outcome"] == "pass", host["problems"]
    assert host["secure_boot"]["secure_boot"] is True, host["secure_boot"]
    assert host["lockdown"] in ("integrity", "confidentiality"), host["lockdown"]
    assert sorted(m["name"] for m in host["modules"]) == catalog
    assert not [m["name"] for m in host["modules"] if m["failures"]]
    signed = {m["name"] for m in host["modules"] if m["stages"].get("signed") == "pass"}
    assert signed == set(catalog), sorted(set(catalog) - signed)
    # No module loaded unsigned: the kernel's E taint (bit 13) is clear.
    assert not int(guest.run("cat /proc/sys/kernel/tainted").strip()) & (1 << 13)
