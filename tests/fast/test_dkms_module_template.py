"""Fast tier: the dkms_module role's one dkms.conf template, rendered for real manifests.

Rendered with Ansible's own templating (the role renders it with the template lookup) for
the record the ``kmodlab_modules`` lookup returns, then read back the way dkms reads it:
sourced by bash, with dkms's variables set.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

from kmodlab.selection import resolve

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles/dkms_module"
TEMPLATE = ROLE / "templates/usr/src/dkms.conf.j2"
DEFAULTS = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
# dkms.conf is sourced by bash inside dkms, which sets these variables.
BUILD_DIR = "${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build"


def render(record, **overrides) -> str:
    variables = {
        "ansible_managed": "Ansible managed",
        "dkms_module_item": record,
        "dkms_module_dest_location": DEFAULTS["dkms_module_dest_location"],
        "dkms_module_autoinstall": DEFAULTS["dkms_module_autoinstall"],
        **overrides,
    }
    templar = Templar(loader=DataLoader(), variables=variables)
    return templar.template(trust_as_template(TEMPLATE.read_text()))


def record(name: str) -> dict:
    (rec,) = resolve(REPO / "modules", [{"name": name}], var="test")
    return rec


def test_hello_5_renders_the_expected_dkms_conf():
    rec = record("hello-5")
    text = render(rec)
    lines = text.splitlines()
    # starts with the managed-by comment
    assert lines[:3] == ["#", "# Ansible managed", "#"]
    settings = [line for line in lines if line and not line.startswith("#")]
    assert settings == [
        'PACKAGE_NAME="hello-5"',
        f'PACKAGE_VERSION="{rec["version"]}"',  # the manifest's
        'BUILT_MODULE_NAME[0]="hello-5"',
        'DEST_MODULE_LOCATION[0]="/updates/dkms"',
        f'MAKE[0]="make -C ${{kernel_source_dir}} M={BUILD_DIR}"',
        f'CLEAN="make -C ${{kernel_source_dir}} M={BUILD_DIR} clean"',
        'AUTOINSTALL="yes"',
    ]
    assert "modules/hello-5/module.yml" in text


def test_settings_follow_the_role_variables():
    text = render(
        record("chardev"), dkms_module_dest_location="/extra", dkms_module_autoinstall=False
    )
    assert 'DEST_MODULE_LOCATION[0]="/extra"' in text
    assert 'AUTOINSTALL="no"' in text
    assert 'PACKAGE_NAME="chardev"' in text


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash: apt-get install bash")
@pytest.mark.parametrize("name", ["hello-5", "startstop", "chardev"])
def test_dkms_reads_what_it_needs(name, tmp_path):
    """dkms sources dkms.conf in bash with kernel_source_dir and dkms_tree set."""
    rec = record(name)
    conf = tmp_path / "dkms.conf"
    conf.write_text(render(rec))
    script = (
        "kernel_source_dir=/lib/modules/K/build; dkms_tree=/var/lib/dkms; "
        f"source {conf}; "
        'printf "%s\\n" "$PACKAGE_NAME" "$PACKAGE_VERSION" "${BUILT_MODULE_NAME[0]}" '
        '"${DEST_MODULE_LOCATION[0]}" "${MAKE[0]}" "$AUTOINSTALL"'
    )
    out = subprocess.run(["bash", "-c", script], check=True, capture_output=True, text=True)
    assert out.stdout.splitlines() == [
        rec["name"],
        rec["version"],
        rec["name"],  # the .ko is named after the package (Kbuild: obj-m := NAME.o)
        "/updates/dkms",
        f"make -C /lib/modules/K/build M=/var/lib/dkms/{rec['name']}/{rec['version']}/build",
        "yes",
    ]
    assert out.stderr == ""


def test_every_lab_module_has_the_kbuild_object_the_template_names():
    """BUILT_MODULE_NAME is the package name: each Kbuild must build NAME.ko."""
    for rec in resolve(
        REPO / "modules", [{"name": p.parent.name} for p in (REPO / "modules").glob("*/module.yml")]
    ):
        kbuild = Path(rec["source_dir"]) / "Kbuild"
        assert f"obj-m := {rec['name']}.o" in kbuild.read_text(), kbuild
