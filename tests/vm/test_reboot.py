"""Persistence across a reboot through the firmware, on the converged lab VM.

lab.yml with persistence on for all modules but two (one `persist: false`, one
`state: config` without persistence), its signing, load and verify stages only (the
layer is kmod_load's: persistence is its files alone; the headers and DKMS packages of
the converged lab are in place and the layer does not change them); the guest reboots
(QEMU runs with -no-reboot, so the reboot ends the VM and `kmodlab vm up` starts it
again on the same disk and variable store, through OVMF, shim and grub as a real host
boots); at boot the persisted modules are loaded with their parameters and the other
two are not. lab.yml, every stage, then converges the lab again.
"""

from __future__ import annotations

import json
import secrets

import pytest
from ansible_collections.kmodlab.lab.plugins.module_utils.params import sysfs_value
from vmhelpers import LAB_MODULES, ROOT, Guest, playbook, reboot

from kmodlab.manifest import load_manifest

# A failure halfway leaves the lab converged again for the tests after it.
pytestmark = pytest.mark.usefixtures("restores_lab")

# Not loaded at boot: one present but not persisted, one only configured (options
# written, not in modules-load.d).
NOT_AT_BOOT = {"hello-1": {"persist": False}, "hello-2": {"state": "config", "persist": False}}
# The stages the layer needs: kmod_load writes the persistence files, kmod_verify checks
# them, module_signing gives both the project key (verify's signature checks). The
# headers and the DKMS packages (which build config modules as present ones, and know
# nothing of persistence) have nothing to do on the converged lab, so they are skipped.
STAGES = "module_signing,kmod_load,kmod_verify"


def _kmod(name: str) -> str:
    return load_manifest(ROOT / "modules" / name).kmod


def test_persisted_modules_load_at_boot_with_their_parameters(converged: Guest) -> None:
    overrides = [{"name": n, **v} for n, v in NOT_AT_BOOT.items()]
    layer = json.dumps({"kmodlab_host_modules": overrides})
    proc = playbook(converged, "--tags", STAGES, "-e", layer)
    assert proc.returncode == 0, proc.stdout[-5000:]
    for name in NOT_AT_BOOT:
        assert "rc=1" in converged.run(f"test -e /etc/modules-load.d/{name}.conf", check=False)
    token = secrets.token_hex(8)
    converged.run(f"echo {token} | sudo tee /var/tmp/kmodlab-reboot-marker >/dev/null")
    vars_file = converged.vm.run_dir(converged.lab) / "OVMF_VARS.fd"
    vars_inode = vars_file.stat().st_ino
    boot_id = converged.run("cat /proc/sys/kernel/random/boot_id").strip()

    reboot(converged)

    # The same VM: its disk and its UEFI variable store.
    assert converged.run("cat /var/tmp/kmodlab-reboot-marker").strip() == token
    assert vars_file.stat().st_ino == vars_inode
    assert converged.run("cat /proc/sys/kernel/random/boot_id").strip() != boot_id
    loaded = set(converged.run("cut -d' ' -f1 /proc/modules").split())
    for name in LAB_MODULES:
        assert (_kmod(name) in loaded) == (name not in NOT_AT_BOOT), (name, sorted(loaded))
    hello5 = load_manifest(ROOT / "modules/hello-5")
    decls = {p.name: p.model_dump() for p in hello5.parameters}
    for name, value in hello5.wanted_params().items():
        if decls[name]["perm"] == "0000":
            continue
        live = converged.run(f"sudo cat /sys/module/hello_5/parameters/{name}").strip()
        assert live == sysfs_value(decls[name], value), name

    again = playbook(converged)
    assert again.returncode == 0, again.stdout[-5000:]
    loaded = set(converged.run("cut -d' ' -f1 /proc/modules").split())
    assert {_kmod(n) for n in LAB_MODULES} <= loaded
