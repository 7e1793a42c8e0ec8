"""Lab hosts on real VMs: SSH, in-tree modules, Secure Boot with an enrolled MOK."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from vmhelpers import PLAIN, ROOT, SB, Guest, kmodlab

HELLO = """#include <linux/module.h>
static int __init t_init(void) { pr_info("kmodlab sb test loaded\\n"); return 0; }
static void __exit t_exit(void) { }
module_init(t_init);
module_exit(t_exit);
MODULE_LICENSE("GPL");
"""


def test_ssh_and_running_kernel_is_the_images(plain: Guest, images) -> None:
    assert plain.run("uname -r").strip() == images["lab"].kernel
    assert plain.run("hostname").strip() == PLAIN


def test_in_tree_module_loads(plain: Guest) -> None:
    plain.run("sudo modprobe dummy")
    assert plain.run("test -d /sys/module/dummy && echo yes").strip() == "yes"
    plain.run("sudo modprobe -r dummy")
    assert "rc=1" in plain.run("test -d /sys/module/dummy", check=False)


def test_plain_vm_has_secure_boot_disabled(plain: Guest) -> None:
    assert "SecureBoot disabled" in plain.run("mokutil --sb-state")


def test_secure_boot_vm_is_locked_down(sb: Guest) -> None:
    assert "SecureBoot enabled" in sb.run("mokutil --sb-state")
    lockdown = sb.run("cat /sys/kernel/security/lockdown")
    assert "[integrity]" in lockdown or "[confidentiality]" in lockdown, lockdown


def test_project_key_is_a_mok_and_in_machine_keyring(sb: Guest, project_key) -> None:
    """`vm up --secure-boot` enrolled the project key offline (the variable store)."""
    assert f"CN={project_key.cert.common_name}" in sb.run("mokutil --list-enrolled")
    assert project_key.cert.keyring_description() in sb.run("sudo cat /proc/keys")


def test_unsigned_module_rejected_and_signed_one_loads(
    plain: Guest, sb: Guest, project_key
) -> None:
    """Built on the plain VM (same kernel), refused unsigned under Secure Boot, loaded once
    signed with the enrolled project key."""
    cert, key = project_key.cert.der_path, project_key.key_path
    plain.run("rm -rf /tmp/sbt && mkdir /tmp/sbt")
    plain.run("cat > /tmp/sbt/sbt.c", stdin=HELLO.encode())
    plain.run("echo 'obj-m := sbt.o' > /tmp/sbt/Kbuild")
    plain.run("make -s -C /lib/modules/$(uname -r)/build M=/tmp/sbt modules")
    unsigned = subprocess.run(
        [*plain.lab.ssh_args(plain.vm), "cat /tmp/sbt/sbt.ko"], capture_output=True, check=True
    ).stdout
    sb.run("cat > /tmp/sbt.ko", stdin=unsigned)
    out = sb.run("sudo insmod /tmp/sbt.ko", check=False)
    assert "rc=1" in out and "Key was rejected by service" in out, out
    # Sign with the tier's project key (test-only material) and load.
    plain.run("cat > /tmp/sbt/k.pem && chmod 600 /tmp/sbt/k.pem", stdin=key.read_bytes())
    plain.run("cat > /tmp/sbt/c.der", stdin=cert.read_bytes())
    plain.run(
        "/usr/lib/linux-kbuild-*/scripts/sign-file sha256 /tmp/sbt/k.pem /tmp/sbt/c.der "
        "/tmp/sbt/sbt.ko && rm -f /tmp/sbt/k.pem"
    )
    signed = subprocess.run(
        [*plain.lab.ssh_args(plain.vm), "cat /tmp/sbt/sbt.ko"], capture_output=True, check=True
    ).stdout
    sb.run("cat > /tmp/sbt.ko", stdin=signed)
    sb.run("sudo insmod /tmp/sbt.ko")
    assert "kmodlab sb test loaded" in sb.run("sudo dmesg | tail -5")
    sb.run("sudo rmmod sbt")


def test_status_reports_both_vms(plain: Guest, sb: Guest) -> None:
    rows = {
        r["name"]: r for r in json.loads(kmodlab("vm", "status", "--json", lab=plain.lab).stdout)
    }
    assert rows[PLAIN]["state"] == "running" and rows[SB]["state"] == "running"
    assert rows[PLAIN]["secure_boot"] == "SecureBoot disabled"
    assert rows[SB]["secure_boot"] == "SecureBoot enabled"
    assert rows[SB]["enrolled_keys"] and rows[SB]["enrolled_keys"][0].endswith("signing.der")
    assert rows[PLAIN]["kernel"] == plain.vm.kernel


def test_inventory_drives_ansible_and_testinfra(plain: Guest, sb: Guest) -> None:
    inv = kmodlab("inventory", lab=plain.lab).stdout.strip()
    ping = subprocess.run(
        [str(ROOT / ".venv/bin/ansible"), "-i", inv, "all", "-m", "ansible.builtin.ping"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=300,
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert ping.stdout.count("SUCCESS") == 2
    probe = (
        "import testinfra,sys; h=testinfra.get_host(sys.argv[1], ansible_inventory=sys.argv[2]);"
        "print(h.check_output('uname -r'))"
    )
    env = {**os.environ, "PATH": f"{ROOT}/.venv/bin:{os.environ['PATH']}"}
    out = subprocess.run(
        [sys.executable, "-c", probe, f"ansible://{PLAIN}", inv],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == plain.vm.kernel


def test_ssh_to_unknown_vm_is_exit_2(plain: Guest) -> None:
    proc = kmodlab("ssh", "nope", "true", lab=plain.lab, check=False)
    assert proc.returncode == 2
    assert "no such VM: nope" in proc.stderr
