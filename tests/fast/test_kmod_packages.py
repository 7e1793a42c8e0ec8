"""Fast tier: kmodlab.lab.kmod_packages (the host side of the fleet rollout).

Two parts: the pure planner (``deb_plan``) fed plain data, and the module as shipped run
against real dpkg with tiny real .debs, in a private mount namespace (``unshare -m``) where
``/var/lib/dpkg``, ``/lib/modules`` and ``/var/log`` are scratch folders, and ``depmod`` is
a script on PATH that only logs its arguments. Nothing touches the machine's own packages.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_collections.kmodlab.lab.plugins.action.kmod_packages import PackageError, with_content
from ansible_collections.kmodlab.lab.plugins.module_utils.deb_plan import (
    Descriptor,
    Installed,
    PlanError,
    Snapshot,
    compare_versions,
    plan_commit,
    plan_present,
    plan_rollback,
)

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "plugins/modules/kmod_packages.py"
A1, A2, A3 = "6.1.0-99-amd64", "6.1.0-98-amd64", "6.1.0-97-amd64"
NOW = "2025-01-01T00:00:00Z"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def desc(module: str, version: str, abi: str, content: bool = True, **kw) -> Descriptor:
    package = f"kmodlab-{module}-modules-{abi}"
    return Descriptor(
        module=module,
        version=version,
        abi=abi,
        package=package,
        file=f"{package}_{version}_amd64.deb",
        sha256=kw.pop("sha256", sha(f"{module}{version}{abi}")),
        signer="lab",
        sig_key="AA:BB",
        has_content=content,
        **kw,
    )


def rec(name: str, state: str = "present", **kw) -> dict:
    return {"name": name, "kmod": name.replace("-", "_"), "version": "x", "state": state,
            "params": kw.pop("params", {}), "persist": True,
            "manifest": {"name": name, "depends": kw.pop("depends", [])}, **kw}  # fmt: skip


def entry(d: Descriptor, record: dict | None = None, abis: tuple[str, ...] = ()) -> dict:
    return {
        "version": d.version,
        "signer": d.signer,
        "sig_key": d.sig_key,
        "when": "earlier",
        "packages": {
            a: {
                "package": f"kmodlab-{d.module}-modules-{a}",
                "file": f"kmodlab-{d.module}-modules-{a}_{d.version}_amd64.deb",
                "sha256": sha(f"{d.module}{d.version}{a}"),
            }
            for a in (abis or (d.abi,))
        },
        "record": record if record is not None else rec(d.module),
    }


def installed(*ds: Descriptor) -> dict[str, Installed]:
    return {d.package: Installed(d.version) for d in ds}


def stored(*ds: Descriptor) -> dict[tuple[str, str], str]:
    return {(d.abi, d.file): d.sha256 for d in ds}


# -- the planner --------------------------------------------------------------------------


def test_present_installs_what_differs_and_skips_kernels_not_there():
    new = desc("hello-5", "1.1.0", A1)
    same = desc("chardev", "0.3", A1)
    other_content = desc("memory", "1.0", A1)
    elsewhere = desc("hello-5", "1.1.0", A3)
    good = {
        "chardev": entry(same),
        "memory": {**entry(other_content), "packages": {A1: {"sha256": "0" * 64}}},
    }
    snap = Snapshot(
        kernels=frozenset({A1}),
        dpkg=installed(same, other_content),
        store=stored(same),
        state={"good": good},
        now=NOW,
    )
    records = [rec("hello-5"), rec("chardev"), rec("memory")]
    plan = plan_present([new, same, other_content, elsewhere], records, snap)
    assert [i.package for i in plan.installs] == [new.package, other_content.package]
    assert [d.package for d in plan.writes] == [new.package, other_content.package]
    assert plan.skipped_abis == [A3] and plan.depmod == [A1] and not plan.purges
    pending = plan.state["pending"]
    # chardev is good as given: not pending; the others are, with their records.
    assert set(pending) == {"hello-5", "memory"}
    assert pending["hello-5"]["packages"] == {
        A1: {"package": new.package, "file": new.file, "sha256": new.sha256}
    }
    assert pending["hello-5"]["record"]["name"] == "hello-5" and pending["hello-5"]["when"] == NOW
    assert plan.state["good"] == good
    assert plan.state["history"][-1] == {
        "when": NOW,
        "action": "install",
        "modules": {"hello-5": "1.1.0", "memory": "1.0"},
    }


def test_present_converged_changes_nothing():
    d = desc("hello-5", "1.1.0", A1)
    state = {"schema": 1, "good": {"hello-5": entry(d)}, "pending": None, "history": []}
    snap = Snapshot(frozenset({A1}), installed(d), stored(d), state, NOW)
    plan = plan_present([d], [rec("hello-5")], snap)
    assert not plan.touches_packages and not plan.writes and not plan.depmod
    assert plan.state == state


def test_present_without_content_needs_the_store():
    d = desc("hello-5", "1.1.0", A1, content=False)
    snap = Snapshot(frozenset({A1}), {}, {}, {}, NOW)
    with pytest.raises(PlanError, match="no content given"):
        plan_present([d], [], snap)
    plan = plan_present([d], [], Snapshot(frozenset({A1}), {}, stored(d), {}, NOW))
    assert not plan.writes and [i.package for i in plan.installs] == [d.package]


def test_present_multi_abi_dependencies_first_one_depmod_per_kernel():
    user1 = desc("symuse", "2.0", A1, depends=(f"kmodlab-symexport-modules-{A1}",))
    user2 = desc("symuse", "2.0", A2, depends=(f"kmodlab-symexport-modules-{A2}",))
    exp1, exp2 = desc("symexport", "2.0", A1), desc("symexport", "2.0", A2)
    snap = Snapshot(frozenset({A1, A2}), {}, {}, {}, NOW)
    plan = plan_present([user1, user2, exp1, exp2], [rec("symexport"), rec("symuse")], snap)
    assert [i.package for i in plan.installs] == [exp1.package, user1.package, exp2.package,
                                                  user2.package]  # fmt: skip
    assert plan.depmod == [A1, A2]
    assert set(plan.state["pending"]["symuse"]["packages"]) == {A1, A2}


def test_present_absent_record_purges_every_kernel_and_commit_drops_it():
    d1, d2 = desc("hello-5", "1.0", A1), desc("hello-5", "1.0", A2)
    keep = desc("chardev", "0.3", A1)
    state = {"good": {"hello-5": entry(d1, abis=(A1, A2)), "chardev": entry(keep)}}
    snap = Snapshot(frozenset({A1}), installed(d1, d2, keep), stored(d1, d2, keep), state, NOW)
    plan = plan_present([], [rec("hello-5", "absent")], snap)
    assert [(p.package, p.abi) for p in plan.purges] == [(d2.package, A2), (d1.package, A1)]
    assert plan.depmod == [A1]  # A2's kernel is gone: no depmod for it
    assert plan.state["pending"]["hello-5"]["version"] is None
    committed = plan_commit(Snapshot(state=plan.state, store=stored(d1, d2, keep), now=NOW), 0)
    assert set(committed.state["good"]) == {"chardev"} and committed.state["pending"] is None
    assert sorted(committed.prune) == sorted([(A1, d1.file), (A2, d2.file)])


def test_present_refuses_bad_names():
    bad = Descriptor("hello-5", "1.0", A1, "kmodlab-other-modules-" + A1, "x.deb", "0" * 64)
    with pytest.raises(PlanError, match="package name must be"):
        plan_present([bad], [], Snapshot())
    with pytest.raises(PlanError, match="two versions"):
        plan_present([desc("a", "1", A1), desc("a", "2", A2)], [], Snapshot())
    with pytest.raises(PlanError, match="says absent"):
        plan_present([desc("a", "1", A1)], [rec("a", "absent")], Snapshot())


def test_commit_merges_pending_over_good_and_prunes_old_versions():
    old = [desc("hello-5", v, A1) for v in ("0.9", "1.0", "1.0.1~rc1", "1.1")]
    chardev = desc("chardev", "0.3", A1)
    state = {
        "good": {"hello-5": entry(old[1]), "chardev": entry(chardev)},
        "pending": {"hello-5": entry(old[3])},
        "history": [],
    }
    snap = Snapshot(store=stored(*old, chardev), state=state, now=NOW)
    plan = plan_commit(snap, keep=1)
    assert plan.state["good"]["hello-5"]["version"] == "1.1"
    assert plan.state["good"]["chardev"] == entry(chardev)
    assert plan.state["pending"] is None
    assert plan.state["history"] == [
        {"when": NOW, "action": "commit", "modules": {"hello-5": "1.1"}}
    ]
    # Good: 1.1 and chardev; of the others the newest (1.0.1~rc1 > 1.0 > 0.9) stays.
    assert sorted(plan.prune) == [(A1, old[0].file), (A1, old[1].file)]
    again = plan_commit(Snapshot(store=stored(old[2], old[3], chardev), state=plan.state))
    assert again.state == plan.state and not again.prune


def test_rollback_to_good_and_drop_modules_without_one():
    v1, v2 = desc("hello-5", "1.0", A1), desc("hello-5", "1.1", A1)
    new = desc("symexport", "1.0", A1)
    gone_abi = desc("hello-5", "1.1", A2)
    good_rec = rec("hello-5", params={"myint": 1})
    state = {
        "good": {"hello-5": entry(v1, good_rec)},
        "pending": {"hello-5": entry(v2, abis=(A1, A2)), "symexport": entry(new)},
    }
    snap = Snapshot(
        frozenset({A1, A2}), installed(v2, new, gone_abi), stored(v1, v2, new), state, NOW
    )
    plan = plan_rollback(snap)
    assert [(i.package, i.version, i.file) for i in plan.installs] == [(v1.package, "1.0", v1.file)]
    assert sorted(p.package for p in plan.purges) == [gone_abi.package, new.package]
    assert plan.depmod == [A1, A2]
    assert plan.state["pending"] is None and plan.state["good"] == state["good"]
    assert plan.state["history"][-1]["modules"] == {"hello-5": "1.0", "symexport": None}
    assert plan.records[0] == good_rec
    assert plan.records[1] == {
        "name": "symexport",
        "kmod": "symexport",
        "version": "x",
        "state": "absent",
        "params": {},
        "persist": True,
        "manifest": {"name": "symexport", "depends": []},
    }


def test_rollback_without_pending_or_without_the_file():
    d = desc("hello-5", "1.0", A1)
    state = {"schema": 1, "good": {"hello-5": entry(d)}, "pending": None, "history": []}
    plan = plan_rollback(Snapshot(frozenset({A1}), installed(d), stored(d), state, NOW))
    assert not plan.touches_packages and plan.state == state
    pending = {**state, "pending": {"hello-5": entry(desc("hello-5", "2.0", A1))}}
    with pytest.raises(PlanError, match="store has no"):
        plan_rollback(Snapshot(frozenset({A1}), {}, {}, pending, NOW))


def test_rollback_records_in_load_order():
    user, exp = desc("symuse", "1", A1), desc("symexport", "1", A1)
    good = {
        "symuse": entry(user, rec("symuse", depends=["symexport"])),
        "symexport": entry(exp, rec("symexport")),
    }
    plan = plan_rollback(Snapshot(state={"good": good, "pending": {}}))
    assert [r["name"] for r in plan.records] == ["symexport", "symuse"]


@pytest.mark.parametrize(
    ("a", "b", "sign"),
    [("1.0", "1.0", 0), ("1.0~rc1", "1.0", -1), ("1.10", "1.9", 1), ("1.0-2", "1.0-10", -1),
     ("1.0a", "1.0+", -1), ("2", "1:1", -1), ("1.0", "1.0.0", -1)],
)  # fmt: skip
def test_debian_version_order(a, b, sign):
    got = compare_versions(a, b)
    assert (got > 0) - (got < 0) == sign


def test_action_reads_checks_and_drops_the_path(tmp_path):
    deb = tmp_path / "p.deb"
    deb.write_bytes(b"deb")
    spec = {"package": "p", "path": str(deb), "sha256": hashlib.sha256(b"deb").hexdigest()}
    out = with_content(spec)
    assert "path" not in out and base64.b64decode(out["content"]) == b"deb"
    with pytest.raises(PackageError, match="the descriptor says"):
        with_content({**spec, "sha256": "0" * 64})
    with pytest.raises(PackageError, match="cannot read"):
        with_content({**spec, "path": str(tmp_path / "nope.deb")})


# -- the module against real dpkg ---------------------------------------------------------


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mount namespaces, dpkg)"
    for tool in ("unshare", "dpkg", "dpkg-deb"):
        if not shutil.which(tool):
            return f"needs {tool}"
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"unshare -m does not work here: {probe.stderr.strip()}"
    return None


needs_dpkg = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))

POSTINST = """#!/bin/sh
set -e
if [ "$1" = configure ] && [ -z "$KMODLAB_DEFER_DEPMOD" ] \\
        && [ -e /lib/modules/{abi}/modules.order ]; then
    depmod -a {abi}
fi
{extra}
"""
POSTRM = """#!/bin/sh
set -e
case "$1" in remove|purge)
    if [ -z "$KMODLAB_DEFER_DEPMOD" ] && [ -e /lib/modules/{abi}/modules.order ]; then
        depmod -a {abi}
    fi;;
esac
"""


class Host:
    """Scratch dpkg database and /lib/modules; runs the module in a namespace over them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.admin = root / "dpkg"
        self.lib_modules = root / "modules"
        self.log = root / "log"
        self.bin = root / "bin"
        self.store = root / "store"
        self.fact = root / "facts.d/kmodlab_rollout.fact"
        self.debs = root / "debs"
        self.dkms = root / "dkms"  # DKMS's tree (/var/lib/dkms) in the namespace
        dirs = (
            self.admin / "info",
            self.admin / "updates",
            self.log,
            self.bin,
            self.debs,
            self.dkms,
        )
        for d in dirs:
            d.mkdir(parents=True)
        (self.admin / "available").write_text("")
        # A1: dpkg has its kernel package; A2: only its modules folder; A3: not there.
        (self.admin / "status").write_text(
            f"Package: linux-image-{A1}\nStatus: install ok installed\nPriority: optional\n"
            "Section: kernel\nMaintainer: x <x@localhost>\nArchitecture: amd64\n"
            f"Version: 6.1.76-1\nDescription: pretend kernel\n\n"
            f"Package: linux-image-{A2}\nStatus: install ok installed\nPriority: optional\n"
            "Section: kernel\nMaintainer: x <x@localhost>\nArchitecture: amd64\n"
            f"Version: 6.1.75-1\nDescription: pretend kernel\n\n"
        )
        for abi in (A1, A2):
            (self.admin / f"info/linux-image-{abi}.list").write_text("")
        (self.lib_modules / A1).mkdir(parents=True)
        (self.lib_modules / A2).mkdir(parents=True)
        (self.lib_modules / A2 / "modules.order").write_text("")
        depmod = self.bin / "depmod"
        depmod.write_text(f'#!/bin/sh\necho "$*" >> {root}/depmod.log\n')
        depmod.chmod(0o755)

    def deb(self, module: str, version: str, abi: str, depends: tuple[str, ...] = (),
            fail: bool = False) -> dict:  # fmt: skip
        package = f"kmodlab-{module}-modules-{abi}"
        kmod = module.replace("-", "_")
        tree = self.root / "build" / f"{package}-{version}"
        ko = tree / f"lib/modules/{abi}/updates/kmodlab/{kmod}.ko"
        ko.parent.mkdir(parents=True)
        ko.write_text(f"{module} {version}\n")
        (tree / "DEBIAN").mkdir()
        deps = [f"linux-image-{abi} | linux-image-{abi}-unsigned"]
        deps += [f"{d} (= {version})" for d in depends]
        (tree / "DEBIAN/control").write_text(
            f"Package: {package}\nVersion: {version}\nArchitecture: amd64\n"
            "Maintainer: kmodlab <kmodlab@localhost>\nSection: kernel\nPriority: optional\n"
            f"Depends: {', '.join(deps)}\nDescription: test module {module}\n"
            f" kmodlab build of {module} {version} for Linux {abi}\n"
        )
        for name, text in (
            ("postinst", POSTINST.format(abi=abi, extra="exit 1" if fail else "")),
            ("postrm", POSTRM.format(abi=abi)),
        ):
            (tree / "DEBIAN" / name).write_text(text)
            (tree / "DEBIAN" / name).chmod(0o755)
        file = f"{package}_{version}_amd64.deb"
        out = self.debs / file
        env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
        subprocess.run(
            ["dpkg-deb", "--build", "--root-owner-group", "-Zxz", str(tree), str(out)],
            check=True, capture_output=True, env=env,
        )  # fmt: skip
        return {
            "module": module, "kmod": kmod, "version": version, "abi": abi,
            "package": package, "file": file, "path": str(out),
            "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
            "depends": list(depends), "signer": "lab", "sig_key": "AA:BB",
            "cache_key": "c", "compiled": True,
        }  # fmt: skip

    def run(self, check: bool = False, **args) -> dict:
        args.setdefault("store", str(self.store))
        args.setdefault("fact_path", str(self.fact))
        args["packages"] = [with_content(p) for p in args.get("packages", [])]
        argfile = self.root / "args.json"
        argfile.write_text(
            json.dumps({"ANSIBLE_MODULE_ARGS": {**args, "_ansible_check_mode": check}})
        )
        script = (
            f"mount --bind {self.admin} /var/lib/dpkg && "
            f"mount --bind {self.lib_modules} /lib/modules && "
            f"mount --bind {self.log} /var/log && "
            f'mount --bind {self.dkms} /var/lib/dkms && exec "$@"'
        )
        env = {**os.environ, "PATH": f"{self.bin}:{os.environ['PATH']}"}
        proc = subprocess.run(
            ["unshare", "-m", "sh", "-c", script, "sh", sys.executable, str(MODULE), str(argfile)],
            capture_output=True, text=True, env=env, check=False, timeout=300,
        )  # fmt: skip
        try:
            return json.loads(proc.stdout)
        except ValueError:
            raise AssertionError(f"rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}") from None

    def packages(self) -> dict[str, str]:
        out = subprocess.run(
            ["dpkg-query", f"--admindir={self.admin}", "-W", "-f=${Package} ${Version} "
             "${db:Status-Abbrev}\n", "kmodlab-*"],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        return {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines()}

    def depmods(self) -> list[str]:
        log = self.root / "depmod.log"
        lines = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return lines

    def fact_json(self) -> dict:
        return json.loads(self.fact.read_text())


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def pkg(module: str, abi: str) -> str:
    return f"kmodlab-{module}-modules-{abi}"


@needs_dpkg
def test_install_skip_and_rerun(host: Host):
    exp = [host.deb("symexport", "1.0", a) for a in (A1, A2, A3)]
    use = [host.deb("symuse", "1.0", a, depends=(pkg("symexport", a),)) for a in (A1, A2, A3)]
    records = [rec("symexport"), rec("symuse", depends=["symexport"])]
    check = host.run(check=True, packages=use + exp, records=records)
    assert check["changed"] is True and len(check["installed"]) == 4
    assert not host.store.exists() and not host.fact.exists() and host.packages() == {}
    res = host.run(packages=use + exp, records=records)
    assert res["changed"] is True, res
    assert [i["package"] for i in res["installed"]] == [
        pkg("symexport", A1),
        pkg("symuse", A1),
        pkg("symexport", A2),
        pkg("symuse", A2),
    ]
    assert res["skipped_abis"] == [A3] and res["depmod"] == [A1, A2]
    assert host.depmods() == [f"-a {A1}", f"-a {A2}"]  # once per kernel, none from postinst
    assert host.packages() == {
        pkg(m, a): "1.0 ii" for m in ("symexport", "symuse") for a in (A1, A2)
    }
    assert (host.lib_modules / A2 / "updates/kmodlab/symuse.ko").read_text() == "symuse 1.0\n"
    stored = host.store / A1 / exp[0]["file"]
    assert stored.read_bytes() == Path(exp[0]["path"]).read_bytes()
    assert oct(stored.stat().st_mode & 0o777) == "0o644"
    assert not (host.store / A3).exists()
    fact = host.fact_json()
    assert fact == res["rollout"] and fact["good"] == {}
    assert set(fact["pending"]["symuse"]["packages"]) == {A1, A2}
    assert fact["pending"]["symuse"]["record"]["name"] == "symuse"
    again = host.run(packages=use + exp, records=records)
    assert again["changed"] is False and again["installed"] == [] and again["depmod"] == []
    assert again["state_changed"] is False and host.depmods() == []
    assert host.fact_json() == fact
    # The machine's own dpkg database never saw the packages.
    real = subprocess.run(["dpkg-query", "-W", "kmodlab-*"], capture_output=True, check=False)
    assert b"kmodlab-symuse" not in real.stdout


@needs_dpkg
def test_a_module_dkms_has_is_refused_before_anything_changes(host: Host):
    """One copy per module: where DKMS has hello-5, its package is not installed beside it;
    a module DKMS does not have is installed as usual."""
    (host.dkms / "hello-5/1.0/source").mkdir(parents=True)
    hello = host.deb("hello-5", "1.0", A1)
    for check in (True, False):
        res = host.run(check=check, packages=[hello], records=[rec("hello-5")])
        assert res.get("failed") is True, res
        assert res["msg"].startswith("hello-5: DKMS already has this module"), res["msg"]
        assert "(hello-5: /var/lib/dkms/hello-5)" in res["msg"]
        assert "kmodlab_delivery: dkms" in res["msg"] and "Nothing was changed" in res["msg"]
        assert host.packages() == {} and not host.store.exists() and not host.fact.exists()
        assert host.depmods() == []
    other = host.deb("memory", "1.0", A1)
    res = host.run(packages=[other], records=[rec("memory")])
    assert res["changed"] is True and host.packages() == {pkg("memory", A1): "1.0 ii"}


@needs_dpkg
def test_upgrade_commit_prune_then_rollback(host: Host):
    v = {ver: host.deb("hello-5", ver, A1) for ver in ("1.0", "1.1", "1.2")}
    extra = host.deb("chardev", "0.3", A1)
    old_rec = rec("hello-5", params={"myint": 1})
    assert host.run(packages=[v["1.0"]], records=[old_rec])["changed"]
    assert host.run(state="commit")["changed"] is True
    assert host.run(state="commit")["changed"] is False
    host.run(packages=[v["1.1"]], records=[rec("hello-5")])
    host.run(state="commit")
    res = host.run(packages=[v["1.2"], extra], records=[rec("hello-5"), rec("chardev")])
    assert host.packages() == {pkg("hello-5", A1): "1.2 ii", pkg("chardev", A1): "0.3 ii"}
    host.depmods()
    # The gate failed: 1.1 (good) back, chardev (never good) purged.
    back = host.run(state="rollback")
    assert back["changed"] is True, back
    assert back["installed"] == [{"package": pkg("hello-5", A1), "version": "1.1", "abi": A1}]
    assert [r["package"] for r in back["removed"]] == [pkg("chardev", A1)]
    assert host.packages() == {pkg("hello-5", A1): "1.1 ii"}
    assert host.depmods() == [f"-a {A1}"]
    assert [(r["name"], r["state"]) for r in back["records"]] == [
        ("hello-5", "present"),
        ("chardev", "absent"),
    ]
    assert back["rollout"]["pending"] is None and res["rollout"]["pending"]
    assert host.run(state="rollback")["changed"] is False
    # Commit pruned 1.0 once 1.1 was good (keep=1 kept it while 1.0 was the only other).
    host.run(packages=[v["1.2"]], records=[rec("hello-5")])
    pruned = host.run(state="commit", keep=0)
    assert sorted(pruned["pruned"]) == sorted(
        f"{A1}/{f}" for f in (v["1.0"]["file"], v["1.1"]["file"], extra["file"])
    )
    assert sorted(p.name for p in (host.store / A1).iterdir()) == [v["1.2"]["file"]]


@needs_dpkg
def test_a_failing_batch_puts_the_host_back(host: Host):
    good = host.deb("hello-5", "1.0", A1)
    host.run(packages=[good], records=[rec("hello-5")])
    host.run(state="commit")
    before = host.fact_json()
    newer = host.deb("hello-5", "1.1", A1)
    bad = host.deb("broken", "1.0", A1, fail=True)
    res = host.run(packages=[newer, bad], records=[rec("hello-5"), rec("broken")])
    assert res.get("failed") is True, res
    assert pkg("broken", A1) in res["msg"] and "post-installation script" in res["msg"]
    assert res["restored"] is True and "packages it had" in res["msg"]
    assert host.packages() == {pkg("hello-5", A1): "1.0 ii"}
    assert (host.lib_modules / A1 / "updates/kmodlab/hello_5.ko").read_text() == "hello-5 1.0\n"
    assert host.fact_json() == before


@needs_dpkg
def test_absent_record_purges(host: Host):
    debs = [host.deb("memory", "1.0", a) for a in (A1, A2)]
    host.run(packages=debs, records=[rec("memory")])
    host.run(state="commit")
    host.depmods()
    res = host.run(records=[rec("memory", "absent")])
    assert res["changed"] is True and len(res["removed"]) == 2
    assert host.packages() == {} and sorted(host.depmods()) == sorted([f"-a {A1}", f"-a {A2}"])
    assert host.fact_json()["pending"]["memory"]["version"] is None
    assert host.run(state="commit")["rollout"]["good"] == {}
