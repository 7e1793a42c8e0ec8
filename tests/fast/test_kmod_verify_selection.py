"""No silent drops: what each module is checked for, and outcomes besides pass and fail.

The suite computes the checks a module's manifest and record call for on its own
(``suite.expected_checks``) and fails any test one side wants and the other does not.
The end-to-end runs break the suite's own selection rules in a test module of their
own (``--hosts=local://``, nothing loaded here) and read report.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kmod_fixtures import MODULES, SELECTION

from kmodlab.selection import resolve
from kmodlab.verify import suite
from kmodlab.verify.expectations import write_expectation

pytestmark = pytest.mark.skipif(
    Path("/sys/module/hello_5").exists() or Path("/dev/gadget").exists(),
    reason="this machine has the fixture modules' names in use",
)


BASE = ["test_dkms_built", "test_dkms_installed", "test_module_file", "test_persistence"]


def test_expected_checks_from_the_manifest():
    recs = {r["name"]: r for r in resolve(MODULES, SELECTION)}
    expected = {name: suite.expected_checks(rec) for name, rec in recs.items()}
    assert expected["user"] == ["test_dkms_removed", "test_not_loaded", "test_persistence"]
    assert expected["base"] == BASE
    assert expected["hello-5"] == [
        *BASE,
        "test_loaded",
        "test_modinfo",
        "test_params",
        "test_param_files",
        "test_dmesg_load",
    ]
    assert expected["memory"] == [
        *BASE,
        "test_loaded",
        "test_modinfo",
        "test_param_files",
        "test_proc_devices",
        "test_dev_nodes",
        "test_dmesg_load",
    ]
    assert expected["gadget"] == [
        *BASE,
        "test_loaded",
        "test_modinfo",
        "test_param_files",
        "test_proc_devices",
        "test_dev_nodes",
        "test_sysfs",
        "test_procfs",
        "test_dmesg_load",
        "test_functional[a read returns the greeting]",
        "test_functional[a write is refused with EINVAL]",
    ]
    # with signing expectations, present modules get their signature checked, and
    # their taint when the host's kernel trusts the certificate
    for name, rec in recs.items():
        signed = suite.expected_checks(rec, {**SIGNING, "trusted": False})
        trusted = suite.expected_checks(rec, SIGNING)
        if rec["state"] == "present":
            assert set(signed) - set(expected[name]) == {"test_signature"}
            assert set(trusted) - set(expected[name]) == {"test_signature", "test_taint"}
        else:
            assert signed == trusted == expected[name]
    # a package host (deb): the package checks instead of DKMS's, all else the same
    dkms_only = {"test_dkms_built", "test_dkms_installed", "test_dkms_removed"}
    package = {"test_package_built", "test_package_installed", "test_package_removed"}
    deb = {name: suite.expected_checks(rec, None, "deb") for name, rec in recs.items()}
    assert deb["user"] == ["test_package_removed", "test_not_loaded", "test_persistence"]
    assert deb["base"] == [
        "test_package_built",
        "test_package_installed",
        "test_module_file",
        "test_persistence",
    ]
    for name, rec in recs.items():
        assert suite.expected_checks(rec, None, "dkms") == expected[name]
        assert not set(deb[name]) & dkms_only and not set(expected[name]) & package
        swap = {"test_dkms_built": "test_package_built"}
        swap |= {"test_dkms_installed": "test_package_installed"}
        swap |= {"test_dkms_removed": "test_package_removed"}
        assert deb[name] == [swap.get(t, t) for t in expected[name]]
        signed = suite.expected_checks(rec, SIGNING, "deb")
        assert set(signed) - set(deb[name]) == set(suite.expected_checks(rec, SIGNING)) - set(
            expected[name]
        )
    # every test of the suite is called for by some state and delivery
    tests = {n for n in suite.__all__ if n.startswith("test_")}
    called = {t.split("[")[0] for names in expected.values() for t in names} | {"test_host"}
    called |= {t.split("[")[0] for names in deb.values() for t in names}
    assert called | {"test_signature", "test_taint"} == tests


SIGNING = {
    "signer": "kmodlab module signing",
    "sig_key": "6C:CE:CE:7E:4C:6C:0D:1F:61:49:F3:DD:27:DF:CC:5C:BB:41:9E:A1",
    "fingerprint": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "trusted": True,
}


def run_suite(
    tmp: Path, body: str, *args: str, signing: dict | None = None, delivery: str = "dkms"
) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the suite from a test module that first runs ``body``; return the report."""
    write_expectation(
        tmp / "exp", "local", os.uname().release, resolve(MODULES, SELECTION), signing, delivery
    )
    (tmp / "test_suite.py").write_text(
        "from kmodlab.verify import checks, suite\n"
        "from kmodlab.verify.suite import *  # noqa: F403\n"
        f"kmodlab_expectations = {str(tmp / 'exp')!r}\n" + body
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(tmp / "test_suite.py"),
            "-p",
            "no:cacheprovider",
            "--hosts=local://",
            "-q",
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=tmp,
        # as from molecule: the plugin comes with the suite, its options from the env
        env={
            **os.environ,
            "PYTHONDONTWRITEBYTECODE": "1",
            "KMODLAB_VERIFY_REPORT_DIR": str(tmp / "report"),
        },
        timeout=300,
        check=False,
    )
    report = json.loads((tmp / "report" / "report.json").read_text())
    return proc, report


def checks_of(report: dict) -> dict[str, dict[str, dict]]:
    """{module: {kind or functional name: check}} of the only host."""
    (host,) = report["hosts"]
    return {m["name"]: {c["name"] or c["kind"]: c for c in m["checks"]} for m in host["modules"]}


BROKEN_RULES = """
suite.test_dmesg_load.kmodlab_check["applies"] = lambda record: False
suite.test_modinfo.kmodlab_check["states"] = ("present", "config")
_build_cases = suite.build_cases
suite.build_cases = lambda *args: [c for c in _build_cases(*args) if c.kind != "functional"]
"""


def test_broken_selection_rules_fail_loudly(tmp_path: Path):
    proc, report = run_suite(tmp_path, BROKEN_RULES)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    found = checks_of(report)
    # a check the manifest calls for that its rule dropped: still there, failing
    for name in ("hello-5", "gadget", "memory"):
        dmesg = found[name]["dmesg_load"]
        assert dmesg["outcome"] == "fail" and dmesg["stage"] == "verified"
        assert dmesg["message"].startswith(f"local/{name} test_dmesg_load: the manifest calls")
        assert "the test's selection rule left it out" in dmesg["message"]
    # a check that ran although the manifest does not call for it
    extra = found["base"]["modinfo"]
    assert extra["outcome"] == "fail"
    assert "test_modinfo was selected, but the manifest does not call for it" in extra["message"]
    # functional checks build_cases did not make a case for
    for functional in ("a read returns the greeting", "a write is refused with EINVAL"):
        check = found["gadget"][functional]
        assert check["outcome"] == "fail" and check["kind"] == "functional"
        assert "no test case was built for it" in check["message"]
    # the counts match what the manifests call for, whatever the rules did
    counts = {m["name"]: m["counts"]["total"] for m in report["hosts"][0]["modules"]}
    assert counts == {"base": 5, "gadget": 14, "hello-5": 9, "memory": 10, "user": 3}
    # every failure names host, module and check
    for mod in report["hosts"][0]["modules"]:
        for failure in mod["failures"]:
            assert failure["message"].startswith(f"local/{mod['name']}"), failure
            assert failure["test"] in failure["message"].splitlines()[0], failure


def test_the_unbroken_suite_runs_exactly_the_expected_checks(tmp_path: Path):
    _proc, report = run_suite(tmp_path, "")
    recs = {r["name"]: r for r in resolve(MODULES, SELECTION)}
    (host,) = report["hosts"]
    assert [c["test"] for c in host["checks"]] == ["test_host"]
    for mod in host["modules"]:
        ran = sorted(f"{c['test']}[{c['name']}]" if c["name"] else c["test"] for c in mod["checks"])
        assert ran == sorted(suite.expected_checks(recs[mod["name"]])), mod["name"]
        assert not any("selection rule" in (c["message"] or "") for c in mod["checks"])


def test_the_suite_with_signing_runs_and_reports_the_signing_checks(tmp_path: Path):
    proc, report = run_suite(tmp_path, "", signing=SIGNING)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    recs = {r["name"]: r for r in resolve(MODULES, SELECTION)}
    (host,) = report["hosts"]
    # what test_host saw of this machine, and what the modules must be signed with
    assert set(host["secure_boot"]) == {"efi", "secure_boot", "setup_mode"}
    assert host["lockdown"] in (None, "none", "integrity", "confidentiality")
    assert host["signing"] == SIGNING
    for mod in host["modules"]:
        ran = sorted(f"{c['test']}[{c['name']}]" if c["name"] else c["test"] for c in mod["checks"])
        assert ran == sorted(suite.expected_checks(recs[mod["name"]], SIGNING)), mod["name"]
        if recs[mod["name"]]["state"] != "present":
            assert mod["stages"]["signed"] == "n/a" and mod["signature"] is None
            continue
        # nothing is installed or loaded here: both signing checks fail, saying why
        assert mod["stages"]["signed"] == "fail", mod["name"]
        assert mod["signature"] is None  # modinfo found no file to show a signature of
        checks = {c["kind"]: c for c in mod["checks"]}
        kmod = recs[mod["name"]]["kmod"]
        assert f"modinfo -k {os.uname().release} {kmod} failed" in checks["signature"]["message"]
        assert f"{kmod} is not loaded, so this cannot be checked" in checks["taint"]["message"]
    text = (tmp_path / "report" / "report.txt").read_text()
    assert "Signing:" in text.splitlines()
    assert "local/hello-5 [signed] test_signature: modinfo -k" in text


def test_a_package_host_runs_the_package_checks_and_reports_its_delivery(tmp_path: Path):
    """delivery deb: the package checks run in the built and installed stages, the DKMS
    ones do not; nothing is installed here, so every built and installed check of a
    present or config module fails, saying which package it looked for."""
    proc, report = run_suite(tmp_path, "", delivery="deb")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    recs = {r["name"]: r for r in resolve(MODULES, SELECTION)}
    (host,) = report["hosts"]
    assert host["delivery"] == "deb"
    # this machine has no rollout state fact (a kmodlab rollout never ran here)
    assert host["rollout"] is None
    kernel = os.uname().release
    for mod in host["modules"]:
        ran = sorted(f"{c['test']}[{c['name']}]" if c["name"] else c["test"] for c in mod["checks"])
        assert ran == sorted(suite.expected_checks(recs[mod["name"]], None, "deb")), mod["name"]
        assert not any(c["test"].startswith("test_dkms_") for c in mod["checks"])
        found = {c["kind"]: c for c in mod["checks"]}
        package = f"kmodlab-{mod['name']}-modules-{kernel}"
        if mod["state"] == "absent":
            assert found["package_removed"]["stage"] == "installed"
            continue
        assert mod["stages"]["built"] == mod["stages"]["installed"] == "fail", mod["name"]
        assert package in found["package_built"]["message"]
        assert package in found["package_installed"]["message"]
    text = (tmp_path / "report" / "report.txt").read_text()
    assert "Rollout:" in text.splitlines()
    assert "local: no rollout state (packages not installed by a rollout)" in text


def test_a_dkms_host_reports_its_delivery_and_no_rollout(tmp_path: Path):
    _proc, report = run_suite(tmp_path, "", "-k", "test_host")
    (host,) = report["hosts"]
    assert host["delivery"] == "dkms" and host["rollout"] is None
    assert "Rollout:" not in (tmp_path / "report" / "report.txt").read_text()


NOT_OBSERVABLE = """
checks.not_loaded = lambda record, obs, kernel: [
    checks.NOT_OBSERVABLE + "whether it is loaded: /sys/module cannot be read"
]
"""


def test_not_observable_is_neither_pass_nor_fail(tmp_path: Path):
    proc, report = run_suite(tmp_path, NOT_OBSERVABLE, "-k", "test_not_loaded")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    check = checks_of(report)["user"]["not_loaded"]
    assert check["outcome"] == "unobservable" and check["stage"] == "loaded"
    assert check["message"] == (
        "local/user test_not_loaded: whether it is loaded: /sys/module cannot be read"
    )
    (user,) = report["hosts"][0]["modules"]
    assert user["stages"]["loaded"] == "unobservable" and user["failures"] == []
    assert user["counts"] == {
        "total": 1,
        "pass": 0,
        "fail": 0,
        "skip": 0,
        "unobservable": 1,
        "unreachable": 0,
    }
    assert report["summary"]["unobservable"] == 1 and report["summary"]["failed"] == 0
    assert report["summary"]["text"] == "0 passed, 0 failed, 0 skipped, 1 not observable"
    text = (tmp_path / "report" / "report.txt").read_text()
    assert "not obs" in next(ln for ln in text.splitlines() if "| user" in ln)
    assert "Not observable:" in text
    assert "local/user [loaded] test_not_loaded: whether it is loaded: /sys/module" in text


def test_not_observable_beside_a_failure_fails(tmp_path: Path):
    body = """
checks.not_loaded = lambda record, obs, kernel: [
    checks.NOT_OBSERVABLE + "one thing cannot be seen", "another is wrong"
]
"""
    proc, report = run_suite(tmp_path, body, "-k", "test_not_loaded")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    check = checks_of(report)["user"]["not_loaded"]
    assert check["outcome"] == "fail"
    assert "not observable: one thing cannot be seen" in check["message"]
    assert "another is wrong" in check["message"]
