"""Fast tier: kernel_headers' Debian preflight and install, task by task, against what apt
says (captured from apt 2.6 on Debian 12), and the exact failure messages.

The task files are walked in order as Ansible runs them, with Ansible's own templating
(the role's vars/main.yml and vars/Debian.yml, ``when`` and ``failed_when`` of each
task); commands and the apt module are not run: each registered result is given by the
test. So a task that stops firing, a condition that goes wrong or a message that loses
its kernel, package or fix fails here, without a host.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles/kernel_headers"
KERNEL = "6.1.0-28-amd64"
PACKAGE = f"linux-headers-{KERNEL}"
HOST = "lab1"
_LOADER = DataLoader()


def _load(path: Path) -> Any:
    return _LOADER.load_from_file(str(path), trusted_as_template=True)


def dpkg(*installed: str) -> dict:
    lines = [f"{p}\tinstalled" for p in installed]
    return {"rc": 1, "stdout_lines": lines, "stdout": "\n".join(lines), "changed": False}


def policy(candidate: str, table: str = "") -> dict:
    stdout = f"{PACKAGE}:\n  Installed: (none)\n  Candidate: {candidate}\n  Version table:\n{table}"
    return {"rc": 0, "stdout": stdout, "stdout_lines": stdout.splitlines(), "changed": False}


UNKNOWN = {"rc": 0, "stdout": "", "stdout_lines": [], "changed": False}  # apt-cache: no such
FOUND = policy(
    "6.1.119-1",
    "     6.1.119-1 500\n        500 http://deb.debian.org/debian bookworm/main amd64 Packages\n",
)
PINNED = policy(
    "(none)",
    "     6.1.119-1 -1\n        500 http://deb.debian.org/debian bookworm/main amd64 Packages\n",
)
REFRESHED = {"changed": True, "cache_updated": True, "cache_update_time": 1}
REFUSED = "Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)"
# apt-get update -q, exit status 0, with a mirror that refuses connections
UNREACHED = {
    "rc": 0,
    "changed": True,
    "stdout": f"Ign:1 http://127.0.0.1:9/debian bookworm InRelease\n"
    f"Err:1 http://127.0.0.1:9/debian bookworm InRelease\n  {REFUSED}\nReading package lists...",
    "stderr": f"W: Failed to fetch http://127.0.0.1:9/debian/dists/bookworm/InRelease  {REFUSED}\n"
    "W: Some index files failed to download. They have been ignored, or old ones used instead.",
}
UPDATED = {"rc": 0, "changed": True, "stdout": "Hit:1 http://deb.debian.org/debian", "stderr": ""}
MISSING_ALL = dpkg()


class Failed(Exception):
    """A fail task fired: its name and message."""


class Play:
    """The role's tasks walked in order, with given results for what runs on the host."""

    def __init__(self, results: dict[str, dict], check_mode: bool = False) -> None:
        self.results = results
        self.ran: list[str] = []
        self.vars: dict[str, Any] = {
            **_load(ROLE / "defaults/main.yml"),
            **_load(ROLE / "vars/main.yml"),
            **_load(ROLE / "vars/Debian.yml"),
            "ansible_kernel": KERNEL,
            "ansible_distribution_release": "bookworm",
            "ansible_check_mode": check_mode,
            "inventory_hostname": HOST,
        }

    def template(self, value: Any, extra: dict[str, Any] | None = None) -> Any:
        templar = Templar(loader=_LOADER, variables={**self.vars, **(extra or {})})
        return templar.template(trust_as_template(value) if isinstance(value, str) else value)

    def true(self, condition: Any, extra: dict[str, Any] | None = None) -> bool:
        if isinstance(condition, bool):
            return condition
        return bool(self.template("{{ (" + str(condition) + ") | bool }}", extra))

    def run(self, tasks_file: str) -> None:
        for task in _load(ROLE / "tasks" / tasks_file):
            self.task(task)

    def task(self, task: dict[str, Any]) -> None:
        extra = {k: self.template(v) for k, v in (task.get("vars") or {}).items()}
        when = task.get("when", [])
        register = task.get("register")
        if not all(self.true(c, extra) for c in (when if isinstance(when, list) else [when])):
            if register:
                self.vars[register] = {"skipped": True, "changed": False}
            return
        self.ran.append(task["name"])
        if "block" in task:
            try:
                for sub in task["block"]:
                    self.task(sub)
            except Failed as exc:
                if "rescue" not in task:
                    raise
                self.vars["ansible_failed_result"] = exc.args[2]
                for sub in task["rescue"]:
                    self.task(sub)
            return
        if "ansible.builtin.fail" in task:
            msg = self.template(task["ansible.builtin.fail"]["msg"], extra)
            raise Failed(task["name"], msg, {"failed": True, "msg": msg})
        if "ansible.builtin.set_fact" in task:
            for key, value in task["ansible.builtin.set_fact"].items():
                self.vars[key] = self.template(value)
            return
        if register is None:
            raise AssertionError(f"the test gives no result for {task['name']!r}")
        result = dict(self.results[register])
        self.vars[register] = result
        if "failed_when" in task:
            result["failed"] = self.true(task["failed_when"])
        if result.get("failed"):
            raise Failed(task["name"], result.get("msg", ""), result)


def preflight(results: dict[str, dict], **kwargs: Any) -> tuple[Play, str | None]:
    """(the play, the failure message or None) of preflight-Debian.yml."""
    play = Play(results, **kwargs)
    try:
        play.run("preflight-Debian.yml")
    except Failed as exc:
        return play, " ".join(str(exc.args[1]).split())
    return play, None


def test_nothing_missing_runs_dpkg_query_only():
    play, msg = preflight(
        {"__kernel_headers_dpkg": dpkg(PACKAGE, "kmod", "dkms", "build-essential")}
    )
    assert msg is None
    assert play.ran == ["Find which of the packages are installed", "List the missing packages"]


def test_a_candidate_asks_apt_once():
    play, msg = preflight(
        {
            "__kernel_headers_dpkg": MISSING_ALL,
            "__kernel_headers_update": REFRESHED,
            "__kernel_headers_policy": FOUND,
        }
    )
    assert msg is None and play.template("{{ __kernel_headers_candidate }}") == "6.1.119-1"
    assert "__kernel_headers_apt_get_update" not in play.results
    assert not any("apt-get" in name for name in play.ran)


def test_pinned_headers_name_kernel_package_pin_and_fix():
    pin = "/etc/apt/preferences.d/no-headers"
    play, msg = preflight(
        {
            "__kernel_headers_dpkg": MISSING_ALL,
            "__kernel_headers_update": REFRESHED,
            "__kernel_headers_policy": PINNED,
            "__kernel_headers_apt_get_update": UPDATED,
            "__kernel_headers_policy_again": PINNED,
            "__kernel_headers_pins": {"rc": 0, "stdout_lines": [pin], "changed": False},
        }
    )
    assert msg == (
        f"The running kernel is {KERNEL}, and apt knows its headers package {PACKAGE} "
        "(6.1.119-1 with priority -1) but will not install it: a pin with a negative "
        f"Pin-Priority forbids it (in {pin}). DKMS cannot build modules for this kernel "
        f"without it. To fix it, remove that pin or give {PACKAGE} a positive Pin-Priority, "
        f"then re-run (apt-cache policy {PACKAGE} shows each version's priority)."
    )
    assert play.ran[-1] == "Fail when a pin forbids the running kernel's headers"


def test_a_pin_in_a_file_grep_cannot_name_still_says_where_pins_live():
    _play, msg = preflight(
        {
            "__kernel_headers_dpkg": MISSING_ALL,
            "__kernel_headers_update": REFRESHED,
            "__kernel_headers_policy": PINNED,
            "__kernel_headers_apt_get_update": UPDATED,
            "__kernel_headers_policy_again": PINNED,
            "__kernel_headers_pins": {"rc": 1, "stdout_lines": [], "changed": False},
        }
    )
    assert msg is not None
    assert "forbids it (in /etc/apt/preferences or /etc/apt/preferences.d/)" in msg


def test_unreachable_mirror_names_it_and_the_fix():
    play, msg = preflight(
        {
            "__kernel_headers_dpkg": MISSING_ALL,
            # lists younger than cache_valid_time: the apt module did nothing
            "__kernel_headers_update": {"changed": False, "cache_updated": False},
            "__kernel_headers_policy": UNKNOWN,
            "__kernel_headers_apt_get_update": UNREACHED,
            "__kernel_headers_policy_again": UNKNOWN,
        }
    )
    assert msg == (
        f"The running kernel is {KERNEL}, and apt has no candidate for its headers package "
        f"{PACKAGE}: apt could not reach http://127.0.0.1:9/debian ({REFUSED}), so it has "
        "no package lists from there. DKMS cannot build modules for this kernel without the "
        f"headers. To fix it, check that {HOST} reaches the mirror (network, DNS, an HTTP "
        "proxy: Acquire::http::Proxy in /etc/apt/apt.conf.d/) or correct the mirror in "
        "/etc/apt/sources.list or /etc/apt/sources.list.d/, then re-run."
    )
    assert play.ran[-1] == "Fail when apt could not reach a mirror that the headers would come from"


def test_a_failed_apt_module_refresh_is_explained_by_apt_get():
    failed = {"changed": False, "failed": True, "msg": "Failed to update apt cache: W:..."}
    broken = {
        "rc": 100,
        "changed": False,
        "stdout": "",
        "stderr": "E: Malformed entry 1 in list file /etc/apt/sources.list (Component)\n"
        "E: The list of sources could not be read.",
        "stderr_lines": [
            "E: Malformed entry 1 in list file /etc/apt/sources.list (Component)",
            "E: The list of sources could not be read.",
        ],
    }
    play, msg = preflight(
        {
            "__kernel_headers_dpkg": dpkg(PACKAGE, "kmod", "build-essential"),
            "__kernel_headers_update": failed,
            "__kernel_headers_apt_get_update": broken,
        }
    )
    assert msg == (
        f"apt-get update failed on {HOST} (rc 100): Malformed entry 1 in list file "
        "/etc/apt/sources.list (Component); The list of sources could not be read. Without "
        f"package lists apt cannot install dkms for the running kernel {KERNEL}. To fix it, "
        "correct the source named above in /etc/apt/sources.list or /etc/apt/sources.list.d/ "
        "(or, for a mirror it could not reach, the host's network or proxy), then re-run."
    )
    assert "Ask apt for a candidate of the running kernel's headers" not in play.ran


def test_fresh_lists_without_a_candidate_are_refreshed_before_failing():
    # e.g. the security suite was just added, as the message below advises
    play, msg = preflight(
        {
            "__kernel_headers_dpkg": MISSING_ALL,
            "__kernel_headers_update": {"changed": False, "cache_updated": False},
            "__kernel_headers_policy": UNKNOWN,
            "__kernel_headers_apt_get_update": UPDATED,
            "__kernel_headers_policy_again": FOUND,
        }
    )
    assert msg is None and play.template("{{ __kernel_headers_candidate }}") == "6.1.119-1"


def test_no_source_has_the_headers_keeps_the_security_suite_hint():
    _play, msg = preflight(
        {
            "__kernel_headers_dpkg": MISSING_ALL,
            "__kernel_headers_update": REFRESHED,
            "__kernel_headers_policy": UNKNOWN,
            "__kernel_headers_apt_get_update": UPDATED,
            "__kernel_headers_policy_again": UNKNOWN,
        }
    )
    assert msg is not None
    assert msg.startswith(
        f"The running kernel is {KERNEL}, and apt has no candidate for its headers package "
        f"{PACKAGE} (not in any configured source)."
    )
    assert "bookworm-security main" in msg


def test_check_mode_does_not_refresh_again():
    play, msg = preflight(
        {
            "__kernel_headers_dpkg": MISSING_ALL,
            "__kernel_headers_update": {"changed": True, "cache_updated": True},
            "__kernel_headers_policy": UNKNOWN,
        },
        check_mode=True,
    )
    assert msg is not None and "not in any configured source" in msg
    assert not any("apt-get" in name for name in play.ran)


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        (
            "E: Failed to fetch http://deb.debian.org/debian/pool/main/l/linux/"
            f"{PACKAGE}_6.1.119-1_amd64.deb  Temporary failure resolving 'deb.debian.org'\n"
            "E: Unable to fetch some archives, maybe run apt-get update or try with "
            "--fix-missing?",
            f"apt could not download {PACKAGE}, dkms for the running kernel {KERNEL}: it "
            "could not reach http://deb.debian.org/debian (Temporary failure resolving "
            f"'deb.debian.org'). To fix it, check that {HOST} reaches the mirror",
        ),
        ("E: Sub-process /usr/bin/dpkg returned an error code (1)", "apt said: dpkg broke"),
    ],
)
def test_a_download_that_fails_names_the_mirror(stderr: str, expected: str):
    play = Play({"__kernel_headers_apt_install": {}})
    play.vars["__kernel_headers_missing"] = [PACKAGE, "dkms"]
    install = _load(ROLE / "tasks/install-Debian.yml")
    install[0]["block"][0]["register"] = "__kernel_headers_apt_install"
    play.results["__kernel_headers_apt_install"] = {
        "failed": True,
        "msg": "apt said: dpkg broke" if "dpkg" in stderr else "'/usr/bin/apt-get' failed: ",
        "stderr": stderr,
    }
    with pytest.raises(Failed) as failure:
        play.task(install[0])
    msg = " ".join(str(failure.value.args[1]).split())
    assert msg.startswith(expected), msg
    assert failure.value.args[0] == (
        "Fail saying which mirror apt could not download from, or what apt said"
    )
