"""Fast tier: what the fleet builds (ABI grouping), what each host gets, fleet.yml's
batches (computed by Ansible itself from the play), and the rollout summary callback."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from kmodlab.fleet import plan

REPO = Path(__file__).resolve().parents[2]


def rec(name: str, version: str = "1.0.0", state: str = "present", depends=()) -> dict:
    return {
        "name": name,
        "kmod": name.replace("-", "_"),
        "version": version,
        "state": state,
        "params": {},
        "manifest": {"depends": list(depends)},
    }


def test_one_build_per_module_and_abi_whatever_the_host_count() -> None:
    hosts = {
        f"h{i}": plan.HostInput(
            kernel=k, records=[rec("symuse", depends=["symexport"]), rec("symexport")]
        )
        for i, k in enumerate(["6.1.0-57-amd64"] * 5 + ["6.1.0-50-amd64"])
    }
    work = plan.group(hosts, ["6.1.0-58-amd64"])
    assert work.abis == ["6.1.0-57-amd64", "6.1.0-50-amd64", "6.1.0-58-amd64"]
    assert [r["name"] for r in work.records] == ["symexport", "symuse"]  # dependencies first


def test_absent_modules_are_not_built_and_unreachable_hosts_add_no_abi() -> None:
    hosts = {
        "a": plan.HostInput(kernel="6.1.0-57-amd64", records=[rec("memory", state="absent")]),
        "b": plan.HostInput(kernel=None, records=[rec("hello-5", state="config")]),
    }
    work = plan.group(hosts)
    assert work.abis == ["6.1.0-57-amd64"]
    assert [r["name"] for r in work.records] == ["hello-5"]


def test_two_versions_of_one_module_are_refused() -> None:
    hosts = {
        "a": plan.HostInput(kernel="6.1.0-57-amd64", records=[rec("memory", "1.0.0")]),
        "b": plan.HostInput(kernel="6.1.0-57-amd64", records=[rec("memory", "1.1.0")]),
    }
    with pytest.raises(plan.PlanError, match=r"versions 1\.0\.0 and 1\.1\.0"):
        plan.group(hosts)


@pytest.mark.parametrize("bad", ["6.1", "linux-headers-6.1.0-57-amd64", "6.1.0-57-amd64; rm", ""])
def test_target_kernels_must_be_abis(bad: str) -> None:
    with pytest.raises(plan.PlanError, match="not a kernel ABI"):
        plan.check_kernels([bad])


def test_target_kernels_accept_image_package_names_once() -> None:
    assert plan.check_kernels(["linux-image-6.1.0-57-amd64", "6.1.0-57-amd64"]) == [
        "6.1.0-57-amd64"
    ]


def test_each_host_gets_its_modules_for_its_kernel_and_the_targets() -> None:
    hosts = {
        "old": plan.HostInput(kernel="6.1.0-50-amd64", records=[rec("memory"), rec("hello-5")]),
        "new": plan.HostInput(kernel="6.1.0-57-amd64", records=[rec("memory")]),
    }
    work = plan.group(hosts, ["6.1.0-57-amd64"])

    def pkg(module: str, abi: str) -> dict:
        return {"module": module, "abi": abi, "package": f"kmodlab-{module}-modules-{abi}"}

    packages = {
        abi: [pkg(m, abi) for m in ("hello-5", "memory")]
        for abi in ("6.1.0-50-amd64", "6.1.0-57-amd64")
    }
    per_host = plan.packages_per_host(work, packages)
    assert per_host["old"]["abis"] == ["6.1.0-50-amd64", "6.1.0-57-amd64"]
    assert {(p["module"], p["abi"]) for p in per_host["old"]["packages"]} == {
        (m, a) for m in ("hello-5", "memory") for a in ("6.1.0-50-amd64", "6.1.0-57-amd64")
    }
    assert per_host["new"]["abis"] == ["6.1.0-57-amd64"]
    assert [p["module"] for p in per_host["new"]["packages"]] == ["memory"]


def _batches(serial: object, count: int) -> list[int]:
    """The batch sizes Ansible itself computes for a play with ``serial`` and ``count`` hosts."""
    from ansible.executor.playbook_executor import PlaybookExecutor

    hosts = [f"h{i}" for i in range(count)]
    play = SimpleNamespace(serial=serial, hosts="all", order="inventory")
    inventory = SimpleNamespace(get_hosts=lambda *a, **k: list(hosts))
    executor = PlaybookExecutor.__new__(PlaybookExecutor)
    executor._inventory = inventory
    return [len(b) for b in executor._get_serialized_batches(play)]


def test_fleet_batches_are_a_canary_then_a_quarter_then_the_rest() -> None:
    plays = yaml.safe_load((REPO / "playbooks/fleet.yml").read_text())
    rollout = next(p for p in plays if "serial" in p)
    assert rollout["max_fail_percentage"] == 0
    default = yaml.safe_load(rollout["serial"].split("default(", 1)[1].rsplit(")", 1)[0])
    assert default == [1, "25%", "100%"]
    assert _batches(default, 3) == [1, 1, 1]
    assert _batches(default, 4) == [1, 1, 2]
    assert _batches(default, 20) == [1, 5, 14]


def test_the_summary_says_who_runs_what() -> None:
    from ansible_collections.kmodlab.lab.plugins.callback.fleet_summary import (
        HostTrack,
        summary_lines,
    )

    entry = {"version": "1.1.0", "signer": "kmodlab lab", "when": "2026-12-02T01:00:00Z"}
    done = HostTrack("a")
    done.kernel = "6.1.0-57-amd64"
    done.phases = ["present", "commit"]
    done.rollout = {"good": {"memory": entry}, "pending": None}
    back = HostTrack("b")
    back.phases = ["present", "rollback"]
    back.failure = "Health gate: kmod_verify: 1 failed: b memory test_modinfo"
    back.rollout = {"good": {"memory": {**entry, "version": "1.0.0"}}, "pending": None}
    gone = HostTrack("c")
    gone.unreachable = "unreachable: ssh timed out"
    left = HostTrack("d")
    left.before = {"memory": {**entry, "version": "1.0.0"}}
    rows = [t.row() for t in (done, back, gone, left)]
    assert [r["state"] for r in rows] == ["rolled out", "rolled back", "unreachable", "untouched"]
    assert rows[0]["modules"] == {"memory": "1.1.0"}
    assert rows[1]["modules"] == {"memory": "1.0.0"} and "test_modinfo" in rows[1]["reason"]
    assert rows[3]["modules"] == {"memory": "1.0.0"}
    text = "\n".join(summary_lines(rows))
    assert "a: rolled out, 6.1.0-57-amd64: memory 1.1.0" in text
    assert "why: unreachable: ssh timed out" in text
