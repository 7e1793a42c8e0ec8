"""kernel_headers' real install path, once, on the bare Secure Boot VM that lacks them."""

from __future__ import annotations

from vmhelpers import SB, Guest, playbook, recap


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
