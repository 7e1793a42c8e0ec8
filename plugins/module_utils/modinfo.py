# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""``modinfo`` output: the one parser, for the kmod_load probe and the verify checks.

Runs on the target (as Ansible module_utils) and on the controller (verify checks), so
only the standard library is used.

``modinfo`` prints ``key: value`` lines, one module after the other, each starting with
its ``filename:`` line. A value may go on over lines that start with whitespace: the
hex dumps of ``sig_key`` and ``signature`` wrap so (each wrapped line ends with a
colon), and they are appended to the value they continue, without the whitespace.
``parse`` gives one ``{key: [values]}`` per module (a key such as ``parm`` or ``alias``
appears several times); ``signature`` the module signature's fields of one of them.
"""

from __future__ import annotations

import re

_FIELD = re.compile(r"^([A-Za-z0-9_.-]+):\s?(.*)$")
_HEX = re.compile(r"^(?:[0-9A-F]{2})+$")
SIGNATURE_FIELDS = ("signer", "sig_key", "sig_hashalgo", "sig_id")


def parse(text: str | None) -> list[dict[str, list[str]]]:
    """``modinfo`` output as one ``{key: [values]}`` per module, in output order.

    A ``filename:`` line starts a new module; lines before the first one (modinfo of a
    module given by path, or a fragment) form a module of their own. Values are
    stripped; a line that starts with whitespace continues the previous value and is
    appended to it without its whitespace. Other lines (no ``key:``) are ignored.
    """
    modules: list[dict[str, list[str]]] = []
    fields: dict[str, list[str]] | None = None
    key = None
    for line in (text or "").splitlines():
        if line[:1] in (" ", "\t"):
            if fields is not None and key is not None and line.strip():
                fields[key][-1] += line.strip()
            continue
        match = _FIELD.match(line)
        if not match:
            key = None
            continue
        key, value = match.group(1), match.group(2).strip()
        if fields is None or (key == "filename" and fields):
            fields = {}
            modules.append(fields)
        fields.setdefault(key, []).append(value)
    return modules


def first(fields: dict[str, list[str]], key: str) -> str | None:
    """The first value of ``key`` in one module's fields, or None (absent or empty)."""
    values = fields.get(key) or []
    return values[0] if values and values[0] else None


def normal_key(text: str | None) -> str | None:
    """A key identifier as modinfo shows ``sig_key``: upper-case hex bytes joined by
    colons (``1A:2B:...``), whitespace removed; a bare hex string gets its colons.
    None for None or an empty text."""
    if text is None:
        return None
    key = re.sub(r"\s+", "", text).upper()
    if not key:
        return None
    if ":" not in key and _HEX.match(key):
        key = ":".join(key[i : i + 2] for i in range(0, len(key), 2))
    return key


def signature(fields: dict[str, list[str]]) -> dict[str, str | None]:
    """The module signature of one module's fields (an entry of ``parse``):
    ``{"signer", "sig_key", "sig_hashalgo", "sig_id"}``, ``sig_key`` as ``normal_key``
    gives it. All None when the module is unsigned (modinfo shows no such field)."""
    out = {name: first(fields, name) for name in SIGNATURE_FIELDS}
    out["sig_key"] = normal_key(out["sig_key"])
    return out
