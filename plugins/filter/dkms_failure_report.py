# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters for the dkms_module role."""

from __future__ import annotations

from typing import Any

DOCUMENTATION = r"""
name: dkms_failure_report
short_description: What went wrong in a kmodlab.lab.dkms run, one block per failed module
description:
  - Takes the registered result of M(kmodlab.lab.dkms) and returns the lines to show.
  - A summary line, then for each failed package its version, the step that failed, the
    message, the last lines of its C(make.log), and which version of it is still installed
    (or that none is any more).
positional: _input
options:
  _input:
    description: The registered result of M(kmodlab.lab.dkms).
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Show the modules that failed
  ansible.builtin.debug:
    msg: "{{ dkms_run | kmodlab.lab.dkms_failure_report }}"
"""

RETURN = r"""
_value:
  description: The report, line by line; empty when no package failed.
  type: list
  elements: str
"""


def _installed(states: dict[str, str] | None) -> list[str]:
    return [version for version, status in (states or {}).items() if status == "installed"]


def dkms_failure_report(run: dict[str, Any]) -> list[str]:
    results = run.get("packages") or []
    failed = [r for r in results if r.get("failed")]
    if not failed:
        return []
    kernel = run.get("kernel") or "?"
    lines = [
        f"dkms_module: {len(failed)} of {len(results)} module(s) failed for kernel {kernel}; "
        "the others are handled."
    ]
    for r in failed:
        lines.append(f"{r['name']} {r['version']} ({r.get('step')} failed): {r.get('msg')}")
        tail = r.get("log_tail") or []
        if tail:
            lines.append("  make.log, last lines:")
            lines.extend(f"    {line}" for line in tail)
        kept, had = _installed(r.get("after")), _installed(r.get("before"))
        if kept:
            lines.append(f"  still installed: {r['name']} {', '.join(kept)}")
        elif had:
            lines.append(
                f"  no version of {r['name']} is installed any more (before: {', '.join(had)})"
            )
    return lines


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"dkms_failure_report": dkms_failure_report}
