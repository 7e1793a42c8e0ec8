# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What dpkg says about packages: the one parser of ``dpkg-query -W``, ``dpkg -L`` and
``dpkg --verify`` output in kmodlab.

Standard library only, Python 3.10+: it runs on managed hosts (inside a module's
payload or the verify collector's zip) and on the controller (the verify checks).

``db:Status-Abbrev`` is three letters: the wanted action (``u`` unknown, ``i`` install,
``h`` hold, ``r`` remove, ``p`` purge), the package's state (``n`` not-installed, ``c``
config-files, ``H`` half-installed, ``U`` unpacked, ``F`` half-configured, ``W``
triggers-awaited, ``t`` triggers-pending, ``i`` installed) and an error flag (a space,
or ``R`` reinst-required). "Installed" here means ``ii`` or ``hi`` without the error
flag ("install ok installed", or held there); "gone" means state ``n`` or ``c``: no
file of the package is left but (``c``) its configuration files, and kmodlab's
packages have none.
"""

from __future__ import annotations

import re
from typing import Any

# dpkg-query expands \t and \n in its format itself.
QUERY_FORMAT = "${Package}\\t${Version}\\t${db:Status-Abbrev}\\n"
WANTED = {"u": "unknown", "i": "install", "h": "hold", "r": "remove", "p": "purge"}
STATES = {
    "n": "not-installed",
    "c": "config-files",
    "H": "half-installed",
    "U": "unpacked",
    "F": "half-configured",
    "W": "triggers-awaited",
    "t": "triggers-pending",
    "i": "installed",
}
ERRORS = {" ": "ok", "R": "reinst-required"}
# dpkg --verify (rpm format): 9 result characters, a space, "c" for a conffile or a
# space, a space, the path, and " (strerror)" when it is missing for another reason
# than ENOENT.
_VERIFY_LINE = re.compile(r"^(?P<result>.{9}) (?P<attr>[c ]) (?P<path>/.*)$")


def query_argv(pattern: str = "kmodlab-*") -> list[str]:
    """``dpkg-query -W`` of the packages matching ``pattern``: name, version, status."""
    return ["dpkg-query", "-W", "-f=" + QUERY_FORMAT, pattern]


def list_argv(package: str) -> list[str]:
    return ["dpkg", "-L", package]


def verify_argv(package: str) -> list[str]:
    return ["dpkg", "--verify", package]


def status(abbrev: str) -> dict[str, Any]:
    """One ``db:Status-Abbrev`` value, in words: ``{abbrev, want, state, error,
    installed, gone, text}`` (``text``: e.g. "ii (install ok installed)")."""
    letters = (abbrev + "   ")[:3]
    want = WANTED.get(letters[0], f"unknown want {letters[0]!r}")
    state = STATES.get(letters[1], f"unknown state {letters[1]!r}")
    error = ERRORS.get(letters[2], f"unknown error flag {letters[2]!r}")
    return {
        "abbrev": letters,
        "want": want,
        "state": state,
        "error": error,
        "installed": letters[0] in "ih" and letters[1] == "i" and letters[2] == " ",
        "gone": letters[1] in "nc",
        "text": f"{letters.rstrip()} ({want} {error} {state})",
    }


def parse_query(text: str) -> dict[str, dict[str, Any]]:
    """``{package: {package, version, **status(abbrev)}}`` from ``dpkg-query -W`` output
    in ``QUERY_FORMAT``; lines of another shape are left out."""
    packages: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) != 3 or not fields[0]:
            continue
        name, version, abbrev = fields
        packages[name] = {"package": name, "version": version, **status(abbrev)}
    return packages


def read_query(rc: int, stdout: str, stderr: str) -> dict[str, Any]:
    """``{"packages": parse_query(...)}`` of a ``dpkg-query -W`` run, or ``{"error"}``.
    dpkg-query exits 1 when no package matches, which is an empty answer, not an error."""
    if rc == 0 or (rc == 1 and "no packages found" in stderr):
        return {"packages": parse_query(stdout)}
    why = stderr.strip() or stdout.strip() or "no output"
    return {"error": f"dpkg-query exited with {rc}: {why}"}


def parse_list(text: str) -> list[str]:
    """The paths ``dpkg -L`` lists (its diversion notes left out)."""
    return [line for line in text.splitlines() if line.startswith("/")]


def parse_verify(text: str) -> list[dict[str, Any]]:
    """``dpkg --verify`` output: one ``{path, missing, digest, mode, line}`` per file that
    failed (``digest``: its MD5 is not the package's; ``mode``: not a regular file)."""
    found = []
    for line in text.splitlines():
        match = _VERIFY_LINE.match(line)
        if match is None:
            continue
        result, path = match.group("result"), match.group("path")
        missing = result.startswith("missing")
        found.append(
            {
                "path": re.sub(r" \([^()]*\)$", "", path) if missing else path,
                "missing": missing,
                "digest": not missing and result[2] == "5",
                "mode": not missing and result[1] == "M",
                "line": line,
            }
        )
    return found
