"""Fast tier: kmodlab.lab.config_files (many small root-owned files in one call)."""

from __future__ import annotations

import importlib.util
import os
import stat
from pathlib import Path
from unittest import mock

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

REPO = Path(__file__).resolve().parents[2]
kmodlab_files = importlib.import_module(
    "ansible_collections.kmodlab.lab.plugins.modules.config_files"
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root (it writes root-owned files): run the fast tier as root",
)


class Done(Exception):
    pass


def run(files, check=False):
    def leave(_self, **kwargs):
        raise Done(kwargs)

    def fail(_self, msg, **kwargs):
        raise Done({"failed": True, "msg": msg, **kwargs})

    with (
        patch_module_args({"files": files, "_ansible_check_mode": check}),
        mock.patch.multiple(basic.AnsibleModule, exit_json=leave, fail_json=fail),
    ):
        try:
            kmodlab_files.main()
        except Done as exc:
            return exc.args[0]
    raise AssertionError("the module neither exited nor failed")


def test_writes_creates_the_folder_then_changes_nothing(tmp_path):
    fact = tmp_path / "facts.d/kmodlab.fact"
    conf = tmp_path / "a.conf"
    wanted = [
        {"path": str(fact), "content": "{}\n", "mode": "0644"},
        {"path": str(conf), "content": "options a x=1\n", "mode": "0600"},
    ]
    res = run(wanted)
    assert res["changed"] is True and res["changed_paths"] == [str(fact), str(conf)]
    assert fact.read_text() == "{}\n" and stat.S_IMODE(fact.stat().st_mode) == 0o644
    assert stat.S_IMODE(fact.parent.stat().st_mode) == 0o755
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    again = run(wanted)
    assert again["changed"] is False
    assert {f["action"] for f in again["files"]} == {"unchanged"}


def test_mode_content_and_removal(tmp_path):
    conf = tmp_path / "a.conf"
    conf.write_text("old\n")
    conf.chmod(0o600)
    gone = tmp_path / "b.conf"
    gone.write_text("x\n")
    res = run(
        [
            {"path": str(conf), "content": "old\n", "mode": "0644"},
            {"path": str(gone), "content": None},
            {"path": str(tmp_path / "never.conf"), "content": None},
        ]
    )
    assert [f["action"] for f in res["files"]] == ["written", "removed", "unchanged"]
    assert stat.S_IMODE(conf.stat().st_mode) == 0o644 and not gone.exists()


def test_check_mode_reports_and_writes_nothing(tmp_path):
    fact = tmp_path / "facts.d/kmodlab.fact"
    res = run([{"path": str(fact), "content": "{}\n"}], check=True)
    assert res["changed"] is True and res["diff"][0]["after"] == "{}\n"
    assert not fact.parent.exists()


def test_a_missing_folder_gets_its_dir_mode(tmp_path):
    """The signing key's folder: created root only, the key 0600 in it."""
    key = tmp_path / "etc/kmodlab/signing/signing.key"
    res = run([{"path": str(key), "content": "k\n", "mode": "0600", "dir_mode": "0700"}])
    assert res["changed"] is True
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
