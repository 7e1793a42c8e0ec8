"""What the fleet builds and what each host gets: ABI grouping, on the controller.

The hosts of a play run kernels (``ansible_facts.kernel``); the operator may name target
kernels (a kernel about to be installed). Every module some host selects (state present
or config) is built once for every ABI some host runs and for every target kernel, whatever
the host count; each host then gets the packages of its own modules for its running ABI
and for the target kernels (the host installs those whose kernel it has).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

# A Debian kernel ABI as it appears in `uname -r` and package names: 6.1.0-57-amd64.
ABI_RE = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+-[0-9]+-[a-z0-9]+$")
BUILT_STATES = ("present", "config")


class PlanError(ValueError):
    """Input the fleet cannot build for; the message says what to fix."""


@dataclass(frozen=True)
class HostInput:
    """One play host: its running kernel and its resolved selection records."""

    kernel: str | None
    records: list[dict[str, Any]]


@dataclass
class Work:
    """What to build: the records (one per module, dependencies first) and the ABIs."""

    records: list[dict[str, Any]]
    abis: list[str]
    targets: list[str]
    hosts: dict[str, HostInput] = field(default_factory=dict)


class FailureLike(Protocol):
    module: str
    abi: str
    message: str


class BuiltLike(Protocol):
    descriptors: dict[str, list[dict[str, Any]]]
    failures: list[Any]


def check_kernels(kernels: Iterable[Any]) -> list[str]:
    """The target kernels, checked: each a Debian kernel ABI (``6.1.0-57-amd64``)."""
    out: list[str] = []
    for kernel in kernels:
        text = str(kernel).strip()
        if text.startswith("linux-image-"):
            text = text[len("linux-image-") :]
        if not ABI_RE.match(text):
            raise PlanError(
                f"target kernel {kernel!r} is not a kernel ABI such as 6.1.0-57-amd64 "
                "(what `uname -r` prints on a host running it; `apt-cache search "
                "^linux-image-6` lists the available ones)"
            )
        if text not in out:
            out.append(text)
    return out


def group(hosts: Mapping[str, HostInput], targets: Iterable[str] = ()) -> Work:
    """The modules and ABIs to build for ``hosts`` and the target kernels.

    A host without a known kernel (facts not gathered: unreachable) adds no ABI. Two
    hosts selecting different versions of one module fail: one build per module and ABI.
    """
    abis: list[str] = []
    records: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for name, host in hosts.items():
        if host.kernel:
            if not ABI_RE.match(host.kernel):
                raise PlanError(
                    f"{name} runs kernel {host.kernel!r}, which is not a Debian kernel ABI "
                    "(6.1.0-57-amd64): the fleet path builds for Debian kernels"
                )
            if host.kernel not in abis:
                abis.append(host.kernel)
        for record in host.records:
            if record.get("state", "present") not in BUILT_STATES:
                continue
            seen = records.get(record["name"])
            if seen is None:
                records[record["name"]] = dict(record)
                order.append(record["name"])
            elif seen["version"] != record["version"]:
                raise PlanError(
                    f"module {record['name']}: hosts select versions {seen['version']} and "
                    f"{record['version']} (different manifest folders?); the fleet builds "
                    "one version per module: select one manifest folder for all hosts"
                )
    target_list = list(targets)
    for kernel in target_list:
        if kernel not in abis:
            abis.append(kernel)
    return Work(
        records=_dependencies_first([records[n] for n in order]),
        abis=abis,
        targets=target_list,
        hosts=dict(hosts),
    )


def _dependencies_first(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name = {r["name"]: r for r in records}
    done: list[str] = []

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in done or name not in by_name:
            return
        if name in stack:
            raise PlanError(f"modules depend on each other in a cycle: {' -> '.join(stack)}")
        for dep in (by_name[name].get("manifest") or {}).get("depends") or []:
            visit(dep, (*stack, name))
        done.append(name)

    for record in records:
        visit(record["name"], ())
    return [by_name[n] for n in done]


def packages_per_host(
    work: Work, packages: Mapping[str, list[dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """Each host's packages: its present/config modules, for its running kernel and for
    every target kernel (the host installs those whose kernel it has)."""
    out: dict[str, dict[str, Any]] = {}
    for name, host in work.hosts.items():
        wanted = {r["name"] for r in host.records if r.get("state", "present") in BUILT_STATES}
        abis = [a for a in [host.kernel, *work.targets] if a]
        abis = list(dict.fromkeys(abis))
        chosen = [pkg for abi in abis for pkg in packages.get(abi, []) if pkg["module"] in wanted]
        out[name] = {"kernel": host.kernel, "abis": abis, "packages": chosen}
    return out


def summary(work: Work, built: BuiltLike) -> list[str]:
    """One line per ABI: what was compiled, what came from the cache."""
    lines = []
    for abi in work.abis:
        pkgs = built.descriptors.get(abi, [])
        compiled = sorted(p["module"] for p in pkgs if p.get("compiled"))
        cached = sorted(p["module"] for p in pkgs if not p.get("compiled"))
        lines.append(
            f"{abi}: {len(compiled)} compiled"
            + (f" ({', '.join(compiled)})" if compiled else "")
            + f", {len(cached)} from the cache"
        )
    for failure in built.failures:
        lines.append(f"{failure.abi}: {failure.module} failed: {failure.message}")
    return lines
