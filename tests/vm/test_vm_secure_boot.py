"""Secure Boot end to end on the tier's Secure Boot VM (``t-sb``: bare profile, OVMF with
Microsoft's keys, Debian's signed shim, grub and kernel, lockdown on, the tier's project
key enrolled offline by ``vm up --secure-boot``).

In order, sharing the VM: molecule secureboot (lab.yml converges every lab module signed
by the project key, idempotence, verify); bad input, each with a clear message and the
running modules left as they were (a key file others can read, a wrong vault password, a
key the firmware does not trust, a module signed with another key, a module altered after
signing); then a key rotation, which also proves the online enrolment path a real host
takes (``mokutil --import``, reboot, MokManager answered over the serial console by
``kmodlab vm enroll``) and the deletion of the old key from MokList; the report of its
last run shows Secure Boot, lockdown and every module signed by the project key.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmhelpers import (
    LAB_MODULES,
    ROOT,
    SB,
    VENV,
    Guest,
    ansible_env,
    default_reports,
    kmodlab,
    molecule,
    playbook,
    recap,
)

from kmodlab import keys
from kmodlab.manifest import load_manifest

KMODS = {name: load_manifest(ROOT / "modules" / name).kmod for name in LAB_MODULES}
TAINT_E = 8192


def sb_play(sb: Guest, *args: str) -> subprocess.CompletedProcess[str]:
    """lab.yml on the Secure Boot VM alone; stdout with Ansible's line wrapping undone
    (messages are checked as sentences)."""
    proc = playbook(sb, *args, limit=SB)
    proc.stdout = re.sub(r"\n[ \t]+(?=\S)", " ", proc.stdout)
    return proc


def signatures(guest: Guest) -> dict[str, tuple[str, str]]:
    """(signer, sig_key) of each lab module's installed file, as modinfo shows them."""
    out = {}
    for name, kmod in KMODS.items():
        signer = guest.run(f"/sbin/modinfo -F signer {kmod}").strip()
        sig_key = guest.run(f"/sbin/modinfo -F sig_key {kmod}").strip()
        out[name] = (signer, "".join(sig_key.split()).upper())
    return out


def loaded(guest: Guest) -> dict[str, str]:
    """kmod -> the module's load address and size line of /proc/modules, which changes
    when it is loaded again."""
    lines = guest.run("sudo cat /proc/modules").splitlines()
    return {ln.split()[0]: ln for ln in lines}


def tree_state(guest: Guest) -> str:
    """Every file of the DKMS tree, the installed modules and the signing folder, with
    its modification time: what a build, an install or a key copy would change."""
    return guest.run(
        "sudo find /var/lib/dkms /lib/modules/$(uname -r)/updates /etc/kmodlab "
        "-printf '%p %T@\\n' | sort"
    )


def installed_path(guest: Guest, kmod: str) -> str:
    return guest.run(f"/sbin/modinfo -n {kmod}").strip()


@pytest.fixture(scope="module")
def sb_converged(sb: Guest, project_key: keys.KeyPair) -> Iterator[Guest]:
    """molecule secureboot on the Secure Boot VM: converge (lab.yml, which installs the
    headers of the bare profile first), idempotence (changed=0), verify."""
    env = {**ansible_env(sb), "KMODLAB_MOLECULE_VM": SB}
    start = time.monotonic()
    try:
        molecule("secureboot", env, sb.lab)
    finally:
        print(f"molecule secureboot: {time.monotonic() - start:.0f} s")
    yield sb


def test_molecule_secureboot_converges_idempotently_and_verifies(sb_converged: Guest) -> None:
    log = (sb_converged.lab.path / "molecule-secureboot.log").read_text()
    for stage in ("converge", "idempotence", "verify"):
        assert f"secureboot > {stage}: Executed: Successful" in log, stage
    assert sb_converged.run("echo alive").strip() == "alive"


def test_every_module_loaded_signed_by_the_project_key_under_lockdown(
    sb_converged: Guest, project_key: keys.KeyPair
) -> None:
    sb = sb_converged
    assert "SecureBoot enabled" in sb.run("mokutil --sb-state")
    assert re.search(
        r"\[(integrity|confidentiality)\]", sb.run("cat /sys/kernel/security/lockdown")
    )
    live = loaded(sb)
    cert = project_key.cert
    for name, (signer, sig_key) in signatures(sb).items():
        assert KMODS[name] in live, f"{name} is not loaded"
        assert (signer, sig_key) == (cert.common_name, cert.sig_key), name
        assert "E" not in sb.run(f"cat /sys/module/{KMODS[name]}/taint"), name
    assert int(sb.run("cat /proc/sys/kernel/tainted")) & TAINT_E == 0
    # DKMS signed with the project key through the drop-in, never with a key of its own.
    dropin = sb.run("cat /etc/dkms/framework.conf.d/kmodlab-signing.conf")
    assert "mok_signing_key=/etc/kmodlab/signing/signing.key" in dropin
    assert sb.run("sudo stat -c %a:%U /etc/kmodlab/signing/signing.key").strip() == "600:root"
    assert "rc=1" in sb.run("sudo test -e /var/lib/dkms/mok.key", check=False)


def test_key_readable_by_others_stops_before_any_host_is_touched(sb_converged: Guest) -> None:
    key = keys.load(keys.DEFAULT_NAME).key_path
    key.chmod(0o644)
    try:
        proc = sb_play(sb_converged)
    finally:
        key.chmod(0o600)
    assert proc.returncode != 0
    assert f"chmod 600 {key}" in proc.stdout, proc.stdout[-4000:]
    assert "PRIVATE KEY" not in proc.stdout + proc.stderr
    counters = recap(proc.stdout, SB)
    assert counters is not None and counters["changed"] == 0, proc.stdout[-3000:]
    assert "dkms_module : " not in proc.stdout


def test_wrong_vault_password_stops_and_the_right_one_changes_nothing(
    sb_converged: Guest, project_key: keys.KeyPair, tmp_path: Path
) -> None:
    vault_key = tmp_path / "signing.key.vault"
    vault_key.write_bytes(project_key.key_path.read_bytes())
    good, bad = tmp_path / "good.pass", tmp_path / "bad.pass"
    good.write_text("correct horse\n")
    bad.write_text("battery staple\n")
    subprocess.run(
        [
            str(VENV / "ansible-vault"),
            "encrypt",
            "--vault-password-file",
            str(good),
            str(vault_key),
        ],
        check=True,
        capture_output=True,
        env=ansible_env(sb_converged),
    )
    assert b"PRIVATE KEY" not in vault_key.read_bytes()
    given = [
        "-e",
        f"module_signing_private_key={vault_key}",
        "-e",
        f"module_signing_certificate={project_key.cert.pem_path}",
        "--tags",
        "module_signing",
    ]
    proc = sb_play(sb_converged, *given, "--vault-password-file", str(bad))
    assert proc.returncode != 0
    assert "Decryption failed" in proc.stdout + proc.stderr, proc.stdout[-3000:]
    assert "PRIVATE KEY" not in proc.stdout + proc.stderr
    # the same key through the vault: the host already has it, nothing changes
    proc = sb_play(sb_converged, *given, "--vault-password-file", str(good))
    assert proc.returncode == 0, proc.stdout[-4000:]
    counters = recap(proc.stdout, SB)
    assert counters is not None and counters["changed"] == 0, proc.stdout[-3000:]


def test_untrusted_key_stops_the_host_before_anything_is_built(sb_converged: Guest) -> None:
    sb = sb_converged
    other, _created = keys.create("other")
    before = tree_state(sb)
    modules_before = loaded(sb)
    proc = sb_play(sb, "-e", "module_signing_key_name=other", "-e", "module_signing_enroll=false")
    assert proc.returncode != 0
    out = proc.stdout
    assert f"{SB}: Secure Boot is on and the kernel does not trust the project" in out, out[-4000:]
    assert other.cert.fingerprint in out
    assert "mokutil --import" in out and "kmodlab vm up --secure-boot" in out
    assert "dkms_module : " not in out and "kmod_load : " not in out
    # nothing built, nothing loaded or unloaded, no enrolment queued
    assert tree_state(sb) == before
    assert loaded(sb) == modules_before
    assert "Fingerprint" not in sb.run("sudo mokutil --list-new")  # nothing queued


def _resign_on_guest(sb: Guest, path: str, key: Path, cert: Path) -> None:
    """Strip the appended signature of ``path`` on the guest and sign it with ``key``."""
    sb.run("sudo install -d -m 700 /root/other")
    sb.run(
        "sudo tee /root/other/k.pem >/dev/null && sudo chmod 600 /root/other/k.pem",
        stdin=key.read_bytes(),
    )
    sb.run("sudo tee /root/other/c.der >/dev/null", stdin=cert.read_bytes())
    strip = (
        "import struct,sys;p=sys.argv[1];d=open(p,'rb').read();"
        "m=b'~Module signature appended~\\n';assert d.endswith(m);"
        "n=struct.unpack('>I',d[-len(m)-4:-len(m)])[0];"
        "open(p,'wb').write(d[:-len(m)-12-n])"
    )
    sb.run(f'sudo python3 -c "{strip}" {path}')
    sb.run(
        f"sudo /usr/lib/linux-kbuild-*/scripts/sign-file sha256 /root/other/k.pem "
        f"/root/other/c.der {path} && sudo rm -rf /root/other"
    )


def _flip_a_byte_on_guest(sb: Guest, path: str) -> None:
    """Change one byte of the module's content (in the middle of .text), keep the signature."""
    flip = (
        "import sys;p=sys.argv[1];d=bytearray(open(p,'rb').read());"
        "i=len(d)//3;d[i]^=0x01;open(p,'wb').write(bytes(d))"
    )
    sb.run(f'sudo python3 -c "{flip}" {path}')


@pytest.mark.parametrize("damage", ["another key", "altered after signing"])
def test_a_bad_signature_is_refused_before_the_working_module_is_unloaded(
    sb_converged: Guest, project_key: keys.KeyPair, damage: str
) -> None:
    sb = sb_converged
    name, kmod = "hello-5", KMODS["hello-5"]
    path = installed_path(sb, kmod)
    built = sb.run(f"sudo ls /var/lib/dkms/{name}/*/$(uname -r)/*/module/{Path(path).name}").strip()
    sb.run(f"sudo cp {path} /root/good.ko")
    myint = sb.run(f"cat /sys/module/{kmod}/parameters/myint").strip()
    before = loaded(sb)[kmod]
    if damage == "another key":
        other, _created = keys.create("other")
        _resign_on_guest(sb, path, other.key_path, other.cert.der_path)
        expected = [
            f"{name}:",
            "signed by another key",
            other.cert.common_name,
            project_key.cert.fingerprint,
        ]
    else:
        _flip_a_byte_on_guest(sb, path)
        expected = [f"{name}:", "does not match the module's content"]
    sb.run(f"sudo cp {path} {built}")  # the DKMS tree's build too: nothing to reinstall from
    layer = json.dumps({"kmodlab_host_modules": [{"name": name, "params": {"myint": 7}}]})
    try:
        proc = sb_play(sb, "-e", layer)
        assert proc.returncode != 0
        for text in expected:
            assert text in proc.stdout, (text, proc.stdout[-5000:])
        assert "Key was rejected by service" not in proc.stdout
        # the working module stayed loaded, as it was
        assert loaded(sb)[kmod] == before
        assert sb.run(f"cat /sys/module/{kmod}/parameters/myint").strip() == myint
    finally:
        sb.run(f"sudo cp /root/good.ko {path} && sudo cp /root/good.ko {built}")
        sb.run("sudo rm -f /root/good.ko")


def sha1(der: Path) -> str:
    """A certificate's SHA-1 fingerprint as mokutil lists it."""
    return ":".join(f"{b:02x}" for b in hashlib.sha1(der.read_bytes()).digest())


def _test_key(sb: Guest, der: Path) -> str:
    sb.run("cat > /tmp/k.der", stdin=der.read_bytes())
    return sb.run("sudo mokutil --test-key /tmp/k.der", check=False)


def test_rotation_enrols_online_resigns_reloads_and_retires_the_old_key(
    sb_converged: Guest, project_key: keys.KeyPair
) -> None:
    """The rotation in four steps (below); then (5.) the report its last run writes to
    the default report folder, as users read it, shows Secure Boot on, lockdown, the
    project key (the new one) trusted, and every module signed by it (formerly a
    verify run of its own, test_report_shows_signed_modules_and_secure_boot)."""
    sb = sb_converged
    old = keys.load(keys.DEFAULT_NAME).cert
    new = keys.rotate(keys.DEFAULT_NAME).cert
    previous_der = keys.load(keys.DEFAULT_NAME).previous.der_path
    assert new.fingerprint != old.fingerprint

    # 1. The host does not trust the new key: its certificate is queued (mokutil
    #    --import), the host stops before building; the old modules keep running.
    modules_before = loaded(sb)
    proc = sb_play(sb)
    assert proc.returncode != 0
    assert "is now queued for MOK enrolment" in proc.stdout, proc.stdout[-4000:]
    assert new.fingerprint in proc.stdout
    password = keys.mok_password(keys.DEFAULT_NAME)
    assert password not in proc.stdout + proc.stderr
    assert "dkms_module : " not in proc.stdout
    assert loaded(sb) == modules_before
    assert "already in the enrollment request" in _test_key(sb, new.der_path)

    # 2. MokManager at the next boot, answered over the serial console.
    start = time.monotonic()
    res = kmodlab("vm", "enroll", SB, lab=sb.lab)
    enrol_time = time.monotonic() - start
    print(f"vm enroll (reboot + MokManager + SSH): {enrol_time:.0f} s\n{res.stdout}{res.stderr}")
    sb.vm = sb.lab.load()[SB]
    assert "is already enrolled" in _test_key(sb, new.der_path)
    # persisted modules came back at boot, signed by the old key, still trusted
    assert set(KMODS.values()) <= set(loaded(sb))

    # 3. lab.yml re-signs every module with the new key, reloads each, verifies, and
    #    queues the old key for deletion.
    proc = sb_play(sb)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "queued for deletion from MokList" in proc.stdout
    # each module signed again (no compile) and reloaded once, so the kernel checked it
    for name in LAB_MODULES:
        assert f"{name}: reload (the installed module is signed with key {new.sig_key}" in (
            proc.stdout
        ), name
    assert all(sig == (new.common_name, new.sig_key) for sig in signatures(sb).values())
    live = loaded(sb)
    assert set(KMODS.values()) <= set(live)
    # the old certificate, and only it, is queued for deletion
    queued = sb.run("sudo mokutil --list-delete")
    assert sha1(previous_der) in queued and sha1(new.der_path) not in queued, queued

    # 4. The deletion confirmed at the next boot: the old key is gone from MokList.
    kmodlab("vm", "enroll", SB, lab=sb.lab)
    sb.vm = sb.lab.load()[SB]
    assert "is not enrolled" in _test_key(sb, previous_der)
    assert "is already enrolled" in _test_key(sb, new.der_path)
    assert set(KMODS.values()) <= set(loaded(sb))
    last_run = time.time()
    proc = sb_play(sb)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert (recap(proc.stdout, SB) or {}).get("changed") == 0, proc.stdout[-4000:]

    # 5. The report of that last run: Secure Boot, lockdown, every module signed by the
    #    project key, which the kernel trusts.
    reports = default_reports()
    assert (reports / "report.json").stat().st_mtime >= last_run - 1, (
        f"{reports}/report.json is older than the last run"
    )
    report = json.loads((reports / "report.json").read_text())
    (host,) = report["hosts"]
    assert host["host"] == SB, f"the report is of {host['host']}, not {SB}"
    assert host["secure_boot"]["secure_boot"] is True, host["secure_boot"]
    assert host["lockdown"] in ("integrity", "confidentiality"), f"lockdown {host['lockdown']}"
    assert host["signing"]["trusted"] is True, f"the kernel does not trust: {host['signing']}"
    assert host["signing"]["sig_key"] == new.sig_key, (
        f"report key {host['signing']['sig_key']}, project key {new.sig_key}"
    )
    assert {m["name"] for m in host["modules"]} == set(LAB_MODULES), host["modules"]
    for module in host["modules"]:
        assert module["stages"]["signed"] == "pass", module
        assert module["signature"]["signer"] == new.common_name, module
    header = next(ln for ln in (reports / "report.txt").read_text().splitlines() if "signed" in ln)
    assert "loaded" in header, f"report.txt header without a loaded column: {header}"
