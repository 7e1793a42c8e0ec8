"""A full disk on a converged lab host while DKMS builds a new version of one module.

The root filesystem is filled (a file in /var/tmp, allocated with fallocate, so nothing
is written) until root itself has only KEEP_KIB left, then lab.yml runs with a copy of
the manifests where hello-4's version is bumped: its build runs out of space. The play
must fail naming the module and the cause, leave nothing of the new version behind (not
in DKMS, no /usr/src folder) and keep the old version installed and loaded, the very
same build. Then the filler goes and the lab converges again.

/tmp is a tmpfs while the disk is full: Ansible writes each module's payload (150 to
260 KiB) to the host's temporary folder, and with it on the full filesystem already
fact gathering would fail, before any DKMS build. The DKMS build itself writes to
/usr/src and /var/lib/dkms, on the full root filesystem.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from vmhelpers import ROOT, Guest, manifests_with_version, playbook

from kmodlab.manifest import load_manifest

# A failure halfway leaves the lab converged again for the tests after it.
pytestmark = pytest.mark.usefixtures("restores_lab")

MOD = load_manifest(ROOT / "modules/hello-4")
BUMPED = MOD.version + ".1"
FILLER = "/var/tmp/kmodlab-test-filler"
# Less than the build needs (its objects alone take some 380 KiB), more than its
# sources and dkms add (some 30 KiB).
KEEP_KIB = 256
# Allocate FILE in ever smaller pieces until not even 4 KiB more fit (as root, who may
# use the blocks ext4 reserves for root), then give KEEP KiB back; check that no more
# than 4 x KEEP is free.
FILL = r"""set -eu
f=$1 keep=$2
: > "$f"
chunk=$((1 << 30))
while [ "$chunk" -ge 4096 ]; do
  fallocate -o "$(stat -c %s "$f")" -l "$chunk" "$f" 2>/dev/null || chunk=$((chunk / 2))
done
truncate -s "$(( $(stat -c %s "$f") - keep * 1024 ))" "$f"
if fallocate -l "$((keep * 4096))" "$f.probe" 2>/dev/null; then
  rm -f "$f.probe"; echo "more than $((keep * 4)) KiB are still free" >&2; exit 1
fi
rm -f "$f.probe"
"""


def dkms_status(guest: Guest) -> str:
    return guest.run(f"sudo dkms status -m {MOD.name}")


def exists(guest: Guest, path: str) -> bool:
    return "rc=0" in guest.run(f"sudo test -e {path}", check=False)


def loaded_build(guest: Guest) -> str:
    """The loaded module's GNU build ID note (hex): the same build, or not."""
    return guest.run(f"sudo od -An -tx1 /sys/module/{MOD.kmod}/notes/.note.gnu.build-id")


def test_full_disk_during_a_dkms_build_keeps_the_old_version(
    converged: Guest, tmp_path: Path
) -> None:
    kernel = converged.run("uname -r").strip()
    arch = converged.run("uname -m").strip()
    old_line = f"{MOD.name}/{MOD.version}, {kernel}, {arch}: installed"
    assert old_line in dkms_status(converged)
    build_before = loaded_build(converged)
    copy = manifests_with_version(tmp_path, MOD.name, BUMPED)

    try:
        converged.run("sudo mount -t tmpfs -o mode=1777,size=512m kmodlab-test-tmp /tmp")
        converged.run(f"sudo sh -c {shlex.quote(FILL)} fill {FILLER} {KEEP_KIB}")
        proc = playbook(
            converged,
            "-e",
            json.dumps({"kmodlab_manifest_dirs": [str(copy)]}),
            "-e",
            f"kmod_verify_report_dir={tmp_path}/full",
        )
        status = dkms_status(converged)
        new_sources = exists(converged, f"/usr/src/{MOD.name}-{BUMPED}")
        new_tree = exists(converged, f"/var/lib/dkms/{MOD.name}/{BUMPED}")
        loaded = MOD.kmod in converged.run("cut -d' ' -f1 /proc/modules").split()
        build_after = loaded_build(converged) if loaded else ""
    finally:
        converged.run(f"sudo rm -f {FILLER} {FILLER}.probe", check=False)
        converged.run("sudo umount /tmp || sudo umount -l /tmp", check=False)
        again = playbook(converged)

    assert proc.returncode != 0, proc.stdout[-5000:]
    # The failure report of dkms_module names the module, its version and the cause.
    report = proc.stdout.split("TASK [kmodlab.lab.dkms_module : Show the modules that failed", 1)
    assert len(report) == 2, proc.stdout[-5000:]
    failure = " ".join(line.strip() for line in report[1].split("\nTASK [", 1)[0].splitlines())
    assert re.search(
        rf"{re.escape(MOD.name)} {re.escape(BUMPED)} \((sources|add|build) failed\)", failure
    ), failure
    assert "No space left on device" in failure and "the disk is full" in failure, failure
    # The old version is installed and loaded, the same build; nothing of the new one.
    assert old_line in status and BUMPED not in status, status
    assert loaded and build_after == build_before
    assert not new_sources, f"/usr/src/{MOD.name}-{BUMPED} was left behind"
    assert not new_tree, f"/var/lib/dkms/{MOD.name}/{BUMPED} was left behind"
    # And the lab converges again once there is space.
    assert again.returncode == 0, again.stdout[-5000:]
    assert old_line in dkms_status(converged)
