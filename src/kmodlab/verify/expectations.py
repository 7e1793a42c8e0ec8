"""Expectation files and the test cases they turn into.

kmod_verify's render phase writes one file per host on the controller,
``DIR/HOST.json``::

    {"schema": 1, "host": "lab1", "kernel": "6.1.0-18-amd64",
     "modules": [<records resolved by kmodlab.lab.selection, in load order>],
     "signing": null, "delivery": "dkms"}

A record carries the module's state, its wanted parameters and its whole manifest,
so every check is derived from it and nothing is written per module in the suite.

``signing`` (optional, null or absent: no signing checks) is what the host's modules
must be signed with: ``{"signer": the certificate's CN as modinfo shows it,
"sig_key": its key identifier as modinfo shows it ("1A:2B:..."), "fingerprint": the
certificate's SHA-256 (for messages), "trusted": whether the host's kernel trusts the
certificate (then a loaded module must not carry taint E)}``.

``delivery`` (optional, absent or null: ``"dkms"``) is how the host's modules arrive:
``"dkms"`` (built and installed by DKMS on the host: the DKMS tree, the .ko under
``updates/dkms``) or ``"deb"`` (the fleet path: one Debian package per module and kernel
ABI, built off the host, ``kmodlab.fleet.names``; the .ko under ``updates/kmodlab``). It
decides which build and install checks a module gets (``kmodlab.verify.suite``).

Each host becomes one host case (the expectation file exists and is valid, the
kernel is the one it was rendered for) and one module case per record; each
functional check of a present module becomes a case of its own. A host without an
expectation file still gets its host case, which fails: a missing file can never
pass as "zero tests".
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = 1
ENV_EXPECTATIONS = "KMODLAB_VERIFY_EXPECTATIONS"
ENV_REPORT_DIR = "KMODLAB_VERIFY_REPORT_DIR"
_RECORD_KEYS = ("name", "kmod", "version", "state", "params", "persist", "manifest")
_SIGNING_KEYS = {"signer": str, "sig_key": str, "fingerprint": str, "trusted": bool}
DELIVERIES = ("dkms", "deb")
DEFAULT_DELIVERY = "dkms"


class ExpectationError(ValueError):
    """An expectation file that is missing or malformed; the message says what to do."""


@dataclass(frozen=True)
class Expectation:
    host: str
    kernel: str
    modules: list[dict[str, Any]]
    path: Path
    # what the modules must be signed with (see the module docstring), or None
    signing: dict[str, Any] | None = None
    # how the modules arrive: "dkms" or "deb" (see the module docstring)
    delivery: str = DEFAULT_DELIVERY


def expectation_path(directory: str | Path, host: str) -> Path:
    return Path(directory) / f"{host}.json"


def load_expectation(directory: str | Path, host: str) -> Expectation:
    """Read and check ``DIR/HOST.json``."""
    path = expectation_path(directory, host)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExpectationError(
            f"no expectation file {path} for host {host}: run the kmod_verify role's render "
            "phase for this host (e.g. --tags kmod_verify_render), or point "
            f"{ENV_EXPECTATIONS} / --kmodlab-expectations at the folder it wrote"
        ) from None
    except (OSError, ValueError) as exc:
        raise ExpectationError(f"{path}: not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ExpectationError(f"{path}: expected a JSON object")
    if data.get("schema") != SCHEMA:
        raise ExpectationError(f"{path}: schema {data.get('schema')!r}, this suite reads {SCHEMA}")
    if data.get("host") != host:
        raise ExpectationError(f"{path}: written for host {data.get('host')!r}, not {host!r}")
    kernel = data.get("kernel")
    if not isinstance(kernel, str) or not kernel:
        raise ExpectationError(f"{path}: field kernel: the host's kernel release is missing")
    modules = data.get("modules")
    if not isinstance(modules, list):
        raise ExpectationError(f"{path}: field modules: expected a list of records")
    for index, rec in enumerate(modules):
        missing = [k for k in _RECORD_KEYS if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise ExpectationError(
                f"{path}: modules[{index}] lacks {', '.join(missing)} "
                "(records come from kmodlab.lab.selection)"
            )
    signing = _signing(path, data.get("signing"))
    delivery = data.get("delivery")
    if delivery is None:
        delivery = DEFAULT_DELIVERY
    elif delivery not in DELIVERIES:
        raise ExpectationError(
            f"{path}: field delivery: {delivery!r}, expected one of {', '.join(DELIVERIES)}"
        )
    return Expectation(
        host=host, kernel=kernel, modules=modules, path=path, signing=signing, delivery=delivery
    )


def _signing(path: Path, value: Any) -> dict[str, Any] | None:
    """The ``signing`` field checked: None, or a mapping with exactly its four keys."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ExpectationError(
            f"{path}: field signing: expected null or a mapping with "
            f"{', '.join(_SIGNING_KEYS)}, got {type(value).__name__}"
        )
    problems = [
        f"{key} ({kind.__name__})"
        for key, kind in _SIGNING_KEYS.items()
        if not isinstance(value.get(key), kind) or (kind is str and not value[key].strip())
    ]
    if problems:
        raise ExpectationError(
            f"{path}: field signing: {', '.join(problems)} missing or of the wrong type"
        )
    unknown = sorted(set(value) - set(_SIGNING_KEYS))
    if unknown:
        raise ExpectationError(f"{path}: field signing: unknown keys {', '.join(unknown)}")
    return dict(value)


def write_expectation(
    directory: str | Path,
    host: str,
    kernel: str,
    modules: list[dict[str, Any]],
    signing: dict[str, Any] | None = None,
    delivery: str = DEFAULT_DELIVERY,
) -> Path:
    """Write ``DIR/HOST.json`` the way kmod_verify's render phase does."""
    path = expectation_path(directory, host)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "schema": SCHEMA,
        "host": host,
        "kernel": kernel,
        "modules": modules,
        "signing": signing,
        "delivery": delivery,
    }
    path.write_text(json.dumps(data, indent=4, sort_keys=True) + "\n")
    return path


def resolve_directory(option: str | None, module_value: str | None = None) -> Path | None:
    """Where the expectation files are: option, then a test module's variable, then env."""
    for value in (option, module_value, os.environ.get(ENV_EXPECTATIONS)):
        if value:
            return Path(os.path.expanduser(str(value)))
    return None


@dataclass
class Case:
    """One parametrisation of a suite test."""

    kind: str  # "host", "module" or "functional"
    host_name: str
    host: Any = None  # testinfra Host (None when hosts could not be resolved)
    expectation: Expectation | None = None
    record: dict[str, Any] | None = None
    functional_index: int | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def module(self) -> str | None:
        return self.record["name"] if self.record else None

    @property
    def functional(self) -> dict[str, Any] | None:
        if self.record is None or self.functional_index is None:
            return None
        return self.record["manifest"]["expect"]["functional"][self.functional_index]

    @property
    def id(self) -> str:
        parts = [self.host_name]
        if self.record is not None:
            parts.append(self.record["name"])
        if self.functional is not None:
            parts.append(_slug(self.functional["name"]))
        return "/".join(parts)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "check"


def build_cases(
    hosts: Iterable[tuple[str, Any]],
    directory: Path | None,
    hosts_error: str | None = None,
) -> list[Case]:
    """All cases for ``hosts`` (name, testinfra host) from the files in ``directory``."""
    hosts = list(hosts)
    if hosts_error is not None or not hosts:
        why = hosts_error or (
            "no host to verify: the inventory and --hosts select none "
            "(give --hosts=ansible://all --ansible-inventory=FILE, or molecule's inventory)"
        )
        return [Case(kind="host", host_name="no-hosts", error=why)]
    cases: list[Case] = []
    for name, host in hosts:
        if directory is None:
            cases.append(
                Case(
                    kind="host",
                    host_name=name,
                    host=host,
                    error=(
                        "no expectation folder: pass --kmodlab-expectations=DIR or set "
                        f"{ENV_EXPECTATIONS} (kmod_verify's render phase writes DIR/HOST.json)"
                    ),
                )
            )
            continue
        try:
            exp = load_expectation(directory, name)
        except ExpectationError as exc:
            cases.append(Case(kind="host", host_name=name, host=host, error=str(exc)))
            continue
        cases.append(Case(kind="host", host_name=name, host=host, expectation=exp))
        for rec in exp.modules:
            cases.append(
                Case(kind="module", host_name=name, host=host, expectation=exp, record=rec)
            )
            if rec["state"] != "present":
                continue
            for index, _check in enumerate(rec["manifest"]["expect"].get("functional") or []):
                cases.append(
                    Case(
                        kind="functional",
                        host_name=name,
                        host=host,
                        expectation=exp,
                        record=rec,
                        functional_index=index,
                    )
                )
    return cases
