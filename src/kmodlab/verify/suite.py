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

What each module is checked for is computed twice: by each test's own selection rule
(``check(...)``: kind, states, ``applies``) and, from the manifest alone, by
``expected_checks``. A check one of them wants and the other does not still becomes a
test, which fails saying so: a selection rule that goes wrong can never make a check
vanish from a passing run.

How a module is built and installed is checked as the host's ``delivery`` brings it
(``kmodlab.verify.expectations``): ``dkms`` (the default) by ``test_dkms_built``,
``test_dkms_installed`` and ``test_dkms_removed``; ``deb`` (the fleet path's packages)
by ``test_package_built``, ``test_package_installed`` and ``test_package_removed``.
``test_module_file`` runs for both, looking where the delivery installs the .ko.

The signing checks (``test_signature``, ``test_taint``) run only for hosts whose
expectation has ``signing`` (``kmodlab.verify.expectations``); ``test_taint`` only when
it says the kernel trusts the certificate. ``test_host`` and ``test_signature`` record
what they saw for the report (``record_property(FACTS, {...})``: the host's delivery,
Secure Boot state and lockdown mode, on a package host what its rollout state fact says
was rolled out; the module file's signature).

Hosts come from testinfra's options (``--hosts``, ``--connection``,
``--ansible-inventory``, ``--sudo``...), as for any testinfra test; the checks run as
root (directly, under ``--sudo``, or through passwordless ``sudo -n``). A host SSH cannot
reach fails every one of its tests as "unreachable" (a message starting with
``observe.UNREACHABLE``). Each host of ``--kmodlab-dropped`` (hosts that left the play
before the suite ran) gets one ``test_host`` case that probes it over SSH: unreachable,
or failed (a task failed on it earlier), never left out.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import functools
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest
import testinfra

from kmodlab.verify import checks
from kmodlab.verify.expectations import DEFAULT_DELIVERY, Case, build_cases, resolve_directory
from kmodlab.verify.observe import UNREACHABLE, HostUnreachable, Observation, observe, reach
from kmodlab.verify.report import FACTS

pytest_plugins = ["kmodlab.verify.plugin"]

__all__ = [
    "pytest_generate_tests",
    "pytest_plugins",
    "test_dev_nodes",
    "test_dkms_built",
    "test_dkms_installed",
    "test_dkms_removed",
    "test_dmesg_load",
    "test_functional",
    "test_host",
    "test_loaded",
    "test_modinfo",
    "test_module_file",
    "test_not_loaded",
    "test_package_built",
    "test_package_installed",
    "test_package_removed",
    "test_param_files",
    "test_params",
    "test_persistence",
    "test_proc_devices",
    "test_procfs",
    "test_signature",
    "test_sysfs",
    "test_taint",
]

STAGES = ("built", "installed", "signed", "loaded", "params", "verified")
_TESTINFRA_OPTIONS = (
    "connection",
    "ssh_config",
    "ssh_identity_file",
    "sudo",
    "sudo_user",
    "ansible_inventory",
    "force_ansible",
)
_OBSERVED: dict[tuple[str, str], Observation | HostUnreachable | str] = {}
# One case per host and expectation file still to observe (filled when cases are built).
_TO_OBSERVE: dict[tuple[str, str], Case] = {}
MAX_PARALLEL_HOSTS = 8
# (test, case id) -> why the test runs for a case it should not, or should but was not
# selected for; set while generating the tests, raised when the test runs.
_MISMATCH: dict[tuple[str, str], str] = {}
_RUNNING: contextvars.ContextVar[str] = contextvars.ContextVar("kmodlab_test", default="test")


def check(
    stage: str,
    kind: str = "module",
    states: tuple[str, ...] = ("present",),
    applies: Callable[[dict[str, Any]], bool] | None = None,
    signing: str | None = None,
    delivery: str | None = None,
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Mark a test with its report stage and the cases it applies to. ``signing``:
    None (any host), "signed" (hosts whose expectation has ``signing``) or "trusted"
    (those whose ``signing`` says the kernel trusts the certificate). ``delivery``:
    None (any host), or only hosts with that delivery ("dkms", "deb"). Fixtures the test
    asks for besides ``kmodlab_case`` (``record_property``) are passed on."""

    def mark(func: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(func)
        def run(kmodlab_case: Case, **fixtures: Any) -> None:
            token = _RUNNING.set(func.__name__)
            try:
                mismatch = _MISMATCH.get((func.__name__, kmodlab_case.id))
                if mismatch is not None:
                    _fail(kmodlab_case, mismatch)
                func(kmodlab_case, **fixtures)
            finally:
                _RUNNING.reset(token)

        run.kmodlab_check = {  # type: ignore[attr-defined]
            "stage": stage,
            "kind": kind,
            "states": states,
            "applies": applies,
            "signing": signing,
            "delivery": delivery,
        }
        return run

    return mark


def expected_checks(
    record: dict[str, Any],
    signing: dict[str, Any] | None = None,
    delivery: str = DEFAULT_DELIVERY,
) -> list[str]:
    """The tests a module's record calls for, from its state and manifest alone (not
    from the tests' selection rules), the host's ``signing`` expectation and its
    ``delivery`` ("dkms" or "deb"); a functional check is ``test_functional[NAME]``.

    absent: DKMS (or dpkg) removed it, not loaded, no config files. config: built,
    installed (by DKMS, or as a package), the module file where that delivery puts it,
    its files. present: all that, loaded, modinfo, and one test per expect key in use
    (parameters wanted, parameters declared, proc_devices, dev_nodes, sysfs, procfs,
    dmesg load messages), one per functional check; with ``signing``, its signature,
    and its taint when the kernel trusts the certificate.
    """
    via = "package" if delivery == "deb" else "dkms"
    if record["state"] == "absent":
        return [f"test_{via}_removed", "test_not_loaded", "test_persistence"]
    tests = [f"test_{via}_built", f"test_{via}_installed", "test_module_file", "test_persistence"]
    if record["state"] != "present":
        return tests
    manifest = record["manifest"]
    expect = manifest.get("expect") or {}
    tests += ["test_loaded", "test_modinfo"]
    if signing:
        tests.append("test_signature")
        if signing.get("trusted"):
            tests.append("test_taint")
    if record["params"]:
        tests.append("test_params")
    if manifest.get("parameters"):
        tests.append("test_param_files")
    tests += [
        f"test_{key}" for key in ("proc_devices", "dev_nodes", "sysfs", "procfs") if expect.get(key)
    ]
    if (expect.get("dmesg") or {}).get("load"):
        tests.append("test_dmesg_load")
    tests += [f"test_functional[{f['name']}]" for f in expect.get("functional") or []]
    return tests


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
    return _resolve(config, specs)


def _resolve(config: pytest.Config, specs: list[Any]) -> tuple[list[tuple[str, Any]], str | None]:
    """testinfra hosts of ``specs``, with testinfra's options; or why they cannot be had."""
    option = config.option
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
        cached += _dropped_cases(config, {case.host_name for case in cached})
        config._kmodlab_cases = cached  # type: ignore[attr-defined]
        for case in cached:
            if case.error is None and case.expectation is not None:
                _TO_OBSERVE.setdefault(_key(case), case)
    return cached


def _dropped_cases(config: pytest.Config, known: set[str]) -> list[Case]:
    """One host case per host of ``--kmodlab-dropped`` (not verified otherwise)."""
    names = str(config.getoption("kmodlab_dropped", None) or "").split(",")
    cases = []
    for name in dict.fromkeys(n.strip() for n in names):
        if not name or name in known:
            continue
        hosts, error = _resolve(config, [f"ansible://{name}"])
        host = hosts[0][1] if hosts else None
        cases.append(
            Case(
                kind="host",
                host_name=name,
                host=host,
                error=error or (None if host else "the inventory does not list it"),
                extra={"dropped": True},
            )
        )
    return cases


def _signing(case: Case) -> dict[str, Any] | None:
    return case.expectation.signing if case.expectation is not None else None


def _delivery(case: Case) -> str:
    return case.expectation.delivery if case.expectation is not None else DEFAULT_DELIVERY


def _applies(spec: dict[str, Any], case: Case) -> bool:
    if spec["kind"] != case.kind:
        return False
    if case.kind == "host":
        return True
    record = case.record or {}
    if record.get("state") not in spec["states"]:
        return False
    signing = _signing(case)
    if spec.get("signing") and not signing:
        return False
    if spec.get("signing") == "trusted" and not (signing or {}).get("trusted"):
        return False
    if spec.get("delivery") and spec["delivery"] != _delivery(case):
        return False
    return spec["applies"] is None or bool(spec["applies"](record))


def _wanted(test: str, case: Case) -> bool:
    """Whether ``expected_checks`` (or, for a host, test_host) calls for ``test`` here."""
    if case.record is None:
        return case.kind == "host" and test == "test_host"
    functional = case.functional
    key = f"{test}[{functional['name']}]" if functional is not None else test
    return key in expected_checks(case.record, _signing(case), _delivery(case))


def _with_functional(cases: list[Case]) -> list[tuple[Case, bool]]:
    """(case, built by build_cases): the cases, and a functional case for every
    functional check of a module case that build_cases did not make one for."""
    out = [(case, True) for case in cases]
    built = {case.id for case in cases}
    for case in cases:
        if case.kind != "module" or case.record is None:
            continue
        functional = case.record["manifest"].get("expect", {}).get("functional") or []
        for index in range(len(functional)):
            extra = Case(
                kind="functional",
                host_name=case.host_name,
                host=case.host,
                expectation=case.expectation,
                record=case.record,
                functional_index=index,
            )
            if extra.id not in built and _wanted("test_functional", extra):
                out.append((extra, False))
    return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    spec = getattr(metafunc.function, "kmodlab_check", None)
    if spec is None or "kmodlab_case" not in metafunc.fixturenames:
        return
    test = metafunc.function.__name__
    params = []
    for case, built in _with_functional(_cases(metafunc.config, metafunc.module)):
        selected, wanted = built and _applies(spec, case), _wanted(test, case)
        _MISMATCH.pop((test, case.id), None)
        if not (selected or wanted):
            continue
        if not built:
            _MISMATCH[(test, case.id)] = (
                "the manifest calls for this functional check, but no test case was built for it"
            )
        elif not selected:
            _MISMATCH[(test, case.id)] = (
                f"the manifest calls for {test} "
                f"(state {case.record['state'] if case.record else 'host'}), "
                "but the test's selection rule left it out"
            )
        elif not wanted:
            calls = (
                expected_checks(case.record, _signing(case), _delivery(case))
                if case.record
                else ["test_host"]
            )
            _MISMATCH[(test, case.id)] = (
                f"{test} was selected, but the manifest does not call for it "
                f"(it calls for: {', '.join(calls)})"
            )
        params.append(case)
    metafunc.parametrize("kmodlab_case", params, ids=[c.id for c in params])


# ------------------------------------------------------------------ helpers


def _fail(case: Case, text: str) -> NoReturn:
    """Fail naming host, module and check: ``HOST/MODULE test_NAME: text``."""
    pytest.fail(f"{case.id} {_RUNNING.get()}: {text}", pytrace=False)


def _unreachable(case: Case, text: str) -> NoReturn:
    """Fail as "unreachable": ``unreachable: HOST/MODULE test_NAME: text``."""
    pytest.fail(f"{UNREACHABLE}{case.id} {_RUNNING.get()}: {text}", pytrace=False)


def _unreachable_fix(name: str) -> str:
    return (
        f"check that {name} is up and that its inventory entry (address, port, user, key) "
        f"is right (ansible {name} -m ansible.builtin.ping), then re-run"
    )


def _observe(case: Case) -> Observation | HostUnreachable | str:
    assert case.expectation is not None
    try:
        return observe(case.host, case.expectation)
    except HostUnreachable as exc:  # every test of the host is unreachable
        return exc
    except Exception as exc:  # collector crash: every test of the host fails
        return f"cannot observe {case.host_name}: {type(exc).__name__}: {exc}"


def _observe_all(case: Case) -> None:
    """Observe ``case``'s host, and at the same time every other host not observed yet:
    one collector round trip per host, all hosts at once (a batch of TCG guests takes
    as long as its slowest host, not the sum)."""
    todo = {_key(case): case}
    for key, other in _TO_OBSERVE.items():
        todo.setdefault(key, other)
    todo = {key: c for key, c in todo.items() if key not in _OBSERVED}
    workers = min(MAX_PARALLEL_HOSTS, len(todo))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for key, value in zip(todo, pool.map(_observe, todo.values()), strict=True):
            _OBSERVED[key] = value


def _key(case: Case) -> tuple[str, str]:
    return (case.host_name, str(case.expectation.path if case.expectation else ""))


def _observation(case: Case) -> Observation:
    if case.error is not None or case.expectation is None:
        _fail(case, case.error or "no expectation")
    key = _key(case)
    if key not in _OBSERVED:
        _observe_all(case)
    value = _OBSERVED[key]
    if isinstance(value, HostUnreachable):
        _unreachable(
            case,
            f"{case.host_name} cannot be reached over SSH ({value}): "
            + _unreachable_fix(case.host_name),
        )
    if isinstance(value, str):
        _fail(case, value)
    return value


def _dropped(case: Case) -> NoReturn:
    """A host that left the play before the suite ran: unreachable, or failed earlier."""
    name = case.host_name
    left = f"{name} left the play before kmod_verify"
    if case.host is None:
        _fail(case, f"{left}, and it cannot be probed: {case.error}")
    try:
        reason = reach(case.host)
    except Exception as exc:
        _fail(case, f"{left}, and probing it failed: {type(exc).__name__}: {exc}")
    if reason is not None:
        _unreachable(
            case, f"{left} and cannot be reached over SSH ({reason}): " + _unreachable_fix(name)
        )
    _fail(
        case,
        f"{left} (a task failed on it, or it could not be reached then: see the play "
        "output), so nothing was verified on it: fix that and re-run",
    )


def _verdict(case: Case, problems: list[str], obs: Observation) -> None:
    """Pass, fail, or (every problem starting with ``checks.NOT_OBSERVABLE``) report the
    check as not observable: a pytest skip whose reason starts with that prefix."""
    if not problems:
        return
    prefix = checks.NOT_OBSERVABLE
    if all(p.startswith(prefix) for p in problems):
        pytest.skip(
            f"{prefix}{case.id} {_RUNNING.get()}: " + "; ".join(p[len(prefix) :] for p in problems)
        )
    text = f"{case.id} {_RUNNING.get()}:\n  - " + "\n  - ".join(problems)
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
def test_host(kmodlab_case: Case, record_property: Callable[[str, Any], None]) -> None:
    """The expectation file exists and the host runs the kernel it was rendered for;
    when its kernel should trust the signing certificate, its Secure Boot state can be
    read. Records the delivery, the Secure Boot state and the lockdown mode for the
    report, and on a package host what its rollout state fact says was rolled out."""
    if kmodlab_case.extra.get("dropped"):
        _dropped(kmodlab_case)
    if kmodlab_case.expectation is not None:  # shown even when the host cannot be seen
        record_property(FACTS, {"delivery": kmodlab_case.expectation.delivery})
    obs = _observation(kmodlab_case)
    expectation = kmodlab_case.expectation
    assert expectation is not None
    state = obs.secure_boot
    record_property(
        FACTS,
        {
            "delivery": expectation.delivery,
            "secure_boot": {k: state.get(k) for k in ("efi", "secure_boot", "setup_mode")},
            "lockdown": state.get("lockdown"),
            "signing": expectation.signing,
            "rollout": checks.rollout_state(obs),
        },
    )
    _verdict(kmodlab_case, checks.host(expectation.kernel, obs, expectation.signing), obs)


@check("built", states=("present", "config"), delivery="dkms")
def test_dkms_built(kmodlab_case: Case) -> None:
    """DKMS built NAME/VERSION for the running kernel."""
    _module(kmodlab_case, checks.dkms_built)


@check("installed", states=("present", "config"), delivery="dkms")
def test_dkms_installed(kmodlab_case: Case) -> None:
    """DKMS installed NAME/VERSION for the running kernel."""
    _module(kmodlab_case, checks.dkms_installed)


@check("built", states=("present", "config"), delivery="deb")
def test_package_built(kmodlab_case: Case) -> None:
    """The running kernel's package ships updates/kmodlab/KMOD.ko, modinfo resolves the
    module to it, and the file is the one the package shipped (dpkg --verify)."""
    _module(kmodlab_case, checks.package_built)


@check("installed", states=("present", "config"), delivery="deb")
def test_package_installed(kmodlab_case: Case) -> None:
    """dpkg shows kmodlab-NAME-modules-KERNEL installed (ii) at the record's version."""
    _module(kmodlab_case, checks.package_installed)


@check("installed", states=("present", "config"))
def test_module_file(kmodlab_case: Case) -> None:
    """modinfo finds the .ko where the delivery installs it (updates/dkms, or the
    package's updates/kmodlab/KMOD.ko), built for the running kernel (vermagic)."""
    delivery = _delivery(kmodlab_case)
    _module(kmodlab_case, lambda rec, obs, kernel: checks.module_file(rec, obs, kernel, delivery))


@check("loaded")
def test_loaded(kmodlab_case: Case) -> None:
    """/sys/module/KMOD is live, and is the installed build (srcversion, else build ID)."""
    _module(kmodlab_case, checks.loaded)


@check("installed", states=("absent",), delivery="dkms")
def test_dkms_removed(kmodlab_case: Case) -> None:
    """DKMS removed an absent module: no DKMS entry or folder, no installed .ko, no sources."""
    _module(kmodlab_case, checks.dkms_removed)


@check("installed", states=("absent",), delivery="deb")
def test_package_removed(kmodlab_case: Case) -> None:
    """dpkg removed an absent module's packages (any kernel): none installed, unpacked or
    half-done, no .ko left under updates/kmodlab."""
    _module(kmodlab_case, checks.package_removed)


@check("loaded", states=("absent",))
def test_not_loaded(kmodlab_case: Case) -> None:
    """A module whose state is absent is not loaded."""
    _module(kmodlab_case, checks.not_loaded)


@check("params", applies=lambda r: bool(r["params"]))
def test_params(kmodlab_case: Case) -> None:
    """Every wanted parameter has its wanted value in sysfs (perm 0: not observable)."""
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
    """The manifest's load messages, in order, from the module's current load on."""
    _module(kmodlab_case, checks.dmesg_load)


@check("verified")
def test_modinfo(kmodlab_case: Case) -> None:
    """modinfo fields match the manifest's regexes; its version, if any, is the manifest's."""
    _module(kmodlab_case, checks.modinfo)


@check("signed", signing="signed")
def test_signature(kmodlab_case: Case, record_property: Callable[[str, Any], None]) -> None:
    """The installed module file is signed (PKCS#7) by the expected signer and key."""
    obs = _observation(kmodlab_case)
    record, expectation = kmodlab_case.record, kmodlab_case.expectation
    assert record is not None and expectation is not None and expectation.signing
    if obs.command(f"modinfo:{record['name']}")["rc"] == 0:
        found = checks.module_signature(record, obs)
        record_property(FACTS, {"signature": found})
    problems = checks.signature(record, obs, expectation.kernel, expectation.signing)
    _verdict(kmodlab_case, problems, obs)


@check("signed", signing="trusted")
def test_taint(kmodlab_case: Case) -> None:
    """A loaded module carries no taint E where the kernel trusts the certificate."""
    assert kmodlab_case.expectation is not None and kmodlab_case.expectation.signing
    signing = kmodlab_case.expectation.signing
    _module(kmodlab_case, lambda rec, obs, kernel: checks.taint(rec, obs, kernel, signing))


@check("verified", kind="functional")
def test_functional(kmodlab_case: Case) -> None:
    """A functional check of the manifest: its writes and reads behave as declared."""
    obs = _observation(kmodlab_case)
    assert kmodlab_case.record is not None and kmodlab_case.functional_index is not None
    problems = checks.functional(kmodlab_case.record, kmodlab_case.functional_index, obs)
    _verdict(kmodlab_case, problems, obs)
