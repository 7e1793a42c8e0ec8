"""The kmodlab verify suite: testinfra tests generated from expectation files.

Every test is parametrised over hosts x modules (x functional checks) from the
expectation files kmod_verify's render phase writes, one per host. Nothing in here
names a module: what to check comes from each module's manifest and wanted
parameters (see ``kmodlab.verify.checks``).

Run it on its own::

    python -m kmodlab.verify --expectations DIR --report-dir DIR \\
        --hosts=ansible://all --ansible-inventory=inventory/lab

or with pytest directly (the same thing)::

    pytest -p kmodlab.verify.plugin --pyargs kmodlab.verify.suite \\
        --kmodlab-expectations=DIR --hosts=ansible://all --ansible-inventory=FILE

From molecule's testinfra verifier, a test file only needs::

    from kmodlab.verify.suite import *  # noqa: F403

with ``KMODLAB_VERIFY_EXPECTATIONS`` (and optionally ``KMODLAB_VERIFY_REPORT_DIR``) in
the verifier's env, or a module variable ``kmodlab_expectations = "DIR"``.

Hosts come from testinfra's options (``--hosts``, ``--connection``,
``--ansible-inventory``, ``--sudo``...), as for any testinfra test; the checks run as
root (directly, under ``--sudo``, or through passwordless ``sudo -n``).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import testinfra

from kmodlab.verify import checks
from kmodlab.verify.expectations import Case, build_cases, resolve_directory
from kmodlab.verify.observe import Observation, observe

pytest_plugins = ["kmodlab.verify.plugin"]

__all__ = [
    "pytest_generate_tests",
    "pytest_plugins",
    "test_dev_nodes",
    "test_dkms_built",
    "test_dkms_installed",
    "test_dmesg_load",
    "test_functional",
    "test_host",
    "test_loaded",
    "test_modinfo",
    "test_module_file",
    "test_not_loaded",
    "test_param_files",
    "test_params",
    "test_persistence",
    "test_proc_devices",
    "test_procfs",
    "test_sysfs",
]

STAGES = ("built", "installed", "loaded", "params", "verified")
_TESTINFRA_OPTIONS = (
    "connection",
    "ssh_config",
    "ssh_identity_file",
    "sudo",
    "sudo_user",
    "ansible_inventory",
    "force_ansible",
)
_OBSERVED: dict[tuple[str, str], Observation | str] = {}


def check(
    stage: str,
    kind: str = "module",
    states: tuple[str, ...] = ("present",),
    applies: Callable[[dict[str, Any]], bool] | None = None,
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Mark a test with its report stage and the cases it applies to."""

    def mark(func: Callable[..., None]) -> Callable[..., None]:
        func.kmodlab_check = {  # type: ignore[attr-defined]
            "stage": stage,
            "kind": kind,
            "states": states,
            "applies": applies,
        }
        return func

    return mark


def _expect(record: dict[str, Any], key: str) -> Any:
    return (record["manifest"].get("expect") or {}).get(key)


def _ansible_on_path() -> None:
    """testinfra's ansible backend runs ``ansible-inventory`` from PATH: when Python
    runs from a virtualenv that is not activated, put the virtualenv's bin first."""
    bindir = Path(sys.executable).parent
    if shutil.which("ansible-inventory") is None and (bindir / "ansible-inventory").exists():
        os.environ["PATH"] = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"


def _hosts(config: pytest.Config, module: Any) -> tuple[list[tuple[str, Any]], str | None]:
    option = config.option
    if getattr(option, "hosts", None):
        specs = option.hosts.split(",")
    elif hasattr(module, "testinfra_hosts"):
        specs = module.testinfra_hosts
    else:
        specs = [None]
    _ansible_on_path()
    kwargs = {name: getattr(option, name, None) for name in _TESTINFRA_OPTIONS}
    kwargs["sudo"] = bool(kwargs["sudo"])
    kwargs["force_ansible"] = bool(kwargs["force_ansible"])
    try:
        hosts = testinfra.get_hosts(specs, **kwargs)
    except Exception as exc:  # an inventory that does not parse, ansible-inventory missing
        return [], f"cannot resolve the hosts {specs} ({type(exc).__name__}): {exc}"
    return [(h.backend.get_hostname(), h) for h in hosts], None


def _cases(config: pytest.Config, module: Any) -> list[Case]:
    cached = getattr(config, "_kmodlab_cases", None)
    if cached is None:
        directory = resolve_directory(
            config.getoption("kmodlab_expectations", None),
            getattr(module, "kmodlab_expectations", None),
        )
        hosts, error = _hosts(config, module)
        cached = build_cases(hosts, directory, error)
        config._kmodlab_cases = cached  # type: ignore[attr-defined]
    return cached


def _applies(spec: dict[str, Any], case: Case) -> bool:
    if spec["kind"] != case.kind:
        return False
    if case.kind == "host":
        return True
    record = case.record or {}
    if record.get("state") not in spec["states"]:
        return False
    return spec["applies"] is None or bool(spec["applies"](record))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    spec = getattr(metafunc.function, "kmodlab_check", None)
    if spec is None or "kmodlab_case" not in metafunc.fixturenames:
        return
    selected = [c for c in _cases(metafunc.config, metafunc.module) if _applies(spec, c)]
    metafunc.parametrize("kmodlab_case", selected, ids=[c.id for c in selected])


# ------------------------------------------------------------------ helpers


def _observation(case: Case) -> Observation:
    if case.error is not None or case.expectation is None:
        pytest.fail(case.error or "no expectation", pytrace=False)
    key = (case.host_name, str(case.expectation.path))
    if key not in _OBSERVED:
        try:
            _OBSERVED[key] = observe(case.host, case.expectation)
        except Exception as exc:  # SSH down, collector crash: every test of the host fails
            _OBSERVED[key] = f"cannot observe {case.host_name}: {type(exc).__name__}: {exc}"
    value = _OBSERVED[key]
    if isinstance(value, str):
        pytest.fail(value, pytrace=False)
    return value


def _verdict(case: Case, problems: list[str], obs: Observation) -> None:
    if not problems:
        return
    text = f"{case.id}:\n  - " + "\n  - ".join(problems)
    if case.record is not None:
        lines = checks.kernel_context(case.record, obs)
        text += (
            f"\n\nLast kernel messages naming {case.record['name']} "
            f"({obs.kernel_log_source}, newest last):\n"
        )
        text += "\n".join(f"    {line}" for line in lines) if lines else "    (none)"
    pytest.fail(text, pytrace=False)


def _module(case: Case, func: Callable[[dict[str, Any], Observation, str], list[str]]) -> None:
    obs = _observation(case)
    assert case.record is not None and case.expectation is not None
    _verdict(case, func(case.record, obs, case.expectation.kernel), obs)


# ------------------------------------------------------------------ tests


@check("host", kind="host")
def test_host(kmodlab_case: Case) -> None:
    """The expectation file exists and the host runs the kernel it was rendered for."""
    obs = _observation(kmodlab_case)
    assert kmodlab_case.expectation is not None
    _verdict(kmodlab_case, checks.host(kmodlab_case.expectation.kernel, obs), obs)


@check("built", states=("present", "config"))
def test_dkms_built(kmodlab_case: Case) -> None:
    """DKMS built NAME/VERSION for the running kernel."""
    _module(kmodlab_case, checks.dkms_built)


@check("installed", states=("present", "config"))
def test_dkms_installed(kmodlab_case: Case) -> None:
    """DKMS installed NAME/VERSION for the running kernel."""
    _module(kmodlab_case, checks.dkms_installed)


@check("installed", states=("present", "config"))
def test_module_file(kmodlab_case: Case) -> None:
    """modinfo finds the .ko under updates/dkms, built for the running kernel (vermagic)."""
    _module(kmodlab_case, checks.module_file)


@check("loaded")
def test_loaded(kmodlab_case: Case) -> None:
    """/sys/module/KMOD is live, and is the installed build (srcversion)."""
    _module(kmodlab_case, checks.loaded)


@check("loaded", states=("absent",))
def test_not_loaded(kmodlab_case: Case) -> None:
    """A module whose state is absent is not loaded."""
    _module(kmodlab_case, checks.not_loaded)


@check("params", applies=lambda r: bool(checks.checked_params(r)))
def test_params(kmodlab_case: Case) -> None:
    """Every visible wanted parameter has its wanted value in sysfs."""
    _module(kmodlab_case, checks.params)


@check("params", applies=lambda r: bool(r["manifest"].get("parameters")))
def test_param_files(kmodlab_case: Case) -> None:
    """Visible parameters have exactly their declared mode; perm 0 ones are not in sysfs."""
    _module(kmodlab_case, checks.param_files)


@check("verified", states=("present", "config", "absent"))
def test_persistence(kmodlab_case: Case) -> None:
    """/etc/modprobe.d/NAME.conf and /etc/modules-load.d/NAME.conf as state/persist say."""
    _module(kmodlab_case, checks.persistence)


@check("verified", applies=lambda r: bool(_expect(r, "proc_devices")))
def test_proc_devices(kmodlab_case: Case) -> None:
    """/proc/devices lists the module's devices, on the expected major when fixed."""
    _module(kmodlab_case, checks.proc_device_checks)


@check("verified", applies=lambda r: bool(_expect(r, "dev_nodes")))
def test_dev_nodes(kmodlab_case: Case) -> None:
    """/dev nodes: device type, major of /proc/devices, minor and mode."""
    _module(kmodlab_case, checks.dev_nodes)


@check("verified", applies=lambda r: bool(_expect(r, "sysfs")))
def test_sysfs(kmodlab_case: Case) -> None:
    """sysfs paths: kind, mode and content."""
    _module(kmodlab_case, checks.sysfs)


@check("verified", applies=lambda r: bool(_expect(r, "procfs")))
def test_procfs(kmodlab_case: Case) -> None:
    """/proc paths: kind, mode and content."""
    _module(kmodlab_case, checks.procfs)


@check("verified", applies=lambda r: bool((_expect(r, "dmesg") or {}).get("load")))
def test_dmesg_load(kmodlab_case: Case) -> None:
    """The load messages of the manifest appear since the module's last unload message."""
    _module(kmodlab_case, checks.dmesg_load)


@check("verified")
def test_modinfo(kmodlab_case: Case) -> None:
    """modinfo fields match the manifest's regexes; its version, if any, is the manifest's."""
    _module(kmodlab_case, checks.modinfo)


@check("verified", kind="functional")
def test_functional(kmodlab_case: Case) -> None:
    """A functional check of the manifest: its writes and reads behave as declared."""
    obs = _observation(kmodlab_case)
    assert kmodlab_case.record is not None and kmodlab_case.functional_index is not None
    problems = checks.functional(kmodlab_case.record, kmodlab_case.functional_index, obs)
    _verdict(kmodlab_case, problems, obs)
