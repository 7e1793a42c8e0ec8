# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Callback plugin kmodlab.lab.fleet_summary: who runs what at the end of a fleet rollout.

A batched rollout that stops (a failed health gate, an unreachable host) ends the whole
playbook: no later play or task can report. This callback sees every result instead, and
at the end prints, and writes as JSON and text beside the verify report, one line per host:
its state (rolled out, rolled back, failed, unreachable, untouched), the versions it runs
(the rollout state's good entries), its kernel, the signer, and why it failed. It is
silent for playbooks that roll nothing out (lab.yml).
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: fleet_summary
type: notification
short_description: Summary of a fleet rollout, per host, also when the rollout stopped
description:
  - At the end of a playbook that ran M(kmodlab.lab.kmod_packages) or M(kmodlab.lab.module_build)
    (C(fleet.yml)), prints which host runs which module versions (the rollout state's good
    entries), which was rolled back or failed and why, which was unreachable, and which
    was left untouched, and writes it as C(fleet.json) and C(fleet.txt) in the report folder.
  - Silent for other playbooks.
requirements:
  - enabled in ansible.cfg (callbacks_enabled)
options:
  report_dir:
    description: Folder of fleet.json and fleet.txt (the verify report's folder by default).
    type: path
    env:
      - name: KMODLAB_REPORT_DIR
    ini:
      - section: kmodlab
        key: report_dir
"""

import json
import os
import time
from pathlib import Path
from typing import Any

from ansible.plugins.callback import CallbackBase

PACKAGES = ("kmodlab.lab.kmod_packages", "kmod_packages")
BUILD = ("kmodlab.lab.module_build", "module_build")
FACTS = ("ansible.builtin.gather_facts", "gather_facts", "ansible.builtin.setup", "setup")
STATES = ("rolled out", "rolled back", "failed", "unreachable", "untouched")


def _default_report_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "kmodlab" / "reports"


def _good(rollout: dict[str, Any] | None) -> dict[str, Any]:
    return dict((rollout or {}).get("good") or {})


class HostTrack:
    """What the callback learnt of one host during the playbook."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.kernel: str | None = None
        self.before: dict[str, Any] = {}
        self.rollout: dict[str, Any] | None = None
        self.phases: list[str] = []
        self.failure: str | None = None
        self.unreachable: str | None = None

    def state(self) -> str:
        if self.unreachable:
            return "unreachable"
        if "rollback" in self.phases:
            return "rolled back"
        if self.failure:
            return "failed"
        if "commit" in self.phases:
            return "rolled out"
        return "untouched"

    def versions(self) -> dict[str, Any]:
        good = _good(self.rollout) if self.rollout is not None else self.before
        return {name: entry.get("version") for name, entry in sorted(good.items())}

    def row(self) -> dict[str, Any]:
        good = _good(self.rollout) if self.rollout is not None else self.before
        signers = sorted({str(e.get("signer")) for e in good.values() if e.get("signer")})
        pending = (self.rollout or {}).get("pending") or {}
        return {
            "host": self.name,
            "state": self.state(),
            "kernel": self.kernel,
            "modules": self.versions(),
            "pending": {n: e.get("version") for n, e in sorted(pending.items())},
            "signer": signers,
            "when": max((str(e.get("when") or "") for e in good.values()), default="") or None,
            "reason": self.unreachable or self.failure,
        }


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The text table of the summary rows."""
    lines = ["Fleet rollout summary (host: state, kernel, module versions)"]
    for row in rows:
        versions = ", ".join(f"{n} {v}" for n, v in row["modules"].items()) or "no modules"
        lines.append(f"  {row['host']}: {row['state']}, {row['kernel'] or '?'}: {versions}")
        if row["pending"]:
            lines.append(f"    installed, not yet gated: {row['pending']}")
        if row["signer"]:
            lines.append(f"    signed by {'; '.join(row['signer'])}")
        if row["reason"]:
            lines.append(f"    why: {' '.join(str(row['reason']).split())[:600]}")
    return lines


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "kmodlab.lab.fleet_summary"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.hosts: dict[str, HostTrack] = {}
        self.active = False

    def _host(self, result: Any) -> HostTrack:
        name = result._host.get_name()
        return self.hosts.setdefault(name, HostTrack(name))

    def v2_runner_on_ok(self, result: Any) -> None:
        action = result._task.action
        data = result._result
        track = self._host(result)
        if action in FACTS:
            facts = data.get("ansible_facts") or {}
            track.kernel = facts.get("ansible_kernel") or track.kernel
            local = (facts.get("ansible_local") or {}).get("kmodlab_rollout")
            if isinstance(local, dict) and track.rollout is None:
                track.before = _good(local)
        elif action in BUILD:
            self.active = True
        elif action in PACKAGES:
            self.active = True
            track.phases.append(str(result._task.args.get("state", "present")))
            if isinstance(data.get("rollout"), dict):
                track.rollout = data["rollout"]

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        if ignore_errors:
            return
        track = self._host(result)
        msg = result._result.get("msg") or result._result.get("stderr") or "failed"
        if isinstance(msg, list):
            msg = " ".join(str(m) for m in msg)
        # The first failure is the cause; the rescue's own "stop" message says the rest.
        if track.failure is None:
            track.failure = f"{result._task.get_name()}: {msg}"

    def v2_runner_on_unreachable(self, result: Any) -> None:
        track = self._host(result)
        track.unreachable = f"unreachable: {result._result.get('msg', '')}".strip()

    def v2_playbook_on_stats(self, stats: Any) -> None:
        if not self.active:
            return
        rows = [self.hosts[name].row() for name in sorted(self.hosts)]
        lines = summary_lines(rows)
        folder = Path(self.get_option("report_dir") or _default_report_dir())
        try:
            folder.mkdir(parents=True, exist_ok=True)
            doc = {"schema": 1, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "hosts": rows}
            (folder / "fleet.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
            (folder / "fleet.txt").write_text("\n".join(lines) + "\n")
            lines.append(f"Summary: {folder / 'fleet.txt'}")
        except OSError as exc:
            lines.append(f"(could not write the summary to {folder}: {exc})")
        self._display.banner("FLEET SUMMARY")
        for line in lines:
            self._display.display(line)
