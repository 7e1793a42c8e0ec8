"""Fast tier: the DKMS planner (module_utils/dkms_plan.py) on plain data.

No fake dkms, no scratch folders: a ``Snapshot`` is built from entries as
``dkms_tree.read_tree`` returns them, and the test checks the typed steps ``plan`` gives.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from ansible_collections.kmodlab.lab.plugins.module_utils.dkms_plan import (
    Add,
    Build,
    DeleteSource,
    Depmod,
    Install,
    Note,
    Package,
    PlanError,
    RecordDigest,
    RemoveVersion,
    Snapshot,
    Sources,
    Uninstall,
    WriteSources,
    dependency_order,
    missing_headers,
    plan,
    predict_entries,
    prunable,
    status_over,
    validate,
)

plan_mod = importlib.import_module("ansible_collections.kmodlab.lab.plugins.module_utils.dkms_plan")
tree = importlib.import_module("ansible_collections.kmodlab.lab.plugins.module_utils.dkms_tree")

K = "6.1.0-56-amd64"
K2 = "6.1.0-99-amd64"
A = "x86_64"
SRC = "/usr/src"
DIGEST = "d" * 64


def entry(name, version, kernel=None, status="added", diff=False, missing=False):
    """An entry exactly as the tree reader returns it."""
    return tree.entry(name, version, kernel, A if kernel else None, status, diff, missing)


def package(name="hello", version="1.0", **kw):
    return Package.from_params({"name": name, "version": version, **kw}, SRC)


def snap(*entries, headers=(K, K2), **sources):
    return Snapshot(
        entries=list(entries),
        sources={k.replace("_", "-"): v for k, v in sources.items()},
        headers=frozenset(headers),
        source_root=SRC,
        arch=A,
    )


def kinds(steps):
    return [type(s).__name__ for s in steps]


def labels(steps, several=False):
    return [label for s in steps if (label := s.label(several))]


def converged(version="1.0", kernel=K):
    """A package installed for ``kernel`` with its digest recorded and sources unchanged."""
    return entry("hello", version, kernel, "installed"), Sources(
        digest=DIGEST,
        recorded={kernel: DIGEST},
        folders=frozenset({version}),
        paths=frozenset({version}),
    )


# -- install stage --------------------------------------------------------------------------


def test_a_new_package_is_written_added_built_installed_then_depmod():
    steps = plan([package()], snap(hello=Sources(changed=("Kbuild", "hello.c"))), [K])
    assert kinds(steps) == ["WriteSources", "Add", "Build", "Install", "Depmod"]
    assert steps[0] == WriteSources(
        package="hello", files=("Kbuild", "hello.c"), reason=steps[0].reason
    )
    build, install = steps[2], steps[3]
    assert (build.version, build.kernel) == ("1.0", K)
    assert install.force_version is False
    assert steps[-1] == Depmod(package="", kernel=K, reason=steps[-1].reason)
    assert labels(steps[:-1]) == ["sources", "add", "build", "install"]


def test_a_converged_package_needs_nothing():
    installed, sources = converged()
    assert plan([package()], snap(installed, hello=sources), [K]) == []


def test_partial_states():
    added = entry("hello", "1.0")
    built = entry("hello", "1.0", K, "built")
    src = Sources(digest=DIGEST, recorded={K: DIGEST})
    assert kinds(plan([package()], snap(added, hello=src), [K])) == ["Build", "Install", "Depmod"]
    assert kinds(plan([package()], snap(built, hello=src), [K])) == ["Install", "Depmod"]


def test_installed_for_another_kernel_only_is_built_for_this_one():
    steps = plan([package()], snap(entry("hello", "1.0", K2, "installed")), [K])
    assert kinds(steps) == ["Build", "Install", "Depmod"]


@pytest.mark.parametrize(
    ("sources", "extra", "reason"),
    [
        (
            Sources(changed=("hello.c",), digest=DIGEST, recorded={K: DIGEST}),
            {},
            "its sources changed",
        ),
        (
            Sources(digest="e" * 64, recorded={K: DIGEST}),
            {},
            "its sources changed since it was built",
        ),
        (Sources(digest=DIGEST, recorded={K: DIGEST}), {"missing": True}, "built modules missing"),
    ],
)
def test_reasons_to_rebuild_the_same_version(sources, extra, reason):
    steps = plan(
        [package()], snap(entry("hello", "1.0", K, "installed", **extra), hello=sources), [K]
    )
    removal = next(s for s in steps if isinstance(s, RemoveVersion))
    assert removal.rebuild and reason in removal.reason and removal.installed_on == (K,)
    assert [s for s in labels(steps) if not s.startswith("depmod")][-4:] == [
        "remove 1.0",
        "add",
        "build",
        "install",
    ]
    assert reason in next(s for s in steps if isinstance(s, Build)).reason


def test_a_broken_version_is_added_and_built_again():
    steps = plan([package()], snap(entry("hello", "1.0", status="broken")), [K])
    assert kinds(steps) == ["RemoveVersion", "Add", "Build", "Install", "Depmod"]
    assert steps[0].reason == "its source folder is gone"


def test_a_build_made_elsewhere_is_adopted_not_rebuilt():
    src = Sources(digest=DIGEST, recorded={K: None})
    steps = plan([package()], snap(entry("hello", "1.0", K, "installed"), hello=src), [K])
    assert steps == [RecordDigest(package="hello", version="1.0", kernel=K)]
    assert labels(steps) == []


def test_missing_sources_never_tear_down_a_working_module():
    steps = plan([package()], snap(entry("hello", "1.0", K, "installed"), hello=Sources()), [K])
    assert kinds(steps) == ["Note"]
    assert steps[0].reason == f"{SRC}/hello-1.0 is missing; hello 1.0 stays as it is"


def test_an_installed_copy_that_differs_is_reinstalled():
    installed, sources = converged()
    installed["diff"] = True
    steps = plan([package()], snap(installed, hello=sources), [K])
    assert kinds(steps) == ["Uninstall", "Install", "Depmod"]
    assert steps[0] == Uninstall(package="hello", version="1.0", kernel=K, reason=steps[0].reason)


def test_a_new_version_is_installed_over_the_old_one_which_stays():
    old = converged("1.0")[0]
    steps = plan([package(version="2.0")], snap(old, hello=Sources(changed=("hello.c",))), [K])
    assert kinds(steps) == ["WriteSources", "Add", "Build", "Install", "Depmod"]
    assert steps[3].force_version is True  # another version is registered
    assert not any(isinstance(s, (RemoveVersion, DeleteSource)) for s in steps)


def test_absent_removes_every_version_and_existing_source_folders():
    entries = [
        entry("hello", "0.9", K2, "built"),
        entry("hello", "1.0", K, "installed"),
        entry("hello-extra", "1.0", K, "installed"),
    ]
    src = Sources(folders=frozenset({"0.8", "1.0"}), paths=frozenset({"0.8", "1.0", "1.1"}))
    steps = plan([package(version="1.1", state="absent")], snap(*entries, hello=src), [K])
    assert labels(steps) == [
        "remove 0.9",
        "remove 1.0",
        f"delete {SRC}/hello-0.8",
        f"delete {SRC}/hello-1.0",
        f"delete {SRC}/hello-1.1",
        f"depmod {K}",  # 1.0 was installed there
    ]
    assert steps[1].installed_on == (K,) and steps[0].installed_on == ()


def test_nothing_to_remove_for_an_absent_package():
    assert plan([package(state="absent")], snap(), [K]) == []


# -- prune stage ----------------------------------------------------------------------------


def test_prune_removes_other_versions_and_stale_folders_once_the_wanted_one_is_installed():
    entries = [entry("hello", "1.0", K, "built"), entry("hello", "2.0", K, "installed")]
    src = Sources(folders=frozenset({"1.0", "1.5", "2.0"}))
    steps = plan([package(version="2.0")], snap(*entries, hello=src), [K], "prune")
    assert labels(steps) == ["remove 1.0", f"delete {SRC}/hello-1.0", f"delete {SRC}/hello-1.5"]
    assert steps[0].rebuild is False and steps[0].installed_on == ()


def test_prune_of_an_installed_old_version_needs_a_depmod_there():
    entries = [
        entry("hello", "1.0", K2, "installed"),  # another kernel, not in the call
        entry("hello", "2.0", K, "installed"),
    ]
    steps = plan([package(version="2.0")], snap(*entries), [K], "prune")
    assert labels(steps) == ["remove 1.0", f"depmod {K2}"]


@pytest.mark.parametrize(
    "wanted",
    [
        [],  # not registered at all
        [entry("hello", "2.0", K, "built")],
        [entry("hello", "2.0", K, "installed", diff=True)],
        [entry("hello", "2.0", K, "installed")],  # but not for K2
    ],
)
def test_prune_holds_a_package_not_installed_on_every_kernel(wanted):
    entries = [entry("hello", "1.0", K2, "installed"), *wanted]
    steps = plan([package(version="2.0")], snap(*entries), [K, K2], "prune")
    assert kinds(steps) == ["Note"]
    assert "1.0 of hello stay until it is" in steps[0].reason


def test_prune_ignores_absent_and_converged_packages():
    installed, sources = converged()
    packages = [package(), package("gone", state="absent")]
    entries = [installed, entry("gone", "1.0", K, "installed")]
    assert plan(packages, snap(*entries, hello=sources), [K], "prune") == []


# -- several kernels ------------------------------------------------------------------------


def test_several_kernels_each_get_their_build_and_install():
    steps = plan([package()], snap(hello=Sources(changed=("hello.c",))), [K, K2])
    assert labels(steps, several=True) == [
        "sources",
        "add",
        f"build {K}",
        f"install {K}",
        f"build {K2}",
        f"install {K2}",
        f"depmod {K}",
        f"depmod {K2}",
    ]


def test_a_rebuild_for_one_kernel_rebuilds_for_every_kernel_of_the_call():
    # sources changed since the K2 build: dkms remove --all takes the K build too
    entries = [entry("hello", "1.0", K, "installed"), entry("hello", "1.0", K2, "installed")]
    src = Sources(digest=DIGEST, recorded={K: DIGEST, K2: "e" * 64})
    steps = plan([package()], snap(*entries, hello=src), [K, K2])
    assert kinds(steps) == [
        "RemoveVersion",
        "Add",
        "Build",
        "Install",
        "Build",
        "Install",
        "Depmod",
        "Depmod",
    ]
    assert steps[0].installed_on == (K, K2)


def test_missing_headers_name_the_kernels_and_packages_that_need_them():
    steps = plan([package(), package("other")], snap(headers=(K,)), [K, K2])
    assert missing_headers(steps, snap(headers=(K,))) == {K2: ["hello", "other"]}
    installed, sources = converged()
    steps = plan([package()], snap(installed, headers=(), hello=sources), [K])
    assert missing_headers(steps, snap(headers=())) == {}


# -- dependencies ---------------------------------------------------------------------------


def test_dependencies_come_first_and_a_rebuilt_one_rebuilds_its_dependents():
    exporter = entry("symexport", "1.0", K, "installed")
    user = entry("symuse", "1.0", K, "installed")
    ok = Sources(digest=DIGEST, recorded={K: DIGEST})
    changed = Sources(changed=("symexport.c",), digest=DIGEST, recorded={K: DIGEST})
    packages = [package("symuse", depends=["symexport"]), package("symexport")]
    steps = plan(packages, snap(exporter, user, symexport=changed, symuse=ok), [K])
    assert [(s.package, s.label()) for s in steps if s.package] == [
        ("symexport", "sources"),
        ("symexport", "remove 1.0"),
        ("symexport", "add"),
        ("symexport", "build"),
        ("symexport", "install"),
        ("symuse", "remove 1.0"),
        ("symuse", "add"),
        ("symuse", "build"),
        ("symuse", "install"),
    ]
    removal = next(s for s in steps if s.package == "symuse")
    assert removal.reason == "symexport, which it depends on, is built again"
    # converged: nothing for either
    assert plan(packages, snap(exporter, user, symexport=ok, symuse=ok), [K]) == []


def test_a_dependency_cycle_is_refused():
    with pytest.raises(PlanError, match="dependency cycle a -> b -> a"):
        dependency_order([package("a", depends=["b"]), package("b", depends=["a"])])
    with pytest.raises(PlanError, match="cycle"):
        plan([package("a", depends=["a"])], snap(), [K])


def test_dependency_order_is_stable_and_ignores_names_outside_the_call():
    packages = [package("c", depends=["b", "zz"]), package("a"), package("b", depends=["a"])]
    assert [p.name for p in dependency_order(packages)] == ["a", "b", "c"]


# -- input checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("packages", "kernels", "message"),
    [
        ([package(source_path="/opt/hello")], [K], "dkms adds sources only from"),
        ([package("hel lo")], [K], "not a valid DKMS name"),
        ([package(version="1/0")], [K], "not a valid DKMS version"),
        ([package(files={"../x.c": ""})], [K], "must be relative"),
        ([package(files={"/etc/x": ""})], [K], "must be relative"),
        ([package(files={"x.c": 1})], [K], "must be text"),
        ([package(files={"x.c": ""}, executables=["y.sh"])], [K], "name y.sh, which"),
        ([package(), package(version="2.0")], [K], "listed twice"),
        ([package()], ["../../etc"], "not a kernel release"),
    ],
)
def test_bad_input_is_refused(packages, kernels, message):
    with pytest.raises(PlanError, match=message):
        validate(packages, SRC, kernels)


def test_an_unknown_stage_is_refused():
    with pytest.raises(PlanError, match="stage"):
        plan([package()], snap(), [K], "rollback")


# -- what the plan leaves -------------------------------------------------------------------


def test_predicted_entries_after_an_install_and_a_prune():
    old = entry("hello", "1.0", K, "installed")
    steps = plan([package(version="2.0")], snap(old), [K])
    after = predict_entries([old], steps, A)
    assert tree.versions_on_kernel(after, "hello", K) == {"1.0": "built", "2.0": "installed"}
    assert tree.status_lines(after, "hello") == [
        f"hello/1.0, {K}, {A}: built",
        f"hello/2.0, {K}, {A}: installed",
    ]
    steps = plan([package(version="2.0")], snap(*after), [K], "prune")
    assert tree.versions_on_kernel(predict_entries(after, steps, A), "hello", K) == {
        "2.0": "installed"
    }


def test_prunable_now_and_after_the_planned_install():
    old = entry("hello", "1.0", K, "installed")
    assert prunable([package(version="2.0")], snap(old), [K]) == []
    steps = plan([package(version="2.0")], snap(old), [K])
    assert prunable([package(version="2.0")], snap(old), [K], steps) == ["hello"]
    installed, sources = converged()
    assert prunable([package()], snap(installed, hello=sources), [K]) == []


def test_status_over_several_kernels_is_the_lowest():
    assert status_over(["installed", "built"]) == "built"
    assert status_over(["installed", "absent"]) == "absent"
    assert status_over(["installed"]) == "installed"
    assert status_over([]) == "absent"


def test_steps_are_frozen_values():
    step = Install(package="hello", version="1.0", kernel=K)
    assert step == Install(package="hello", version="1.0", kernel=K)
    with pytest.raises(AttributeError):
        step.kernel = K2  # type: ignore[misc]
    assert Add(package="hello", version="1.0").label() == "add"
    assert Note(package="hello", reason="why").label() is None


def test_the_planner_reads_nothing_and_imports_only_the_standard_library():
    path = Path(plan_mod.__file__)
    allowed = {"__future__", "posixpath", "re", "collections.abc", "dataclasses", "typing"}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            if isinstance(node, ast.Name):
                assert node.id not in ("open", "os"), node.id
            continue
        for name in names:
            assert name in allowed or name.endswith("module_utils.dkms_tree"), name


FP_OLD = ":".join(["AA"] * 32)
FP_NEW = ":".join(["BB"] * 32)


def signed_snap(recorded_signing, signing_key):
    src = Sources(digest=DIGEST, recorded={K: DIGEST}, recorded_signing={K: recorded_signing})
    return Snapshot(
        entries=[entry("hello", "1.0", K, "installed")],
        sources={"hello": src},
        headers=frozenset({K}),
        signing_key=signing_key,
    )


def test_a_new_signing_key_re_signs_without_compiling():
    steps = plan([package()], signed_snap(FP_OLD, FP_NEW), [K])
    assert kinds(steps) == ["Resign"]  # no build, no install, no depmod
    assert "AA:AA:AA" in steps[0].reason and "BB:BB:BB" in steps[0].reason
    assert labels(steps) == ["re-sign"]


def test_the_same_signing_key_rebuilds_nothing():
    assert plan([package()], signed_snap(FP_NEW, FP_NEW), [K]) == []


def test_a_build_without_a_recorded_key_is_signed_again():
    (step,) = plan([package()], signed_snap(None, FP_NEW), [K])
    assert type(step).__name__ == "Resign" and "a key it did not record" in step.reason


def test_no_signing_key_yet_decides_nothing():
    assert plan([package()], signed_snap(FP_OLD, None), [K]) == []


def test_record_files_and_certificate_fingerprints():
    exec_mod = importlib.import_module(
        "ansible_collections.kmodlab.lab.plugins.module_utils.dkms_exec"
    )
    assert exec_mod.parse_record(f"{DIGEST}\n") == (DIGEST, None)
    assert exec_mod.parse_record(f"{DIGEST}\nsigning-key {FP_NEW}\n") == (DIGEST, FP_NEW)
    assert exec_mod.parse_record("") == (None, None)
    der = bytes(range(40))
    import base64
    import hashlib

    pem = (
        b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"
    )
    want = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    assert exec_mod.certificate_fingerprint(der) == want
    assert exec_mod.certificate_fingerprint(pem) == want
    with pytest.raises(ValueError):
        exec_mod.certificate_fingerprint(b"")
