# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel log: one reader and its parsers, for the kmod_load probe, its filters and
the verify collector.

Runs on the target (as Ansible module_utils, and inside the verify collector's zip) and
on the controller (filters, verify checks), so only the standard library is used.

- ``read_kernel_log``: the records of ``/dev/kmsg`` (sequence number, level, message),
  else ``dmesg --notime``, else ``journalctl -k`` (no sequence numbers or levels then);
- what the kernel said about a module: the lines that name it (``mention_regex``),
  the parameters it refused (``param_errors``), the lines that explain a refused load
  (``failure_lines``), the value a module printed for a parameter sysfs does not show
  (``logged_value``), patterns that never matched (``missing_patterns``).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ansible_collections.kmodlab.lab.plugins.module_utils.files import host_path
from ansible_collections.kmodlab.lab.plugins.module_utils.params import (
    BOOL_TYPES,
    ParamError,
    declarations,
    sysfs_value,
)

KMSG = "/dev/kmsg"
_KMSG_RECORD = re.compile(r"^(\d+),(\d+),(-?\d+),[^;]*;(.*)$")
# The fallbacks when /dev/kmsg cannot be read, in order: argv and the source name.
FALLBACKS = (
    ("dmesg", ["dmesg", "--notime"]),
    ("journalctl", ["journalctl", "-k", "-b", "-o", "cat", "--no-pager"]),
)
# Kernel log lines that are part of a stack dump, an oops or a WARN splat: where the
# kernel was, not why it failed (lib/dump_stack.c, arch/x86/kernel/dumpstack.c,
# kernel/panic.c).
TRACE_PATTERNS = (
    # a stack frame: " func+0x6a/0x1000 [mod]", " ? func.cold+0x17/0x24", " ? 0xffffffffc0a4c000"
    re.compile(r"^\s*(?:\?\s+)?[\w.$]+\+0x[0-9a-f]+/0x[0-9a-f]+(?:\s+\[[\w-]+(?:\s+\w+)?\])?\s*$"),
    re.compile(r"^\s*\?\s+(?:0x)?[0-9a-f]+\s*$"),
    re.compile(r"^\s*</?(?:TASK|IRQ|NMI|SOFTIRQ|EOE|EOI)>\s*$"),
    re.compile(r"^\s*Call Trace:"),
    re.compile(r"^\s*CPU: \d+ PID: \d+"),
    re.compile(r"^\s*(?:WARNING|BUG): CPU: \d+ PID: \d+"),
    re.compile(r"^\s*Hardware name: "),
    re.compile(r"^\s*Modules linked in:"),
    re.compile(r"^\s*Workqueue: "),
    re.compile(r"^\s*Code: "),
    re.compile(
        r"^\s*(?:RIP|EIP|ORIG_RAX|EFLAGS|PKRU|[RE][A-Z]{2}|R\d{1,2}|[CDEFGS]S|CR\d|DR\d):\s*[0-9a-f]{2,}"
    ),
    re.compile(r"^\s*(?:pc|lr|sp|x\d{1,2}) ?: [0-9a-f]{8,}"),
    re.compile(r"^\s*#PF: "),
    re.compile(r"^\s*(?:PGD|P4D|PUD|PMD|PTE) [0-9a-f]+"),
    re.compile(r"^\s*-+\[ (?:cut here|end trace [0-9a-f]*) \]-+\s*$"),
)
# Without kmsg levels (the dmesg fallback), what a warning or an error says.
_TROUBLE = re.compile(
    r"(?i)\b(?:fail(?:s|ed|ure)?|errors?|cannot|can't|unable|invalid|refus\w*|denied|"
    r"busy|duplicate|exists?|not found|no such|warning|bug|oops|-E[A-Z]+)\b"
)
# The level of a kmsg record at or below which it is a warning or worse (KERN_WARNING).
_WARNING = 4
# What the kernel prints when it refuses or ignores a parameter (kernel/params.c,
# kernel/module/main.c). Group "param" names the parameter, "value" the value given.
PARAM_ERROR_PATTERNS = (
    re.compile(r"`(?P<value>[^']*)' invalid for parameter `(?P<param>[^']+)'"),
    re.compile(r"`(?P<value>[^']*)' too large for parameter `(?P<param>[^']+)'"),
    re.compile(r"[Uu]nknown parameter `(?P<param>[^']+)'"),
    re.compile(r"unknown parameter '(?P<param>[^']+)' ignored"),
)


def parse_kmsg_levels(text: str | None) -> list[tuple[int, int, str]]:
    """Records of /dev/kmsg text (``pri,seq,usec,flags;message``) as
    ``[(seq, level, message)]``; level is the syslog level (0 emerg .. 7 debug).

    Continuation lines (`` KEY=value``) are skipped.
    """
    records = []
    for line in (text or "").splitlines():
        match = _KMSG_RECORD.match(line)
        if match:
            records.append((int(match.group(2)), int(match.group(1)) & 7, match.group(4)))
    return records


def parse_kmsg(text: str | None) -> list[tuple[int, str]]:
    """Records of /dev/kmsg text as ``[(seq, message)]`` (see parse_kmsg_levels)."""
    return [(record[0], record[2]) for record in parse_kmsg_levels(text)]


def read_kmsg(
    path: str, levels: bool = False
) -> list[tuple[int, int, str]] | list[tuple[int, str]] | None:
    """The kernel ring buffer as ``[(seq, message)]`` from /dev/kmsg, or None if unreadable;
    ``[(seq, level, message)]`` with ``levels``.

    Each read() of /dev/kmsg returns one record; EAGAIN means the end. EPIPE means a
    record was overwritten while reading, and reading goes on. A regular file (tests)
    is read to its end.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    chunks = []
    try:
        while True:
            try:
                data = os.read(fd, 16384)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    continue
                if exc.errno == errno.EAGAIN:
                    break
                return None
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(fd)
    text = b"".join(chunks).decode("utf-8", "replace")
    return parse_kmsg_levels(text) if levels else parse_kmsg(text)


def run_command(argv: Sequence[str]) -> tuple[int, str, str]:
    """``(rc, stdout, stderr)`` of ``argv`` (standard library; the Ansible modules pass
    their own runner to ``read_kernel_log``). rc 127 when the program is missing."""
    program = shutil.which(argv[0])
    if not program:
        return 127, "", f"{argv[0]}: command not found"
    try:
        proc = subprocess.run([program, *argv[1:]], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 126, "", str(exc)
    return (
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


def read_kernel_log(
    root: str | None = "/", run: Callable[[list[str]], tuple[int, str, str]] | None = None
) -> dict[str, Any]:
    """The kernel log: ``{"source", "records": [(seq, level, message)]}``, oldest first.

    source is ``kmsg`` (``/dev/kmsg``: sequence numbers and syslog levels), else
    ``dmesg`` (``dmesg --notime``), else ``journalctl`` (``journalctl -k -b``), with
    seq and level None; ``none`` (no records, ``error`` says why) when nothing can be
    read. ``run(argv) -> (rc, stdout, stderr)`` runs the fallbacks (default
    ``run_command``). Under another ``root`` (tests, chroots) only its /dev/kmsg counts.
    """
    records = read_kmsg(host_path(root, KMSG), levels=True)
    if records is not None:
        return {"source": "kmsg", "records": records}
    if (root or "/") != "/":
        return {"source": "none", "records": [], "error": f"{host_path(root, KMSG)} unreadable"}
    run = run or run_command
    error = f"{KMSG} unreadable"
    for source, argv in FALLBACKS:
        rc, out, err = run(argv)
        if rc == 0:
            return {"source": source, "records": [(None, None, ln) for ln in out.splitlines()]}
        error = (err or "").strip() or f"{argv[0]} exited with {rc}"
    return {"source": "none", "records": [], "error": error}


def messages(log: dict[str, Any]) -> list[str]:
    """The messages of ``read_kernel_log()``, oldest first."""
    return [record[2] for record in log["records"]]


def mention_regex(record: dict[str, Any]) -> re.Pattern[str]:
    """Regex for kernel lines that name the module (``hello_5`` or ``hello-5`` as a word)."""
    names = sorted({record["kmod"], record["name"]}, key=len, reverse=True)
    alt = "|".join(re.escape(n) for n in names)
    return re.compile(rf"(?<![A-Za-z0-9_-])(?:{alt})(?![A-Za-z0-9_-])")


def param_errors(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Parameters the kernel refused or ignored, parsed from its messages."""
    errors = []
    seen = set()
    for line in lines:
        for pattern in PARAM_ERROR_PATTERNS:
            match = pattern.search(line)
            if match:
                param = match.group("param")
                if (param, line) not in seen:
                    seen.add((param, line))
                    errors.append(
                        {
                            "param": param,
                            "value": match.groupdict().get("value"),
                            "message": line.strip(),
                        }
                    )
                break
    return errors


def trace_line(line: str) -> bool:
    """Whether a kernel line is part of a stack dump, oops or WARN splat (not a reason)."""
    return any(pattern.search(line) for pattern in TRACE_PATTERNS)


def since_unload(lines: list[str], unload_patterns: Iterable[str] | None) -> list[str]:
    """``lines`` after the last one matching an ``unload_patterns`` regex (all if none).

    For a loaded module, that is what the kernel said since its last load.
    """
    regexes = []
    for pattern in unload_patterns or []:
        try:
            regexes.append(re.compile(pattern))
        except re.error:
            continue
    cut = 0
    for index, line in enumerate(lines):
        if any(regex.search(line) for regex in regexes):
            cut = index + 1
    return lines[cut:]


def failure_lines(
    records: Sequence[tuple[int | None, str]],
    regex: re.Pattern[str],
    unload_patterns: Iterable[str] | None = (),
    limit: int = 6,
) -> list[str]:
    """The kernel lines that explain why loading a module failed, oldest first.

    records: ``[(level or None, message)]`` since the load began (level from /dev/kmsg;
             None when unknown, then the words of the line decide)
    regex:   mention_regex() of the module
    unload_patterns: its manifest's unload messages; what came before the last of them
             belongs to its unload, not to the failed load

    Stack frames, register dumps and the other lines of a dump (``Call Trace:``,
    ``func+0x6a/0x1000 [mod]``, ``RIP:``, ``CPU: 1 PID:``, ``Hardware name:`` ...) say
    where the kernel was, not why, and are dropped. Kept are the lines that name the
    module and the warnings and errors from the dump the module first shows up in (the
    kernel's reason for a dump comes just before it, e.g. ``sysfs: cannot create
    duplicate filename``) onwards; the last ``limit`` of them.
    """
    messages = [record[1] for record in records]
    start = len(messages) - len(since_unload(messages, unload_patterns))
    window = list(records[start:])
    traces = [trace_line(record[1]) for record in window]
    mentions = [bool(regex.search(record[1])) for record in window]
    begin = 0
    if any(mentions):
        begin = mentions.index(True)
        if traces[begin]:
            while begin > 0 and traces[begin - 1]:
                begin -= 1
            if begin > 0:
                begin -= 1  # the line the dump was printed for
    out = []
    for index in range(begin, len(window)):
        level, message = window[index]
        if traces[index] or not message.strip():
            continue
        # a warning or worse; without a level (dmesg), a line that says what went wrong
        trouble = bool(_TROUBLE.search(message)) if level is None else level <= _WARNING
        if mentions[index] or trouble:
            out.append(message.strip())
    return out[-limit:] if limit else out


def modprobe_error(text: str | None) -> str | None:
    """modprobe's own complaint in its output, e.g. ``could not insert 'memory': Device
    or resource busy``, without the ``modprobe: ERROR:`` prefix; None if it has none."""
    found = []
    for line in (text or "").splitlines():
        line = line.strip()
        if not line.startswith(("modprobe:", "insmod:")):
            continue
        line = re.sub(r"^(?:modprobe|insmod):\s*(?:ERROR:|FATAL:)?\s*", "", line)
        if line and line not in found:
            found.append(line)
    return "; ".join(found) or None


def logged_value(
    decl: dict[str, Any], lines: Iterable[str] | None, unload_patterns: Iterable[str] | None = ()
) -> dict[str, str] | None:
    """What a module last printed for parameter ``decl``, from its manifest ``log`` regex.

    lines: the kernel log, oldest first; only the lines since the module's last load
    count (after its last unload message, see since_unload), and of those the newest
    match. Returns ``{"text": value as sysfs would show it, "line": the kernel line}``,
    or None when the parameter has no ``log`` or nothing matches (the message is not
    in the log, e.g. the ring buffer has moved on). The captured text is normalised
    like a wanted value (``0x10`` -> ``16``, ``1``/``true`` -> ``Y``) when it can be.
    """
    pattern = decl.get("log")
    if not pattern:
        return None
    try:
        regex = re.compile(pattern)
    except re.error:
        return None
    for line in reversed(since_unload(list(lines or []), unload_patterns)):
        match = regex.search(line)
        if match and match.groupdict().get("value") is not None:
            return {"text": _logged_text(decl, match.group("value")), "line": line.strip()}
    return None


_WORDS = {"true": "Y", "yes": "Y", "on": "Y", "false": "N", "no": "N", "off": "N"}


def _logged_text(decl: dict[str, Any], text: str) -> str:
    text = text.strip()
    parts = text.split(",") if decl.get("array") else [text]
    if decl.get("type") in BOOL_TYPES:
        parts = [_WORDS.get(part.strip().lower(), part.strip()) for part in parts]
    try:
        return sysfs_value(decl, parts if decl.get("array") else parts[0])
    except ParamError:
        return text


def logged_params(record: dict[str, Any], lines: Iterable[str] | None) -> dict[str, dict[str, str]]:
    """``{name: logged_value(...)}`` of the parameters of ``record`` that have a ``log``
    regex and whose value is in ``lines`` since the module's last load."""
    manifest = record.get("manifest") or {}
    dmesg = (manifest.get("expect") or {}).get("dmesg") or {}
    out = {}
    for name, decl in sorted(declarations(record).items()):
        found = logged_value(decl, lines, dmesg.get("unload"))
        if found is not None:
            out[name] = found
    return out


def missing_patterns(patterns: Iterable[str] | None, lines: Sequence[str]) -> list[str]:
    """Regexes of ``patterns`` that match none of ``lines``."""
    out = []
    for pattern in patterns or []:
        try:
            regex = re.compile(pattern)
        except re.error:
            out.append(pattern)
            continue
        if not any(regex.search(line) for line in lines):
            out.append(pattern)
    return out
