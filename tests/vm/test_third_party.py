"""A module users bring, through the same pipeline, on the converged DKMS lab VM.

The test writes a third-party package as a vendor ships one: ``acme-sensors`` 2.1.0, a
``/usr/src/NAME-VERSION`` tree (outside the repository) with its own dkms.conf (package
name neither module's, ``BUILT_MODULE_NAME[0]`` and ``[1]``, ``MAKE[0]`` through its own
Makefile), two modules: ``acme_temp``, and ``acme_fan``, which calls ``crc_itu_t()`` of
the in-tree module ``crc-itu-t``. ``kmodlab module import`` on the tree writes the
manifests into a manifest folder of the user's (outside the repository too); the test
adds what a user adds (lab parameters, the load messages to see). ``lab.yml`` with that
folder in ``kmodlab_manifest_dirs`` builds the package once with DKMS as shipped, loads
both modules (modprobe loads ``crc_itu_t`` first) and verifies them; then both go
``absent`` and the package is gone.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from vmhelpers import PLAIN, ROOT, VENV, Guest, playbook, recap

from kmodlab.manifest import load_manifest

pytestmark = pytest.mark.usefixtures("restores_lab")

PACKAGE, VERSION = "acme-sensors", "2.1.0"

DKMS_CONF = f"""\
# acme-sensors: shipped by the vendor, built by its own Makefile.
PACKAGE_NAME="{PACKAGE}"
PACKAGE_VERSION="{VERSION}"
BUILT_MODULE_NAME[0]="acme_temp"
BUILT_MODULE_NAME[1]="acme_fan"
DEST_MODULE_LOCATION[0]="/updates/dkms"
DEST_MODULE_LOCATION[1]="/updates/dkms"
MAKE[0]="make KDIR=${{kernel_source_dir}} all"
CLEAN="make KDIR=${{kernel_source_dir}} clean"
BUILD_EXCLUSIVE_KERNEL="^6\\."
AUTOINSTALL="yes"
"""

MAKEFILE = """\
# The vendor's Makefile: kbuild reads obj-m, `make all` drives it.
obj-m := acme_temp.o acme_fan.o
KDIR ?= /lib/modules/$(shell uname -r)/build

all:
\t$(MAKE) -C $(KDIR) M=$(CURDIR) modules

clean:
\t$(MAKE) -C $(KDIR) M=$(CURDIR) clean
"""

TEMP_C = """\
// SPDX-License-Identifier: GPL-2.0
/* acme_temp: a pretend temperature sensor that reports its polling interval. */
#include <linux/module.h>
#include <linux/moduleparam.h>

static unsigned int interval = 1000;
module_param(interval, uint, 0644);
MODULE_PARM_DESC(interval, "Polling interval in ms");

static int __init acme_temp_init(void)
{
\tpr_info("acme_temp: sensor up, interval %u ms\\n", interval);
\treturn 0;
}

static void __exit acme_temp_exit(void)
{
\tpr_info("acme_temp: sensor down\\n");
}

module_init(acme_temp_init);
module_exit(acme_temp_exit);
MODULE_LICENSE("GPL");
MODULE_AUTHOR("Acme Sensors <drivers@acme.example>");
MODULE_DESCRIPTION("Acme temperature sensor");
MODULE_VERSION("2.1.0");
"""

FAN_C = """\
// SPDX-License-Identifier: GPL-2.0
/* acme_fan: a pretend fan; its id is a CRC-ITU-T, from the in-tree crc-itu-t module. */
#include <linux/crc-itu-t.h>
#include <linux/module.h>
#include <linux/moduleparam.h>

static int speed = 3;
module_param(speed, int, 0444);
MODULE_PARM_DESC(speed, "Fan speed step");

static int __init acme_fan_init(void)
{
\tstatic const u8 tag[] = "acme";

\tpr_info("acme_fan: fan up at speed %d, id %04x\\n", speed,
\t\tcrc_itu_t(0, tag, sizeof(tag) - 1));
\treturn 0;
}

static void __exit acme_fan_exit(void)
{
\tpr_info("acme_fan: fan down\\n");
}

module_init(acme_fan_init);
module_exit(acme_fan_exit);
MODULE_LICENSE("GPL");
MODULE_AUTHOR("Acme Sensors <drivers@acme.example>");
MODULE_DESCRIPTION("Acme fan controller");
"""

# What the user adds to each draft: lab parameters and the load messages to see.
ADDED = {
    "acme_temp": {
        "lab": {"params": {"interval": 250}},
        "expect": {"dmesg": {"load": [r"acme_temp: sensor up, interval \d+ ms"],
                             "unload": ["acme_temp: sensor down"]}},
    },
    "acme_fan": {
        "lab": {"params": {"speed": 5}},
        "expect": {"dmesg": {"load": [r"acme_fan: fan up at speed \d+, id [0-9a-f]{4}"],
                             "unload": ["acme_fan: fan down"]}},
    },
}  # fmt: skip


def vendor_tree(root: Path) -> Path:
    tree = root / "usr/src" / f"{PACKAGE}-{VERSION}"
    tree.mkdir(parents=True)
    for name, text in (("dkms.conf", DKMS_CONF), ("Makefile", MAKEFILE),
                       ("acme_temp.c", TEMP_C), ("acme_fan.c", FAN_C)):  # fmt: skip
        (tree / name).write_text(text)
    return tree


def test_a_vendor_package_with_two_modules_goes_through_the_pipeline(
    converged: Guest, tmp_path: Path
) -> None:
    tree = vendor_tree(tmp_path / "vendor")
    manifests = tmp_path / "my-modules"
    imported = subprocess.run(
        [str(VENV / "kmodlab"), "module", "import", str(tree), "-o", str(manifests)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert imported.returncode == 0, imported.stderr
    for name, added in ADDED.items():
        path = manifests / name / "module.yml"
        draft = yaml.safe_load(path.read_text())
        assert draft["package"] == {"name": PACKAGE, "source": {"path": str(tree)}}
        assert draft["version"] == VERSION and "sources" not in draft
        path.write_text(yaml.safe_dump({**draft, **added}, sort_keys=False))
        assert load_manifest(path).package_name == PACKAGE  # validates
    assert not str(manifests).startswith(str(ROOT)) and not str(tree).startswith(str(ROOT))

    kernel = converged.run("uname -r").strip()
    selection = {
        "kmodlab_manifest_dirs": [str(manifests)],
        "kmodlab_modules": [{"name": "acme_temp"}, {"name": "acme_fan"}],
    }
    proc = playbook(
        converged, "-e", json.dumps(selection), "-e", f"kmod_verify_report_dir={tmp_path}/in"
    )
    assert proc.returncode == 0, proc.stdout[-6000:]
    report = json.loads((tmp_path / "in/report.json").read_text())
    (host,) = report["hosts"]
    assert host["host"] == PLAIN and host["outcome"] == "pass", host["problems"]
    assert sorted(m["name"] for m in host["modules"]) == ["acme_fan", "acme_temp"]
    assert not [m for m in host["modules"] if m["failures"]]

    # One DKMS package, as shipped, built once for both modules.
    status = converged.run(f"sudo dkms status {PACKAGE}")
    assert re.search(rf"^{PACKAGE}/{VERSION}, {re.escape(kernel)}, \S+: installed$", status, re.M)
    assert converged.run(f"cat /usr/src/{PACKAGE}-{VERSION}/dkms.conf") == DKMS_CONF
    for kmod in ("acme_temp", "acme_fan"):
        assert converged.run(f"/sbin/modinfo -n {kmod}").strip() == (
            f"/lib/modules/{kernel}/updates/dkms/{kmod}.ko"
        )
    assert converged.run("cat /sys/module/acme_temp/parameters/interval").strip() == "250"
    assert converged.run("cat /sys/module/acme_fan/parameters/speed").strip() == "5"
    # modprobe resolved the in-tree dependency: crc_itu_t loaded, held by acme_fan.
    holders = converged.run("cat /sys/module/crc_itu_t/holders/acme_fan/initstate")
    assert holders.strip() == "live"
    assert converged.run("/sbin/modinfo -F depends acme_fan").strip() == "crc-itu-t"

    # Both absent: unloaded, the package removed from DKMS with its sources.
    gone = {**selection, "kmodlab_modules": [{"name": n, "state": "absent"} for n in ADDED]}
    proc = playbook(
        converged, "-e", json.dumps(gone), "-e", f"kmod_verify_report_dir={tmp_path}/out"
    )
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert (recap(proc.stdout) or {}).get("failed") == 0
    loaded = converged.run("cut -d' ' -f1 /proc/modules").split()
    assert "acme_temp" not in loaded and "acme_fan" not in loaded
    assert converged.run(f"sudo dkms status {PACKAGE}").strip() == ""
    assert "rc=2" in converged.run(f"ls -d /usr/src/{PACKAGE}-{VERSION}", check=False)
