# GPL-2.0-only
"""Target-side helpers for kmodlab's DKMS module: ``dkms status`` parsing and source digests.

This file is shipped to managed hosts inside the module payload (ansible.cfg names the
``module_utils`` folder), where the ``kmodlab`` package is not installed: standard library
only, Python 3.8+.

``dkms status`` formats handled (one line per module/version/kernel/arch):

* dkms >= 3.0: ``NAME/VERSION, KERNEL, ARCH: STATUS`` and ``NAME/VERSION: added``
* dkms 2.x:    ``NAME, VERSION, KERNEL, ARCH: STATUS`` and ``NAME, VERSION: added``
* weak installs (RHEL): ``NAME, VERSION, KERNEL, ARCH: installed-weak from KERNEL2``
* suffixes: ``(original_module exists)``, ``(WARNING! Diff between built and installed
  module!)``, ``(WARNING! Missing some built modules!)`` (3.0) and ``(Differences between
  built and installed modules)`` (3.1+), any number of them.

Anything else dkms prints (deprecation notices, ``Error! ...`` lines for broken trees) is
kept in ``unparsed`` rather than guessed at.
"""

from __future__ import absolute_import, division, print_function

import hashlib
import os
import re

__metaclass__ = type

STATUS_ORDER = ("absent", "added", "built", "installed")

_FIELD = r"[^\s,:/]+"
_NEW_FORMAT = re.compile(
    r"^(?P<name>{f})/(?P<version>{f})"
    r"(?:,\s*(?P<kernel>{f}),\s*(?P<arch>{f}))?"
    r":\s*(?P<status>[A-Za-z][A-Za-z-]*)(?P<rest>.*)$".format(f=_FIELD)
)
_OLD_FORMAT = re.compile(
    r"^(?P<name>{f}),\s*(?P<version>{f})"
    r"(?:,\s*(?P<kernel>{f}),\s*(?P<arch>{f}))?"
    r":\s*(?P<status>[A-Za-z][A-Za-z-]*)(?P<rest>.*)$".format(f=_FIELD)
)
_NOTE = re.compile(r"\(([^()]*)\)")
_WEAK_FROM = re.compile(r"\bfrom\s+(\S+)")


def parse_status_line(line):
    """One ``dkms status`` line as a dict, or None when it is not a status line."""
    line = line.strip()
    if not line:
        return None
    match = _NEW_FORMAT.match(line) or _OLD_FORMAT.match(line)
    if match is None:
        return None
    rest = match.group("rest")
    notes = [n.strip() for n in _NOTE.findall(rest)]
    lowered = [n.lower() for n in notes]
    weak_from = _WEAK_FROM.search(_NOTE.sub("", rest))
    return {
        "name": match.group("name"),
        "version": match.group("version"),
        "kernel": match.group("kernel"),
        "arch": match.group("arch"),
        "status": match.group("status").lower(),
        "notes": notes,
        # dkms compares the built .ko with the one in /lib/modules: someone replaced it.
        "diff": any("diff" in n and "install" in n for n in lowered),
        # The DKMS tree lacks a .ko it should hold: the build is incomplete.
        "missing": any("missing" in n for n in lowered),
        "weak_from": weak_from.group(1) if weak_from else None,
        "line": line,
    }


def parse_status(text):
    """Parse ``dkms status`` output: returns (entries, unparsed_lines)."""
    entries = []
    unparsed = []
    for raw in (text or "").splitlines():
        entry = parse_status_line(raw)
        if entry is not None:
            entries.append(entry)
        elif raw.strip():
            unparsed.append(raw.strip())
    return entries, unparsed


def _rank(status):
    if status in ("installed", "installed-weak"):
        return "installed"
    if status == "built":
        return "built"
    return "added"


def versions_on_kernel(entries, name, kernel):
    """``{version: status}`` of every registered version of ``name``, seen from ``kernel``.

    A version built or installed for another kernel only, or merely added, counts as
    ``added`` here (it is registered, but does nothing for ``kernel``); ``broken`` (dkms
    3.1+, source folder gone) is kept as is.
    """
    out = {}
    for e in entries:
        if e["name"] != name:
            continue
        current = out.get(e["version"])
        if e["status"] == "broken":
            out[e["version"]] = "broken"
            continue
        if current == "broken":
            continue
        status = _rank(e["status"]) if e["kernel"] == kernel else "added"
        if current is None or STATUS_ORDER.index(status) > STATUS_ORDER.index(current):
            out[e["version"]] = status
    return out


def entry_for(entries, name, version, kernel):
    """The status entry of ``name/version`` for ``kernel`` (built or installed), or None."""
    for e in entries:
        if e["name"] == name and e["version"] == version and e["kernel"] == kernel:
            return e
    return None


def kernels_installed(entries, name, version):
    """Kernels on which ``name/version`` is installed (removing it needs depmod there)."""
    return sorted(
        {
            e["kernel"]
            for e in entries
            if e["name"] == name
            and e["version"] == version
            and e["kernel"]
            and e["status"] in ("installed", "installed-weak")
        }
    )


def status_lines(entries, name):
    """The ``dkms status`` lines about ``name``, for diffs."""
    return [e["line"] for e in entries if e["name"] == name]


def tail(text, lines):
    """The last ``lines`` lines of ``text``."""
    if not text:
        return []
    return text.splitlines()[-lines:] if lines > 0 else []


def read_tail(path, lines):
    """The last ``lines`` lines of a file, or None when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except (IOError, OSError):
        return None
    return tail(data.decode("utf-8", errors="replace"), lines)


def source_digest(path):
    """sha256 over every regular file below ``path`` (relative names and contents).

    Recorded beside each build so a later run can tell that the sources in
    ``/usr/src/NAME-VERSION`` changed since the module was built.
    """
    digest = hashlib.sha256()
    if not os.path.isdir(path):
        return None
    found = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for filename in files:
            full = os.path.join(root, filename)
            if os.path.isfile(full) and not os.path.islink(full):
                found.append(os.path.relpath(full, path))
    for rel in sorted(found):
        with open(os.path.join(path, rel), "rb") as handle:
            content = handle.read()
        digest.update(rel.encode("utf-8", errors="surrogateescape"))
        digest.update(b"\0")
        digest.update(hashlib.sha256(content).hexdigest().encode("ascii"))
        digest.update(b"\n")
    return digest.hexdigest()
