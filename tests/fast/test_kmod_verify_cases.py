"""Expectation files -> the suite's parametrisation (hosts x modules x functional checks)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from kmod_fixtures import MODULES, SELECTION

from kmodlab.selection import resolve
from kmodlab.verify import suite
from kmodlab.verify.expectations import (
    ENV_EXPECTATIONS,
    ExpectationError,
    build_cases,
    load_expectation,
    resolve_directory,
    write_expectation,
)

KERNEL = "6.1.0-18-amd64"


@pytest.fixture
def exp_dir(tmp_path: Path) -> Path:
    write_expectation(tmp_path, "lab1", KERNEL, resolve(MODULES, SELECTION))
    return tmp_path


def test_cases_per_host_module_and_functional_check(exp_dir: Path):
    cases = build_cases([("lab1", "H1"), ("lab2", "H2")], exp_dir)
    by_kind = {}
    for case in cases:
        by_kind.setdefault(case.kind, []).append(case.id)
    assert by_kind["host"] == ["lab1", "lab2"]
    assert by_kind["module"] == [
        "lab1/base",
        "lab1/gadget",
        "lab1/hello-5",
        "lab1/memory",
        "lab1/user",
    ]
    assert by_kind["functional"] == [
        "lab1/gadget/a-read-returns-the-greeting",
        "lab1/gadget/a-write-is-refused-with-einval",
    ]
    lab2 = next(c for c in cases if c.host_name == "lab2")
    assert lab2.error and "no expectation file" in lab2.error and "lab2.json" in lab2.error
    assert all(c.host in ("H1", "H2") for c in cases)
    assert len({c.id for c in cases}) == len(cases)


def test_no_hosts_or_no_folder_is_a_failing_case(exp_dir: Path):
    (only,) = build_cases([], exp_dir)
    assert only.kind == "host" and only.error and "no host to verify" in only.error
    (broken,) = build_cases([("lab1", None)], exp_dir, hosts_error="inventory does not parse")
    assert broken.error == "inventory does not parse"
    (nodir,) = build_cases([("lab1", None)], None)
    assert ENV_EXPECTATIONS in nodir.error


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"schema": 2, "host": "lab1", "kernel": KERNEL, "modules": []}, "schema 2"),
        (
            {"schema": 1, "host": "other", "kernel": KERNEL, "modules": []},
            "written for host 'other'",
        ),
        ({"schema": 1, "host": "lab1", "modules": []}, "field kernel"),
        ({"schema": 1, "host": "lab1", "kernel": KERNEL, "modules": {}}, "field modules"),
        (
            {"schema": 1, "host": "lab1", "kernel": KERNEL, "modules": [{"name": "x"}]},
            "modules[0] lacks kmod",
        ),
        ([], "expected a JSON object"),
    ],
)
def test_malformed_expectation_files(tmp_path: Path, data, words):
    (tmp_path / "lab1.json").write_text(json.dumps(data))
    with pytest.raises(ExpectationError, match=words.replace("[", r"\[").replace("]", r"\]")):
        load_expectation(tmp_path, "lab1")
    (case,) = build_cases([("lab1", None)], tmp_path)
    assert case.error and words in case.error


def test_expectation_round_trip(exp_dir: Path):
    exp = load_expectation(exp_dir, "lab1")
    assert exp.kernel == KERNEL and exp.modules[0]["name"] == "base"
    assert exp.signing is None
    signing = {"signer": "kmodlab", "sig_key": "1A:2B", "fingerprint": "ab", "trusted": True}
    write_expectation(exp_dir, "lab2", KERNEL, [], signing)
    assert load_expectation(exp_dir, "lab2").signing == signing
    # written by the role without the field: no signing expectations
    data = json.loads((exp_dir / "lab1.json").read_text())
    del data["signing"]
    (exp_dir / "lab1.json").write_text(json.dumps(data))
    assert load_expectation(exp_dir, "lab1").signing is None


SIGNING = {"signer": "kmodlab", "sig_key": "1A:2B", "fingerprint": "ab", "trusted": True}


@pytest.mark.parametrize(
    ("signing", "words"),
    [
        ("kmodlab", "field signing: expected null or a mapping with signer, sig_key"),
        ({**SIGNING, "trusted": "yes"}, "field signing: trusted (bool) missing or of the wrong"),
        ({**SIGNING, "signer": " "}, "field signing: signer (str) missing"),
        ({k: v for k, v in SIGNING.items() if k != "sig_key"}, "sig_key (str) missing"),
        ({**SIGNING, "key": "x"}, "field signing: unknown keys key"),
    ],
)
def test_malformed_signing(tmp_path: Path, signing, words):
    write_expectation(tmp_path, "lab1", KERNEL, [], signing)
    with pytest.raises(ExpectationError, match=re.escape(words)):
        load_expectation(tmp_path, "lab1")


def test_signing_checks_apply_to_present_modules_of_hosts_with_signing(tmp_path: Path):
    recs = resolve(MODULES, SELECTION)
    write_expectation(tmp_path, "lab1", KERNEL, recs, SIGNING)
    write_expectation(tmp_path, "lab2", KERNEL, recs, {**SIGNING, "trusted": False})
    write_expectation(tmp_path, "lab3", KERNEL, recs)
    cases = build_cases([("lab1", None), ("lab2", None), ("lab3", None)], tmp_path)
    applied = {
        name: sorted(c.id for c in cases if suite._applies(func.kmodlab_check, c))
        for name, func in (
            ("test_signature", suite.test_signature),
            ("test_taint", suite.test_taint),
        )
    }
    present = ["gadget", "hello-5", "memory"]
    assert applied["test_signature"] == [f"{h}/{m}" for h in ("lab1", "lab2") for m in present]
    # the kernel trusts the certificate only on lab1: taint E means something there
    assert applied["test_taint"] == [f"lab1/{m}" for m in present]
    for case in cases:
        if case.kind == "module":
            for test in ("test_signature", "test_taint"):
                assert suite._wanted(test, case) == (case.id in applied[test]), (test, case.id)


def test_directory_resolution(monkeypatch, tmp_path: Path):
    monkeypatch.setenv(ENV_EXPECTATIONS, str(tmp_path / "env"))
    assert resolve_directory(None) == tmp_path / "env"
    assert resolve_directory(None, str(tmp_path / "mod")) == tmp_path / "mod"
    assert resolve_directory(str(tmp_path / "opt"), str(tmp_path / "mod")) == tmp_path / "opt"
    monkeypatch.delenv(ENV_EXPECTATIONS)
    assert resolve_directory(None) is None


def test_which_tests_apply_to_which_cases(exp_dir: Path):
    cases = build_cases([("lab1", None)], exp_dir)
    tests = {name: getattr(suite, name) for name in suite.__all__ if name.startswith("test_")}
    applied = {
        name: sorted(c.id for c in cases if suite._applies(func.kmodlab_check, c))
        for name, func in tests.items()
    }
    present = ["lab1/gadget", "lab1/hello-5", "lab1/memory"]
    assert applied["test_host"] == ["lab1"]
    assert applied["test_dkms_built"] == ["lab1/base", *present]
    assert applied["test_dkms_installed"] == applied["test_module_file"] == ["lab1/base", *present]
    assert applied["test_loaded"] == present
    assert applied["test_not_loaded"] == applied["test_dkms_removed"] == ["lab1/user"]
    # only hello-5 wants parameters here (memory runs on its default major, which
    # test_proc_devices checks)
    assert applied["test_params"] == ["lab1/hello-5"]
    assert applied["test_param_files"] == present
    assert applied["test_persistence"] == ["lab1/base", *present, "lab1/user"]
    assert (
        applied["test_proc_devices"] == applied["test_dev_nodes"] == ["lab1/gadget", "lab1/memory"]
    )
    assert applied["test_sysfs"] == applied["test_procfs"] == ["lab1/gadget"]
    assert applied["test_dmesg_load"] == present
    assert applied["test_modinfo"] == present
    assert len(applied["test_functional"]) == 2
    assert {t.kmodlab_check["stage"] for t in tests.values()} == {"host", *suite.STAGES}


def test_delivery_round_trip_and_default(tmp_path: Path):
    write_expectation(tmp_path, "fleet1", KERNEL, [], None, "deb")
    assert json.loads((tmp_path / "fleet1.json").read_text())["delivery"] == "deb"
    assert load_expectation(tmp_path, "fleet1").delivery == "deb"
    write_expectation(tmp_path, "lab1", KERNEL, [])
    assert load_expectation(tmp_path, "lab1").delivery == "dkms"
    # written before the field existed, or null: DKMS, today's behaviour
    for value in ("drop", None):
        data = json.loads((tmp_path / "lab1.json").read_text())
        data.pop("delivery") if value == "drop" else data.__setitem__("delivery", value)
        (tmp_path / "lab1.json").write_text(json.dumps(data))
        assert load_expectation(tmp_path, "lab1").delivery == "dkms"


@pytest.mark.parametrize("delivery", ["rpm", "DEB", 1])
def test_unknown_delivery_is_refused(tmp_path: Path, delivery):
    write_expectation(tmp_path, "lab1", KERNEL, [], None, delivery)
    with pytest.raises(ExpectationError, match=r"field delivery: .* expected one of dkms, deb"):
        load_expectation(tmp_path, "lab1")


def test_each_delivery_gets_its_own_build_and_install_checks(tmp_path: Path):
    recs = resolve(MODULES, SELECTION)
    write_expectation(tmp_path, "lab1", KERNEL, recs)
    write_expectation(tmp_path, "fleet1", KERNEL, recs, None, "deb")
    cases = build_cases([("lab1", None), ("fleet1", None)], tmp_path)
    tests = {name: getattr(suite, name) for name in suite.__all__ if name.startswith("test_")}
    applied = {
        name: sorted(c.id for c in cases if suite._applies(func.kmodlab_check, c))
        for name, func in tests.items()
    }
    kept = ["base", "gadget", "hello-5", "memory"]
    for via, host in (("dkms", "lab1"), ("package", "fleet1")):
        assert applied[f"test_{via}_built"] == [f"{host}/{m}" for m in kept]
        assert applied[f"test_{via}_installed"] == [f"{host}/{m}" for m in kept]
        assert applied[f"test_{via}_removed"] == [f"{host}/user"]
    assert applied["test_module_file"] == [f"{h}/{m}" for h in ("fleet1", "lab1") for m in kept]
    assert tests["test_package_built"].kmodlab_check["stage"] == "built"
    assert tests["test_package_installed"].kmodlab_check["stage"] == "installed"
    assert tests["test_package_removed"].kmodlab_check["stage"] == "installed"
    # the selection rules and expected_checks agree on both hosts
    for case in cases:
        if case.kind == "module":
            for name, func in tests.items():
                assert suite._wanted(name, case) == suite._applies(func.kmodlab_check, case), (
                    name,
                    case.id,
                )
