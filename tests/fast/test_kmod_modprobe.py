"""Fast tier: kmodlab.lab.kmod_modprobe (many modules loaded in one call, one modprobe each).

The module runs for real, in this process, against a fake ``modprobe`` first on PATH: a
small script that logs its arguments and LC_ALL, and refuses the module named ``bad``
with modprobe's own message (exit 1), ``mute`` without a word (exit 1) and ``chatty``
on its standard output only (exit 1).
"""

from __future__ import annotations

import importlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from kmodlab.selection import resolve

MODULES = Path(__file__).parent / "fixtures" / "kmod" / "modules"

kmod_modprobe = importlib.import_module(
    "ansible_collections.kmodlab.lab.plugins.modules.kmod_modprobe"
)
kmod_load_filters = importlib.import_module(
    "ansible_collections.kmodlab.lab.plugins.filter.kmod_load"
)
cg_modprobe = importlib.import_module(
    "ansible_collections.community.general.plugins.modules.modprobe"
)

FAKE_MODPROBE = """#!{python}
import json, os, sys
with open({log!r}, "a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "LC_ALL": os.environ.get("LC_ALL")}}) + "\\n")
kmod = sys.argv[2] if sys.argv[1:2] == ["--"] else sys.argv[1]
if kmod == "bad":
    sys.stderr.write("modprobe: ERROR: could not insert 'bad': Invalid argument\\n")
    sys.exit(1)
if kmod == "mute":
    sys.exit(1)
if kmod == "chatty":
    print("insmod /lib/modules/x/chatty.ko")
    sys.exit(1)
"""


class Done(Exception):
    pass


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake modprobe first on PATH; returns the log it writes (one JSON line a run)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "modprobe.log"
    script = bindir / "modprobe"
    script.write_text(FAKE_MODPROBE.format(python=sys.executable, log=str(log)))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.setenv("LC_ALL", "en_US.UTF-8")
    return log


def calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def run(modules: list[dict[str, Any]], check: bool = False) -> dict[str, Any]:
    def leave(_self, **kwargs):
        raise Done(kwargs)

    def fail(_self, msg, **kwargs):
        raise Done({"failed": True, "msg": msg, **kwargs})

    with (
        patch_module_args({"modules": modules, "_ansible_check_mode": check}),
        mock.patch.multiple(basic.AnsibleModule, exit_json=leave, fail_json=fail),
    ):
        try:
            kmod_modprobe.main()
        except Done as exc:
            return exc.args[0]
    raise AssertionError("the module neither exited nor failed")


def test_argv_is_modprobe_dashdash_kmod_then_params_split_like_community_general(fake, tmp_path):
    params = "a=1 'mystring=hello lab'"
    res = run([{"name": "k-1", "kmod": "kmod", "params": params}])
    assert res["changed"] is True and res["failed_modules"] == []
    assert [c["argv"] for c in calls(fake)] == [["--", "kmod", "a=1", "mystring=hello lab"]]
    modprobe = str(tmp_path / "bin" / "modprobe")
    assert res["modules"] == [
        {
            "name": "k-1",
            "kmod": "kmod",
            "cmd": [modprobe, "--", "kmod", "a=1", "mystring=hello lab"],
            "rc": 0,
            "stdout": "",
            "stderr": "",
            "msg": "",
        }
    ]

    # community.general.modprobe, given the same params, runs the same words after the name
    module = mock.Mock(
        check_mode=False,
        params={"state": "present", "name": "kmod", "params": params, "persistent": "disabled"},
    )
    module.get_bin_path.return_value = modprobe
    module.run_command.return_value = (0, "", "")
    cg = cg_modprobe.Modprobe(module)
    with mock.patch.object(cg_modprobe.Modprobe, "module_loaded", return_value=True):
        cg.load_module()
    cg_argv = module.run_command.call_args_list[0].args[0]
    assert cg_argv[0] == modprobe and cg_argv[1:] == ["kmod", "a=1", "mystring=hello lab"]
    assert res["modules"][0]["cmd"][3:] == cg_argv[2:]


def test_params_of_the_kmod_args_filter_reach_modprobe_word_for_word(fake):
    """The role gives the module what kmodlab.lab.kmod_args gives for a record."""
    (record,) = resolve(MODULES, [{"name": "hello-5", "params": {"myint": 7}}])
    params = kmod_load_filters.kmod_args(record)
    assert "'mystring=hello lab'" in params
    res = run([{"name": "hello-5", "kmod": record["kmod"], "params": params}])
    assert res["failed_modules"] == []
    (call,) = calls(fake)
    assert call["argv"] == ["--", "hello_5", *shlex.split(params)]
    assert "mystring=hello lab" in call["argv"] and "myint=7" in call["argv"]


def test_order_kept_and_a_refused_module_does_not_stop_the_next(fake):
    res = run(
        [
            {"name": "one", "kmod": "one", "params": "x=1"},
            {"name": "bad-mod", "kmod": "bad", "params": "level=9"},
            {"name": "three", "kmod": "three"},
        ]
    )
    assert [c["argv"] for c in calls(fake)] == [
        ["--", "one", "x=1"],
        ["--", "bad", "level=9"],
        ["--", "three"],
    ]
    assert [m["name"] for m in res["modules"]] == ["one", "bad-mod", "three"]
    assert [m["rc"] for m in res["modules"]] == [0, 1, 0]
    assert res["failed_modules"] == ["bad-mod"]
    assert res["changed"] is True
    assert "failed" not in res  # modprobe's refusal is data, the task does not fail
    bad = res["modules"][1]
    assert bad["stderr"] == "modprobe: ERROR: could not insert 'bad': Invalid argument\n"
    assert bad["msg"] == "modprobe: ERROR: could not insert 'bad': Invalid argument"


def test_message_without_stderr_is_stdout_or_the_status(fake):
    res = run([{"name": "mute", "kmod": "mute"}, {"name": "chatty", "kmod": "chatty"}])
    assert [m["msg"] for m in res["modules"]] == [
        "modprobe exited with 1",
        "insmod /lib/modules/x/chatty.ko",
    ]
    assert res["failed_modules"] == ["mute", "chatty"]
    assert res["changed"] is False  # nothing was loaded


def test_modprobe_runs_with_lc_all_c(fake):
    run([{"name": "one", "kmod": "one"}, {"name": "bad", "kmod": "bad"}])
    assert [c["LC_ALL"] for c in calls(fake)] == ["C", "C"]


def test_check_mode_runs_nothing_and_reports_what_would_load(fake, tmp_path):
    res = run(
        [{"name": "one", "kmod": "one", "params": "a='b c'"}, {"name": "bad", "kmod": "bad"}],
        check=True,
    )
    assert calls(fake) == []
    assert res["changed"] is True and res["failed_modules"] == []
    modprobe = str(tmp_path / "bin" / "modprobe")
    assert [m["cmd"] for m in res["modules"]] == [
        [modprobe, "--", "one", "a=b c"],
        [modprobe, "--", "bad"],
    ]
    assert {m["rc"] for m in res["modules"]} == {None}


def test_nothing_to_load_changes_nothing(fake):
    for check in (False, True):
        res = run([], check=check)
        assert res == {"changed": False, "modules": [], "failed_modules": []}
    assert calls(fake) == []


def test_params_that_do_not_split_fail_the_task_before_anything_runs(fake):
    res = run([{"name": "one", "kmod": "one"}, {"name": "two", "kmod": "two", "params": "a='b"}])
    assert res["failed"] is True
    assert res["msg"].startswith('two: params "a=\'b": '), res["msg"]
    assert calls(fake) == []


def test_an_entry_without_kmod_fails_the_task(fake):
    res = run([{"name": "one"}])
    assert res["failed"] is True and "kmod" in res["msg"]
    assert calls(fake) == []
