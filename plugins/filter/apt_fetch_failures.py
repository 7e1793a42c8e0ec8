# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter for the kernel_headers role: the mirrors apt could not fetch from."""

from __future__ import annotations

import re
from typing import Any

DOCUMENTATION = r"""
name: apt_fetch_failures
short_description: The mirrors apt could not fetch from, with apt's reason
description:
  - Reads the C(Failed to fetch URL  WHY) lines of apt's output and returns one
    C(MIRROR (WHY)) per mirror, in the order apt reported them. The mirror is the URL
    without its C(dists/) or C(pool/) part.
positional: _input
options:
  _input:
    description: The output of C(apt-get update) or C(apt-get install) (stderr, or both).
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Name the mirrors apt could not reach
  ansible.builtin.debug:
    msg: "{{ apt_result.stderr | kmodlab.lab.apt_fetch_failures | join('; ') }}"
"""

RETURN = r"""
_value:
  description: One C(MIRROR (WHY)) per mirror; empty when apt fetched everything.
  type: list
  elements: str
"""

_FAILED = re.compile(r"Failed to fetch (\S+) +([^\r\n]*)")
_SUFFIX = re.compile(r"/(dists|pool)/.*$")


def apt_fetch_failures(output: str | None) -> list[str]:
    found: dict[str, str] = {}
    for url, why in _FAILED.findall(output or ""):
        found.setdefault(_SUFFIX.sub("", url), why.strip())
    return [f"{mirror} ({why})" for mirror, why in found.items()]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"apt_fetch_failures": apt_fetch_failures}
