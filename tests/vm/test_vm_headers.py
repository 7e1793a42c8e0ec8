"""kernel_headers on the bare Secure Boot VM, which lacks the headers: first two ways
apt cannot install them (a pin, an unreachable mirror), each failing with its message
and installing nothing; then the real install path, once.

The tests run in this order (pytest keeps a file's order): the failures first, on a
host without headers; each puts apt's configuration back in a ``finally``.
"""

from __future__ import annotations

from vmhelpers import SB, Guest, playbook, recap

PIN = "/etc/apt/preferences.d/kmodlab-test-no-headers"
# Port 9 (discard) of the guest itself: nothing listens there, so apt's connection is
# refused at once, without waiting for a timeout.
MIRROR = "http://127.0.0.1:9/debian"
BACKUP = "/root/kmodlab-test-apt"


def dpkg_state(guest: Guest) -> list[str]:
    """Every package dpkg knows, with its version and status."""
    return guest.run("dpkg-query -W -f='${Package} ${Version} ${Status}\\n'").splitlines()


def one_line(output: str) -> str:
    """The play output with YAML's line wrapping undone (a message is one line again)."""
    return " ".join(line.strip() for line in output.splitlines())


def test_pinned_headers_fail_naming_kernel_package_pin_and_fix(sb: Guest) -> None:
    kernel = sb.run("uname -r").strip()
    package = f"linux-headers-{kernel}"
    before = dpkg_state(sb)
    assert not any(line.startswith(f"{package} ") and "ok installed" in line for line in before)
    sb.run(
        f"printf 'Package: {package}\\nPin: release *\\nPin-Priority: -1\\n' "
        f"| sudo tee {PIN} >/dev/null"
    )
    try:
        proc = playbook(sb, "--tags", "kernel_headers", limit=SB)
    finally:
        sb.run(f"sudo rm -f {PIN}")
    assert proc.returncode != 0, proc.stdout[-4000:]
    assert (
        "TASK [kmodlab.lab.kernel_headers : Fail when a pin forbids the running kernel's headers]"
        in proc.stdout
    ), proc.stdout[-4000:]
    text = one_line(proc.stdout)
    assert (
        f"The running kernel is {kernel}, and apt knows its headers package {package} (" in text
    ), proc.stdout[-4000:]
    assert "with priority -1) but will not install it" in text
    assert f"a pin with a negative Pin-Priority forbids it (in {PIN})" in text
    assert f"To fix it, remove that pin or give {package} a positive Pin-Priority" in text
    counters = recap(proc.stdout, SB)
    assert counters is not None and counters["failed"] == 1
    assert dpkg_state(sb) == before


def test_unreachable_mirror_fails_naming_it_and_the_fix(sb: Guest) -> None:
    kernel = sb.run("uname -r").strip()
    release = sb.run(". /etc/os-release && echo $VERSION_CODENAME").strip()
    before = dpkg_state(sb)
    # The sources and the lists as they are (hard links: apt replaces list files by
    # renaming, so the copies keep the old ones), then one source nothing answers on.
    sb.run(
        f"sudo sh -ec 'rm -rf {BACKUP}; mkdir {BACKUP}; "
        f"cp -a /etc/apt/sources.list /etc/apt/sources.list.d {BACKUP}/; "
        f"cp -al /var/lib/apt/lists {BACKUP}/lists; "
        "rm -f /etc/apt/sources.list.d/*; "
        f'echo "deb {MIRROR} {release} main" > /etc/apt/sources.list\''
    )
    try:
        proc = playbook(sb, "--tags", "kernel_headers", limit=SB)
    finally:
        sb.run(
            f"sudo sh -ec 'rm -rf /etc/apt/sources.list /etc/apt/sources.list.d "
            "/var/lib/apt/lists; "
            f"cp -a {BACKUP}/sources.list {BACKUP}/sources.list.d /etc/apt/; "
            f"mv {BACKUP}/lists /var/lib/apt/lists; rm -rf {BACKUP}'"
        )
    assert proc.returncode != 0, proc.stdout[-4000:]
    assert (
        "TASK [kmodlab.lab.kernel_headers : Fail when apt could not reach a mirror that the "
        "headers would come from]" in proc.stdout
    ), proc.stdout[-4000:]
    text = one_line(proc.stdout)
    assert (
        f"The running kernel is {kernel}, and apt has no candidate for its headers package "
        f"linux-headers-{kernel}: apt could not reach {MIRROR} (Could not connect to "
        "127.0.0.1:9" in text
    ), proc.stdout[-4000:]
    assert f"To fix it, check that {SB} reaches the mirror (network, DNS, an HTTP proxy" in text
    assert "or correct the mirror in /etc/apt/sources.list or /etc/apt/sources.list.d/" in text
    # The failure is the message, not apt-get's report.
    failure = proc.stdout.split(f"fatal: [{SB}]: FAILED!", 1)[1].split("PLAY RECAP", 1)[0]
    assert "Failed to fetch" not in failure and "Err:" not in failure, failure
    counters = recap(proc.stdout, SB)
    assert counters is not None and counters["failed"] == 1
    assert dpkg_state(sb) == before
    assert f"deb {MIRROR}" not in sb.run("cat /etc/apt/sources.list")


def test_kernel_headers_installs_exactly_the_running_kernels(sb: Guest) -> None:
    kernel = sb.run("uname -r").strip()
    # The bare profile lacks them (this is the only test that installs them).
    assert "rc=1" in sb.run(f"test -e /lib/modules/{kernel}/build", check=False)
    before = sb.run("dpkg-query -W -f='${Status}\\n' dkms build-essential 2>&1", check=False)
    assert "install ok installed" not in before
    proc = playbook(sb, "--tags", "kernel_headers", limit=SB)
    assert proc.returncode == 0, proc.stdout[-4000:]
    counters = recap(proc.stdout, SB)
    assert counters is not None and counters["changed"] >= 1
    sb.run(f"test -e /lib/modules/{kernel}/build")
    installed = sb.run("dpkg-query -W -f='${Package} ${Status}\\n' | grep 'ok installed'")
    assert f"linux-headers-{kernel} " in installed
    assert "dkms " in installed and "build-essential " in installed
    # No recommends: not the metapackage, and no second kernel pulled in.
    assert "linux-headers-amd64 " not in installed
    images = [ln for ln in installed.splitlines() if ln.startswith("linux-image-6")]
    assert len(images) == 1, images
    again = playbook(sb, "--tags", "kernel_headers", limit=SB)
    counters = recap(again.stdout, SB)
    assert again.returncode == 0 and counters and counters["changed"] == 0, again.stdout[-3000:]
