# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kernel module parameters: one normalisation for the kmod_load probe and filters, the
config files and the verify checks.

Runs on the target (as Ansible module_utils) and on the controller (filters, verify),
so only the standard library is used. Functions take manifest parameter declarations
(``name``, ``type``, ``array``, ``counted``, ``perm``, ``default``) and the records the
``kmodlab_modules`` lookup resolves, and work in the kernel's own terms:

- what ``/sys/module/KMOD/parameters/P`` shows for a value (``sysfs_value``; a
  fixed-size array, ``counted: false``, shows all its elements),
- the ``P=V`` arguments ``modprobe`` passes on (``param_tokens``), the ``options``
  line of ``/etc/modprobe.d`` (``options_string``) and how the kernel splits such a
  line again (``kernel_args``),
- the major a device asks for (``major_number``, ``wanted_major``): a major parameter
  of 0, like a manifest ``major: dynamic``, lets the kernel choose, so there is no
  fixed major (None) and no live value to compare (``dynamic_major``).
"""

from __future__ import annotations

import re
import shlex
from typing import Any

INT_TYPES = ("byte", "short", "ushort", "int", "uint", "long", "ulong")
BOOL_TYPES = ("bool", "invbool")
CHARP = "charp"


class ParamError(ValueError):
    """A wanted value that cannot be expressed for the kernel; the message names it."""


# --------------------------------------------------------------------------- values


def declarations(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Parameter declarations of a resolved record, by name."""
    manifest = record.get("manifest") or {}
    return {p["name"]: p for p in manifest.get("parameters") or []}


def visible(decl: dict[str, Any]) -> bool:
    """Whether the parameter shows under /sys/module/KMOD/parameters (perm != 0)."""
    return int(str(decl.get("perm") or "0"), 8) != 0


def major_params(record: dict[str, Any]) -> set[str]:
    """Names of parameters that choose a major number (manifest proc_devices)."""
    manifest = record.get("manifest") or {}
    expect = manifest.get("expect") or {}
    return {d["major_param"] for d in expect.get("proc_devices") or [] if d.get("major_param")}


def _scalar(decl: dict[str, Any], value: Any) -> str:
    ptype = decl.get("type")
    name = decl.get("name")
    if ptype in BOOL_TYPES:
        # The kernel shows bool and invbool alike: Y or N, in the sense given.
        if isinstance(value, bool):
            return "Y" if value else "N"
        if value in (1, "1", "Y", "y"):
            return "Y"
        if value in (0, "0", "N", "n"):
            return "N"
        raise ParamError(f"parameter {name}: {value!r} is not a boolean (use true/false)")
    if ptype == CHARP:
        if isinstance(value, (bool, list, dict)) or value is None:
            raise ParamError(f"parameter {name}: {value!r} is not a string")
        text = str(value)
        if '"' in text or "\n" in text or "\r" in text:
            raise ParamError(
                f"parameter {name}: {text!r} cannot be passed to the kernel "
                "(double quotes and newlines are not representable)"
            )
        if decl.get("array") and "," in text:
            raise ParamError(
                f"parameter {name}: element {text!r} of an array cannot contain a comma"
            )
        return text
    if ptype in INT_TYPES:
        if isinstance(value, bool):
            raise ParamError(f"parameter {name}: {value!r} is not an integer ({ptype})")
        try:
            return str(_to_int(value))
        except (TypeError, ValueError):
            raise ParamError(f"parameter {name}: {value!r} is not an integer ({ptype})") from None
    raise ParamError(f"parameter {name}: unknown type {ptype!r}")


def _to_int(value: Any) -> int:
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text, 0)
        except ValueError:
            return int(text, 10)
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


def fixed_size(decl: dict[str, Any]) -> bool:
    """Whether ``decl`` is an array without a count variable (manifest ``counted: false``)."""
    return bool(decl.get("array")) and decl.get("counted", True) is False


def arg_value(decl: dict[str, Any], value: Any) -> str:
    """The text of ``value`` as modprobe passes it on (``name=TEXT``), without padding.

    bool/invbool -> Y or N, integers -> decimal, charp -> the string, arrays -> the
    given elements joined by commas.
    """
    if decl.get("array"):
        if not isinstance(value, (list, tuple)):
            raise ParamError(f"parameter {decl.get('name')}: an array parameter takes a list")
        return ",".join(_scalar(decl, v) for v in value)
    if isinstance(value, (list, tuple)):
        raise ParamError(f"parameter {decl.get('name')}: takes a single value, not a list")
    return _scalar(decl, value)


def sysfs_value(decl: dict[str, Any], value: Any) -> str:
    """The text /sys/module/KMOD/parameters/NAME shows for ``value`` (without newline).

    As ``arg_value``, except for a fixed-size array (no count variable): the kernel's
    param_array_get then prints all ``max_count`` elements, the given ones first and
    the rest as the array was initialised (the manifest's ``default``), e.g.
    ``10,11,-1,-1`` for ``[10, 11]`` over ``[-1, -1, -1, -1]``.
    """
    if fixed_size(decl) and isinstance(value, (list, tuple)):
        initial = decl.get("default")
        if isinstance(initial, (list, tuple)):
            value = list(value) + list(initial)[len(value) :]
    return arg_value(decl, value)


def _decl_for(decls: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    try:
        return decls[name]
    except KeyError:
        known = ", ".join(sorted(decls)) or "none"
        raise ParamError(f"unknown parameter {name} (declared: {known})") from None


def normalise(decls: dict[str, dict[str, Any]], params: dict[str, Any] | None) -> dict[str, str]:
    """``{name: sysfs text}`` for wanted ``params``."""
    return {k: sysfs_value(_decl_for(decls, k), v) for k, v in sorted((params or {}).items())}


def normalise_args(
    decls: dict[str, dict[str, Any]], params: dict[str, Any] | None
) -> dict[str, str]:
    """``{name: argument text}`` for wanted ``params`` (what modprobe is given)."""
    return {k: arg_value(_decl_for(decls, k), v) for k, v in sorted((params or {}).items())}


def param_tokens(decls: dict[str, dict[str, Any]], params: dict[str, Any] | None) -> list[str]:
    """The ``name=value`` arguments, one per parameter, in name order (modprobe argv).

    modprobe itself puts double quotes around a value that contains spaces.
    """
    tokens = []
    for name, text in normalise_args(decls, params).items():
        decl = decls[name]
        if decl.get("array") and text == "":
            raise ParamError(
                f"parameter {name}: the kernel cannot take an empty array; leave the "
                "parameter out to get its default"
            )
        tokens.append(f"{name}={text}")
    return tokens


def args_string(decls: dict[str, dict[str, Any]], params: dict[str, Any] | None) -> str:
    """The ``params`` string for community.general.modprobe (it shlex-splits it)."""
    return " ".join(shlex.quote(t) for t in param_tokens(decls, params))


def options_string(decls: dict[str, dict[str, Any]], params: dict[str, Any] | None) -> str:
    """The arguments of an ``options KMOD ...`` line: values with spaces in double quotes."""
    out = []
    for token in param_tokens(decls, params):
        name, text = token.split("=", 1)
        if re.search(r"\s", text):
            out.append(f'{name}="{text}"')
        else:
            out.append(token)
    return " ".join(out)


def strip_newline(text: str | None) -> str | None:
    """sysfs values end with one newline; drop exactly that one."""
    if text is None:
        return None
    return text[:-1] if text.endswith("\n") else text


def args_from_texts(texts: dict[str, str]) -> str:
    """A shell-quoted modprobe ``params`` string from ``{name: sysfs text}``."""
    return " ".join(shlex.quote(f"{name}={texts[name]}") for name in sorted(texts))


def kernel_args(text: str | None) -> dict[str, str]:
    """``k=v k2="a b"`` as the kernel splits an argument string (double quotes group,
    no escapes): ``{k: v}``; the inverse of ``options_string``."""
    out = {}
    lexer = shlex.shlex(text or "", posix=True)
    lexer.whitespace_split = True
    lexer.quotes = '"'
    lexer.escape = ""
    for token in lexer:
        key, value = [*token.split("=", 1), ""][:2]
        out[key] = value
    return out


def default_text(decl: dict[str, Any]) -> str | None:
    """The sysfs text of a parameter's manifest default, or None when it has none."""
    try:
        return sysfs_value(decl, decl.get("default"))
    except ParamError:
        return None


# --------------------------------------------------------------------------- majors


def major_number(value: Any) -> int | None:
    """The major a major parameter's value (or a manifest ``major``) fixes: an int > 0,
    or None when the kernel chooses (0, ``"dynamic"``, unset, not a number)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = _to_int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def wanted_major(record: dict[str, Any], device: dict[str, Any]) -> int | None:
    """The major ``device`` (an ``expect.proc_devices`` entry of ``record``) must have:
    the wanted (else default) value of its ``major_param``, or its fixed ``major``;
    None when the kernel chooses (``major: dynamic``, a major parameter of 0)."""
    if device.get("major_param"):
        name = device["major_param"]
        decl = declarations(record).get(name) or {}
        return major_number((record.get("params") or {}).get(name, decl.get("default")))
    return major_number(device.get("major"))


def dynamic_major(record: dict[str, Any], name: str, text: str | None) -> bool:
    """Whether parameter ``name`` of ``record`` chooses a major and ``text`` (its sysfs
    text) lets the kernel choose it: the live value is then whatever the kernel took,
    nothing to compare."""
    return name in major_params(record) and major_number(text) is None
