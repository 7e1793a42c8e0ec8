# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters for the kmod_load role: parameter strings, the configuration files, the
local fact, failure messages.

Controller side. The normalisation, the file rule and the kernel log parsers are the
ones the target-side probe and the verify checks use (``plugins/module_utils``:
``params``, ``kmod_config``, ``kernel_log``).
"""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.kmodlab.lab.plugins.module_utils import kernel_log as _log
from ansible_collections.kmodlab.lab.plugins.module_utils import params as _params


def _record(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict) or "name" not in record or "manifest" not in record:
        raise AnsibleFilterError(f"{where}: expects a record of kmodlab.lab.selection")
    return record


def kmod_args(record: dict[str, Any]) -> str:
    """The ``params`` string of community.general.modprobe (shell-quoted k=v words)."""
    lib = _params
    rec = _record(record, "kmod_args")
    try:
        return lib.args_string(lib.declarations(rec), rec.get("params"))
    except lib.ParamError as exc:
        raise AnsibleFilterError(f"{rec['name']}: {exc}") from None


def kmod_load_problems(entry: dict[str, Any]) -> list[str]:
    """What is wrong after loading, from a probe entry read back with kernel_log_since.

    Empty when every visible wanted parameter has its value, none is missing from sysfs
    and the kernel neither refused nor ignored a parameter.
    """
    problems = []
    name = entry.get("name")
    if not entry.get("loaded"):
        problems.append(f"{name} is not loaded after modprobe")
    for err in entry.get("param_errors") or []:
        problems.append(f"{name}: the kernel refused parameter {err['param']}: {err['message']}")
    for param in entry.get("missing") or []:
        problems.append(
            f"{name}: parameter {param} is declared visible in the manifest but has no file "
            f"in /sys/module/{entry.get('kmod')}/parameters (the module does not have it?)"
        )
    for mismatch in entry.get("mismatches") or []:
        seen = ""
        if mismatch.get("source") == "kernel log":
            seen = f" by the module's message {mismatch.get('line')!r}"
        problems.append(
            f"{name}: parameter {mismatch['param']} is {mismatch['live']!r} after loading"
            f"{seen}, wanted {mismatch['wanted']!r}"
        )
    return problems


def kmod_load_failure(
    record: dict[str, Any],
    failed: dict[str, Any] | None,
    probe_entry: dict[str, Any] | None = None,
    restored: Any = None,
    previous: Any = None,
) -> str:
    """One readable message for a module that could not be loaded as wanted.

    record:      the resolved record
    failed:      ansible_failed_result of the task that failed (modprobe or the check)
    probe_entry: the probe entry read after the failure (kernel_explain, kernel_log,
                 param_errors)
    restored:    whether loading the previous configuration again succeeded
    previous:    the probe entry from before (previous.loaded, previous.params)

    It quotes modprobe's own error (``could not insert 'memory': Device or resource
    busy``) and the kernel's lines that explain it (the probe's ``kernel_explain``:
    the module's lines and the warnings and errors around the failure, never the
    frames of a call trace).
    """
    name = record.get("name")
    probe_entry = probe_entry or {}
    failed = failed or {}
    wanted = {}
    try:
        wanted = _params.normalise_args(_params.declarations(record), record.get("params"))
    except _params.ParamError:
        wanted = dict(record.get("params") or {})
    errors = probe_entry.get("param_errors") or []
    if errors:
        head = "; ".join(
            f"{name}: the kernel refused parameter {err['param']}="
            f"{wanted.get(err['param'], err.get('value'))}: {err['message']}"
            for err in errors
        )
    else:
        head = f"{name}: loading with {_show(wanted)} failed"
    said = _log.modprobe_error(f"{failed.get('stderr') or ''}\n{failed.get('msg') or ''}")
    detail = str(failed.get("msg") or failed.get("stderr") or "").strip()
    if said:
        head += f"; modprobe said {said!r}"
    elif detail:
        head += f" ({detail})"
    if "kernel_explain" in probe_entry:
        lines = list(probe_entry.get("kernel_explain") or [])
    else:
        lines = [ln for ln in probe_entry.get("kernel_log") or [] if not _log.trace_line(ln)]
    if lines and not errors:
        head += "; the kernel said: " + " | ".join(lines[-6:])
    parts = [head + ("" if head.endswith(".") else ".")]
    previous = previous or {}
    before = (previous.get("previous") or {}) if isinstance(previous, dict) else {}
    if before.get("loaded"):
        if _truthy(restored):
            parts.append(
                f"The previous configuration was loaded again ({_show(before.get('params'))})."
            )
        else:
            parts.append(
                f"Loading the previous configuration again ({_show(before.get('params'))}) "
                f"failed too: {name} is not loaded."
            )
    else:
        parts.append(f"{name} was not loaded before and is left unloaded.")
    return " ".join(parts)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "1")
    return bool(value)


def _show(params: dict[str, Any] | None) -> str:
    if not params:
        return "no parameters"
    return " ".join(f"{k}={v}" for k, v in sorted(params.items()))


def kmod_load_fact(
    records: list[dict[str, Any]] | None,
    failed: dict[str, Any] | None = None,
    recorded: dict[str, Any] | None = None,
    probes: list[list[dict[str, Any]] | None] | None = None,
) -> dict[str, Any]:
    """Content of /etc/ansible/facts.d/kmodlab_kmod_load.fact: ``{"modules": {...}}``.

    Each selected module maps to its kmod name, version, state, persist and wanted
    parameters, and for a present module the key id its installed file is signed with
    (``sig_key``, from the probes' ``installed``, the later probe winning: the file the
    kernel checked when it loaded the module). A module that failed keeps the entry of
    the last successful run (or none), so the fact always describes what was really
    applied.
    """
    failed = failed or {}
    recorded = recorded or {}
    if isinstance(recorded, dict) and isinstance(recorded.get("modules"), dict):
        recorded = recorded["modules"]
    signed: dict[str, str] = {}
    for probe in probes or []:
        for entry in probe or []:
            sig_key = (entry.get("installed") or {}).get("sig_key")
            if sig_key:
                signed[entry["name"]] = sig_key
    modules = {}
    for rec in records or []:
        name = rec["name"]
        if name in failed:
            if isinstance(recorded, dict) and name in recorded:
                modules[name] = recorded[name]
            continue
        modules[name] = {
            "kmod": rec["kmod"],
            "version": rec["version"],
            "state": rec["state"],
            "persist": bool(rec.get("persist", True)),
            "params": dict(sorted((rec.get("params") or {}).items())),
        }
        before = recorded.get(name) if isinstance(recorded, dict) else None
        sig_key = signed.get(name) or (before or {}).get("sig_key")
        if rec["state"] == "present" and sig_key:
            modules[name]["sig_key"] = sig_key
    return {"modules": modules}


def kmod_load_blocked(
    names: list[str], by_name: dict[str, dict[str, Any]], not_loaded: list[str]
) -> dict[str, list[str]]:
    """``{name: [failed modules it depends on]}`` for those of ``names`` (in order) that
    depend on a module in ``not_loaded``; the blockers in the order of its depends."""
    failed = set(not_loaded)
    out = {}
    for name in names:
        depends = (by_name[name].get("manifest") or {}).get("depends") or []
        blockers = [d for d in depends if d in failed]
        if blockers:
            out[name] = blockers
    return out


def kmod_load_batch(names: list[str], by_name: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries of kmodlab.lab.kmod_modprobe for ``names``, in order: ``{name, kmod,
    params}``, params being the module's modprobe arguments (the kmod_args filter's)."""
    return [
        {"name": name, "kmod": by_name[name]["kmod"], "params": kmod_args(by_name[name])}
        for name in names
    ]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "kmod_args": kmod_args,
            "kmod_load_blocked": kmod_load_blocked,
            "kmod_load_batch": kmod_load_batch,
            "kmod_load_problems": kmod_load_problems,
            "kmod_load_failure": kmod_load_failure,
            "kmod_load_fact": kmod_load_fact,
        }
