"""Fast tier: ``kmodlab module import`` reads what a built module says about itself.

hello-5 (every parameter kind: short, int, long, charp, a counted array, fixed-size int
and bool arrays, one parameter hidden from sysfs) is built from its source folder by the
command itself; its draft must give exactly the parameters its hand-written manifest
gives (type, mode, array size, count variable, initial value, description). A
third-party-style tree written here (its own Makefile building two .ko files, a
dkms.conf whose package name is neither module's) gives one validating draft per module,
at the package's version, naming that package and its tree; resolved from the drafts'
folder, both modules are built in that one package, as shipped. Bad input fails with
exit status 2 and a message.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from kmodlab.importer import newest_headers
from kmodlab.koinfo import read_ko
from kmodlab.manifest import Manifest, PathSource, load_manifest
from kmodlab.package import packages_for
from kmodlab.selection import resolve

REPO = Path(__file__).resolve().parents[2]
KMODLAB = REPO / ".venv/bin/kmodlab"
HEADERS = newest_headers()

pytestmark = [
    pytest.mark.skipif(
        HEADERS is None,
        reason="no /usr/src/linux-headers-*-amd64: apt-get install linux-headers-amd64",
    ),
    pytest.mark.skipif(
        shutil.which("make") is None or shutil.which("gcc") is None,
        reason="no make or gcc: apt-get install build-essential",
    ),
]

VENDOR_C = """\
// SPDX-License-Identifier: GPL-2.0-only
#include <linux/module.h>
#include <linux/moduleparam.h>

static unsigned int {name}_rate = {rate};
module_param({name}_rate, uint, 0644);
MODULE_PARM_DESC({name}_rate, "Samples per second");

static bool {name}_quiet;
module_param({name}_quiet, bool, 0444);
MODULE_PARM_DESC({name}_quiet, "Log nothing");

static int __init {name}_init(void)
{{
\treturn 0;
}}

static void __exit {name}_exit(void)
{{
}}

module_init({name}_init);
module_exit({name}_exit);
MODULE_LICENSE("GPL");
MODULE_AUTHOR("Widget Vendor <dev@widgets.example>");
MODULE_DESCRIPTION("widget {name} driver");
"""

MAKEFILE = """\
obj-m := alpha.o beta.o
KDIR ?= /lib/modules/$(shell uname -r)/build
all:
\t$(MAKE) -C $(KDIR) M=$(CURDIR) modules
"""

DKMS_CONF = """\
PACKAGE_NAME="vendor-widgets"
PACKAGE_VERSION="2.3.1"
BUILT_MODULE_NAME[0]="alpha"
BUILT_MODULE_NAME[1]="beta"
DEST_MODULE_LOCATION[0]="/updates/dkms"
DEST_MODULE_LOCATION[1]="/updates/dkms"
AUTOINSTALL="yes"
"""


def kmodlab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KMODLAB), *args], capture_output=True, text=True, check=False, timeout=300
    )


def test_hello5_draft_has_exactly_the_hand_written_parameters(tmp_path: Path) -> None:
    proc = kmodlab("module", "import", str(REPO / "modules/hello-5"), "-o", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    draft = yaml.safe_load((tmp_path / "hello-5/module.yml").read_text())
    Manifest.model_validate(draft)
    real = load_manifest(REPO / "modules/hello-5")
    assert draft["name"] == "hello-5"
    assert draft["license"] == real.license
    assert draft["description"] == real.description
    assert draft["sources"] == sorted([*real.sources, "Kbuild"])
    got = {p["name"]: p for p in Manifest.model_validate(draft).model_dump()["parameters"]}
    want = {p["name"]: p for p in real.model_dump()["parameters"]}
    assert set(got) == set(want)
    for name, param in want.items():
        for key in ("type", "perm", "default", "array", "max_count", "counted", "description"):
            assert got[name][key] == param[key], (name, key, got[name][key], param[key])
    assert not list((REPO / "modules/hello-5").glob("*.ko")), "built in the repository"
    again = kmodlab("module", "import", str(REPO / "modules/hello-5"), "-o", str(tmp_path))
    assert again.returncode == 2 and "exists: not overwritten" in again.stderr


def test_a_vendor_package_with_two_modules_and_its_own_dkms_conf(tmp_path: Path) -> None:
    tree = tmp_path / "usr/src/vendor-widgets-2.3.1"
    tree.mkdir(parents=True)
    for name, rate in (("alpha", 100), ("beta", 250)):
        (tree / f"{name}.c").write_text(VENDOR_C.format(name=name, rate=rate))
    (tree / "Makefile").write_text(MAKEFILE)
    (tree / "dkms.conf").write_text(DKMS_CONF)
    out = tmp_path / "manifests"
    proc = kmodlab("module", "import", str(tree), "-o", str(out), "--headers", str(HEADERS))
    assert proc.returncode == 0, proc.stderr
    for name, rate in (("alpha", 100), ("beta", 250)):
        draft = yaml.safe_load((out / name / "module.yml").read_text())
        m = Manifest.model_validate(draft)
        assert m.version == "2.3.1"  # the package's: the modules carry none
        assert m.author == "Widget Vendor <dev@widgets.example>"
        assert m.description == f"widget {name} driver"
        # The package as shipped: its name and its tree, no sources of its own.
        assert m.package.name == "vendor-widgets" and not m.sources
        assert m.package.source == PathSource(path=str(tree))
        assert load_manifest(out / name).package_name == "vendor-widgets"
        params = {p.name: p for p in m.parameters}
        assert params[f"{name}_rate"].type == "uint"
        assert params[f"{name}_rate"].default == rate
        assert params[f"{name}_rate"].perm == "0644"
        assert params[f"{name}_quiet"].type == "bool"
        assert params[f"{name}_quiet"].default is False
        assert params[f"{name}_quiet"].perm == "0444"
        assert params[f"{name}_rate"].description == "Samples per second"
    assert not list(tree.glob("*.ko")), "the tree was built in place"
    # From a manifest folder outside the repository, both modules resolve to one DKMS
    # package: the tree's files, its dkms.conf as shipped.
    records = resolve([out, REPO / "modules"], [{"name": "alpha"}, {"name": "beta"}])
    assert [(r["name"], r["kmod"], r["package"]) for r in records] == [
        ("alpha", "alpha", "vendor-widgets"),
        ("beta", "beta", "vendor-widgets"),
    ]
    assert {r["source_dir"] for r in records} == {str(tree)}
    (spec,) = packages_for(records)
    assert spec["name"] == "vendor-widgets" and spec["version"] == "2.3.1"
    assert set(spec["files"]) == {"alpha.c", "beta.c", "Makefile", "dkms.conf"}
    assert spec["files"]["dkms.conf"] == DKMS_CONF


def test_a_built_ko_is_read_without_building(tmp_path: Path) -> None:
    work = tmp_path / "hello-5"
    shutil.copytree(REPO / "modules/hello-5", work)
    subprocess.run(
        ["make", "-C", str(HEADERS), f"M={work}", "modules"],
        check=True,
        capture_output=True,
    )
    info = read_ko(work / "hello-5.ko")
    assert info.value("name") == "hello_5"
    assert str(info.value("vermagic")).startswith(HEADERS.name.removeprefix("linux-headers-"))
    proc = kmodlab("module", "import", str(work / "hello-5.ko"))
    assert proc.returncode == 0, proc.stderr
    assert "name: hello-5" in proc.stdout and "myintarray" in proc.stdout


def test_bad_input_fails_with_a_message(tmp_path: Path) -> None:
    missing = kmodlab("module", "import", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr
    text = tmp_path / "notes.ko"
    text.write_text("not an ELF file")
    proc = kmodlab("module", "import", str(text))
    assert proc.returncode == 2 and "not a kernel module built for x86-64" in proc.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "Kbuild").write_text("obj-m := broken.o\n")
    (broken / "broken.c").write_text("this is not C\n")
    proc = kmodlab("module", "import", str(broken), "--headers", str(HEADERS))
    assert proc.returncode == 2 and "failed" in proc.stderr and "broken.c" in proc.stderr
