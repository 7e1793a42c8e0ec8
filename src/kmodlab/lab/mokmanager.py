"""Confirm pending MOK requests in shim's MokManager over a lab VM's serial console.

On a real host, ``mokutil --import`` (or ``--delete``) only records a request and its
one-time password; at the next boot shim starts MokManager, and a person at the console
confirms: a key press within its 10 s countdown, "Enroll MOK" (or "Delete MOK"),
"Continue", "Yes", the password, "Reboot". :func:`confirm` does the same through the VM's
serial port: it restarts the VM, reads MokManager's screen (the UEFI console, drawn with
ANSI cursor moves and colours) into :class:`Screen`, and presses the keys.

What MokManager really does, seen on Debian 12's shim 16.1 (shim-signed 1.51~1+deb12u1):

- the password is echoed as nothing at all (not even ``*``): only the key presses' screen
  updates reach the serial port, so the password is never in ``console.log``;
- after a confirmed request it goes back to its menu, "Continue boot" now "Reboot", the
  other request (if both an enrolment and a deletion are pending) still offered;
- a wrong password shows "ERROR / Password doesn't match" with "OK", then asks again (3
  tries in all; an empty one is "Invalid password length"); after the third, "Failed to
  enroll keys", back to the menu, and the request is gone at the next boot;
- "Reboot" resets the machine, and QEMU (``-no-reboot``) exits.

The serial stream is lossy: under load QEMU drops a byte now and then (seen: ~1 in 700,
also inside cursor moves). Texts are therefore matched allowing one wrong, missing or
extra character, and a menu choice is made by watching the highlighted item move, with a
neutral key (which makes MokManager redraw its items) when the screen is garbled.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from kmodlab.lab import vms
from kmodlab.lab.errors import LabError

Progress = Callable[[str], None]

UP, DOWN, ENTER = b"\x1b[A", b"\x1b[B", b"\r"
# Any key ends the countdown; in a menu a key other than Up/Down/Enter/Esc only makes
# MokManager redraw its items (shim's console_select).
ANY_KEY = b" "
REDRAW = b" "

# Screen texts, as MokManager (shim 16.1) draws them.
PROMPT = "Press any key to perform MOK management"
MENU_TITLE = "Perform MOK management"
CONTINUE_BOOT = "Continue boot"
REBOOT = "Reboot"
CONTINUE = "Continue"
YES = "Yes"
OK = "OK"
PASSWORD_PROMPT = "Password:"
WRONG_PASSWORD = "Password doesn't match"
BAD_LENGTH = "Invalid password length"
ERROR_TITLE = "ERROR"
# Past shim without MokManager: GRUB or the kernel speaks on the serial console.
BOOT_TEXTS = ("Welcome to GRUB!", "EFI stub:", "Loading Linux", "Loading, please wait", "login:")

STEP_TIMEOUT = 90.0  # one screen; MokManager redraws in well under 5 s even when busy
SETTLE = 0.4  # a screen is drawn when the stream has been quiet this long
MAX_MOVES = 16
PASSWORD_MAX = 256  # shim's PASSWORD_MAX; mokutil's limit too

BLACK, BLUE = 40, 44
_clock = time.monotonic  # the driver's clock (the tests replay sessions in fake time)
BOX = "│─┌┐└┘├┤┬┴┼║═╔╗╚╝"
_ESC_FINAL = re.compile(rb"[\x40-\x7e]")


@dataclass(frozen=True)
class Action:
    """One kind of MOK request and the texts of its screens."""

    name: str  # enroll | delete
    item: str  # its main-menu entry
    title: str  # title of its key list
    question: str  # the yes/no confirmation


ACTIONS = (
    Action("enroll", "Enroll MOK", "[Enroll MOK]", "Enroll the key(s)?"),
    Action("delete", "Delete MOK", "[Delete MOK]", "Delete the key(s)?"),
)


def near(needle: str, hay: str) -> bool:
    """``needle`` in ``hay``, allowing one wrong, missing or extra character when the
    needle is 6 characters or more (a byte lost on the serial line)."""
    if needle in hay:
        return True
    if len(needle) < 6:
        return False
    half = len(needle) // 2
    if needle[:half] not in hay and needle[half:] not in hay:
        return False  # one edit leaves one half whole: most texts stop here, cheaply
    prev = list(range(len(needle) + 1))
    for ch in hay:
        cur = [0]
        for i, nc in enumerate(needle, 1):
            cur.append(min(prev[i] + 1, cur[i - 1] + 1, prev[i - 1] + (nc != ch)))
        if cur[-1] <= 1:
            return True
        prev = cur
    return False


def _same(text: str, segment: str) -> bool:
    """A menu item or title equal to ``text``, up to one lost character when long."""
    if segment == text:
        return True
    return len(text) >= 6 and abs(len(segment) - len(text)) <= 1 and near(text, segment)


def _segments(text: str) -> list[str]:
    return [s.strip() for s in re.split(f"[{BOX}\n]", text) if s.strip()]


class Screen:
    """Just enough of a VT100 for the UEFI console on a serial line: a grid of
    characters with their background colour, and the text written since :meth:`mark`
    (cursor moves as line breaks) to see what a key press brought."""

    def __init__(self, rows: int = 25, cols: int = 80) -> None:
        self.cols = cols
        self.height = rows
        self.grid: dict[int, dict[int, tuple[str, int]]] = {}
        self.row = self.col = 1
        self.bg = BLACK
        self._pending = b""
        self._since: list[str] = []

    # --- input ------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        data = self._pending + data
        self._pending = b""
        i, n = 0, len(data)
        while i < n:
            b = data[i]
            if b == 0x1B:
                if i + 1 >= n:
                    self._pending = data[i:]
                    return
                if data[i + 1] != ord("["):
                    i += 1  # a lone ESC (its sequence lost): drop it
                    continue
                j = i + 2
                while j < n and 0x20 <= data[j] <= 0x3F:
                    j += 1
                if j >= n:
                    self._pending = data[i:]
                    return
                if not _ESC_FINAL.match(data[j : j + 1]):
                    i = j  # a broken sequence: drop it, keep the byte that broke it
                    continue
                self._csi(data[i + 2 : j].decode("ascii", "replace"), chr(data[j]))
                self._since.append("\n")
                i = j + 1
                continue
            self._byte(b)
            i += 1

    def _byte(self, b: int) -> None:
        if b == 0x0D:
            self.col = 1
        elif b == 0x0A:
            self._since.append("\n")
            self.row += 1
            if self.row > self.height:
                self._scroll()
        elif b == 0x08:
            self.col = max(1, self.col - 1)
        elif b >= 0x20 and b != 0x7F:
            ch = bytes([b]).decode("cp437")
            self.grid.setdefault(self.row, {})[self.col] = (ch, self.bg)
            self._since.append(ch)
            self.col += 1
            if self.col > self.cols:
                self.col = self.cols

    def _scroll(self) -> None:
        self.grid = {r - 1: cells for r, cells in self.grid.items() if r > 1}
        self.row = self.height

    def _csi(self, params: str, final: str) -> None:
        nums = [int(p) if p.isdigit() else 0 for p in params.split(";")] if params else []
        first = nums[0] if nums else 0
        if final in "Hf":
            self.row = max(1, nums[0] if nums else 1)
            self.col = max(1, nums[1] if len(nums) > 1 else 1)
            self.height = max(self.height, self.row)
        elif final == "J" and first == 2:
            self.grid.clear()
        elif final == "K":
            cells = self.grid.get(self.row, {})
            for c in [c for c in cells if c >= self.col]:
                del cells[c]
        elif final == "A":
            self.row = max(1, self.row - max(1, first))
        elif final == "B":
            self.row += max(1, first)
        elif final == "C":
            self.col = min(self.cols, self.col + max(1, first))
        elif final == "D":
            self.col = max(1, self.col - max(1, first))
        elif final == "m" and not params.startswith("="):
            for p in nums or [0]:
                if p == 0:
                    self.bg = BLACK
                elif 40 <= p <= 47:
                    self.bg = p

    # --- reading ----------------------------------------------------------------------

    def mark(self) -> None:
        """Forget what was written so far: :meth:`seen` looks at what comes after."""
        self._since = []

    def since(self) -> str:
        return "".join(self._since)

    def seen(self, text: str) -> bool:
        """``text`` written since the mark: a menu item, a title, a message."""
        return any(_same(text, s) or (len(text) >= 6 and near(text, s)) for s in self._segs())

    def _segs(self) -> list[str]:
        return _segments(self.since())

    def line(self, row: int) -> str:
        cells = self.grid.get(row, {})
        return "".join(cells.get(c, (" ", 0))[0] for c in range(1, self.cols + 1)).rstrip()

    def lines(self) -> list[str]:
        return [self.line(r) for r in range(1, self.height + 1)]

    def tail(self, count: int = 20) -> str:
        """The last ``count`` lines of the screen with text on them (no box drawing)."""
        text = []
        for line in self.lines():
            stripped = re.sub(f"[{BOX}]", " ", line).rstrip()
            if stripped.strip():
                text.append(stripped)
        return "\n".join(text[-count:]) or "(nothing on the screen)"

    def item_row(self, text: str) -> int | None:
        """The row of the menu item ``text`` (a segment of its own between box bars)."""
        found = [r for r in sorted(self.grid) if any(_same(text, s) for s in self._row_segs(r))]
        return found[-1] if found else None

    def _row_segs(self, row: int) -> list[str]:
        return _segments(self.line(row))

    def highlighted_rows(self) -> list[int]:
        """Rows of the highlighted menu item: letters on black on a blue screen."""
        rows = []
        for r, cells in sorted(self.grid.items()):
            letters = [bg for ch, bg in cells.values() if ch.isalnum()]
            blue = any(bg == BLUE for _ch, bg in cells.values())
            if blue and letters and all(bg == BLACK for bg in letters):
                rows.append(r)
        return rows


class Conn(Protocol):
    """The serial console: a connected unix socket, or a replay in the tests."""

    def recv(self, size: int, /) -> bytes: ...

    def sendall(self, data: bytes, /) -> None: ...

    def settimeout(self, value: float | None, /) -> None: ...


@dataclass
class Outcome:
    """What happened in MokManager (clock times from the driver's clock)."""

    actions: list[str] = field(default_factory=list)
    prompt_at: float | None = None  # None: no MokManager, the boot went on
    rebooted_at: float | None = None
    error: str | None = None  # the VM boots on, but the request was not confirmed


class Driver:
    """MokManager's screens, one step at a time: wait for the text, press the key."""

    def __init__(
        self,
        conn: Conn,
        password: str,
        progress: Progress = print,
        step_timeout: float = STEP_TIMEOUT,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.conn = conn
        self._password = password
        self.progress = progress
        self.step_timeout = step_timeout
        self.clock = clock or _clock
        self.screen = Screen()
        self.eof = False
        self.last_data = self.clock()

    # --- the serial line ---------------------------------------------------------------

    def _pump(self, until: float) -> None:
        """Read what the console sends, up to ``until`` (at most a fraction of a second)."""
        left = until - self.clock()
        if left <= 0 or self.eof:
            return
        self.conn.settimeout(min(left, 0.2))
        try:
            data = self.conn.recv(65536)
        except TimeoutError:
            return
        except OSError:
            data = b""
        if not data:
            self.eof = True
            return
        self.screen.feed(data)
        self.last_data = self.clock()

    def _send(self, data: bytes) -> None:
        self.screen.mark()
        try:
            self.conn.sendall(data)
        except OSError as exc:
            raise LabError(f"MokManager: cannot write to the serial console: {exc}") from None

    def _fail(self, step: str, why: str) -> LabError:
        return LabError(
            f"MokManager, step '{step}': {why}\n--- screen (last 20 lines) ---\n"
            f"{self.screen.tail(20)}"
        )

    def wait(
        self,
        step: str,
        choices: list[tuple[str, tuple[str, ...]]],
        timeout: float | None = None,
        settle: float = SETTLE,
    ) -> str:
        """The name of the first choice whose texts were seen since the last key press,
        once the screen is drawn (no output for ``settle`` s); LabError at the deadline."""
        deadline = self.clock() + (self.step_timeout if timeout is None else timeout)
        while True:
            if self.clock() - self.last_data >= settle or settle == 0:
                for name, texts in choices:
                    if any(self.screen.seen(t) for t in texts):
                        return name
            if self.eof:
                raise self._fail(step, "the console closed: QEMU exited")
            if self.clock() >= deadline:
                wanted = " or ".join(repr(t) for _n, texts in choices for t in texts)
                took = self.step_timeout if timeout is None else timeout
                raise self._fail(step, f"no {wanted} within {took:.0f} s")
            self._pump(deadline)

    def choose(self, step: str, item: str) -> None:
        """Move the highlight to ``item`` and press Enter, as a person would."""
        deadline = self.clock() + self.step_timeout
        for _move in range(MAX_MOVES):
            target = self.screen.item_row(item)
            lit = self.screen.highlighted_rows()
            if target is not None and lit == [target]:
                self._send(ENTER)
                return
            if target is not None and len(lit) == 1:
                key = DOWN if target > lit[0] else UP
            else:
                key = REDRAW  # the screen is garbled (a lost byte): have the items redrawn
            self._send(key)
            self.wait(step, [("redrawn", (item,))], max(1.0, deadline - self.clock()))
        raise self._fail(step, f"could not highlight {item!r}")

    # --- the dialogue -------------------------------------------------------------------

    def run(self, boot_timeout: float) -> Outcome:
        out = Outcome()
        first = self.wait(
            "boot to MokManager",
            [("prompt", (PROMPT,)), ("boot", BOOT_TEXTS)],
            boot_timeout,
            settle=0,
        )
        if first == "boot":
            return out
        out.prompt_at = self.clock()
        self.progress("MokManager: its prompt is up; pressing a key")
        self._send(ANY_KEY)
        done: list[Action] = []
        while True:
            seen = self.wait("MokManager menu", [("menu", (MENU_TITLE,)), ("boot", BOOT_TEXTS)])
            if seen == "boot":
                out.error = (
                    "MokManager's countdown ran out before the key press arrived: nothing "
                    "was confirmed and the request is still pending; run the command again"
                )
                return out
            offered = [a for a in ACTIONS if self.screen.item_row(a.item) is not None]
            again = [a.item for a in offered if a in done]
            if again:
                raise self._fail("MokManager menu", f"{again[0]!r} is still offered after it")
            if not offered and not done:
                raise self._fail(
                    "MokManager menu",
                    "neither 'Enroll MOK' nor 'Delete MOK' is offered: another kind of "
                    "request is pending; answer it with `kmodlab vm console`",
                )
            if not offered:
                break
            action = offered[0]
            error = self._confirm(action)
            if error:
                out.error = error
                break
            done.append(action)
            out.actions.append(action.name)
            self.progress(f"MokManager: {action.item} confirmed")
        self.choose("Reboot", REBOOT if done else CONTINUE_BOOT)
        if not done:
            return out  # "Continue boot" after a wrong password: the boot goes on
        deadline = self.clock() + self.step_timeout
        while not self.eof:
            if self.clock() >= deadline:
                raise self._fail("Reboot", "QEMU did not exit on the reboot")
            self._pump(deadline)
        out.rebooted_at = self.clock()
        return out

    def _confirm(self, action: Action) -> str | None:
        """One request through its screens; an error message if the password is wrong."""
        self.choose(f"menu: {action.item}", action.item)
        self.wait(f"{action.item}: key list", [("list", (action.title, CONTINUE))])
        self.choose(f"{action.item}: key list", CONTINUE)
        self.wait(f"{action.item}: confirmation", [("ask", (action.question,))])
        self.choose(f"{action.item}: confirmation", YES)
        self.wait(f"{action.item}: password prompt", [("prompt", (PASSWORD_PROMPT,))])
        self._send(self._password.encode("ascii") + ENTER)
        seen = self.wait(
            f"{action.item}: password check",
            [
                ("wrong", (WRONG_PASSWORD, BAD_LENGTH)),
                ("menu", (MENU_TITLE,)),
                ("error", (ERROR_TITLE,)),
            ],
        )
        if seen == "menu":
            return None
        if seen == "error":
            raise self._fail(f"{action.item}: password check", "MokManager reports an error")
        self._leave_password_prompt(action)
        return (
            f"wrong MOK password: MokManager said {WRONG_PASSWORD!r} ({action.item}); "
            "it was typed once, not retried, and MokManager has dropped the request: "
            "make it again (`mokutil --import`/`--delete`) with the password given here "
            "(--password-file, or the key store's mok-password)"
        )

    def _leave_password_prompt(self, action: Action) -> None:
        """Out of MokManager's password tries without typing the password again: OK on
        each error box, an empty line at each prompt, until its menu is back."""
        for _round in range(8):
            seen = self.wait(
                f"{action.item}: leaving the password prompt",
                [
                    ("menu", (MENU_TITLE,)),
                    ("prompt", (PASSWORD_PROMPT,)),
                    ("box", (OK,)),
                ],
            )
            if seen == "menu":
                return
            if seen == "prompt":
                self._send(ENTER)
            else:
                self.choose(f"{action.item}: error box", OK)
        raise self._fail(f"{action.item}: leaving the password prompt", "no way out")


# --- the VM -----------------------------------------------------------------------------


@dataclass
class MokResult:
    """What :func:`confirm` did, and how long it took (seconds)."""

    name: str
    actions: list[str]  # enroll / delete, in the order confirmed; [] = nothing pending
    boot_to_mokmanager: float | None
    mokmanager_to_ssh: float | None
    total: float

    @property
    def nothing_pending(self) -> bool:
        return not self.actions


def check_password(password: str) -> None:
    """MokManager reads printable ASCII from the serial console, up to 256 characters."""
    if not password:
        raise LabError("the MOK password is empty")
    if len(password) > PASSWORD_MAX:
        raise LabError(f"the MOK password is longer than {PASSWORD_MAX} characters")
    if not all(0x20 <= ord(c) < 0x7F for c in password):
        raise LabError(
            "the MOK password has characters other than printable ASCII: they cannot be "
            "typed on the serial console"
        )


def _connect(vm: vms.Vm, lab: vms.Lab, timeout: float = 30.0) -> socket.socket:
    """Connect to the serial console socket as soon as QEMU creates it."""
    path = vm.spec(lab).console_sock
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.connect(str(path))
            return sock
        except OSError as exc:
            sock.close()
            if not vms.process_alive(vm, lab) or time.monotonic() >= deadline:
                err = (vm.run_dir(lab) / "qemu.stderr").read_text(errors="replace").strip()
                raise LabError(
                    f"{vm.name}: cannot connect to the serial console {path}: {exc}"
                    f"{'; QEMU: ' + err[-400:] if err else ''}"
                ) from None
        time.sleep(0.02)


def confirm(
    lab: vms.Lab,
    vm: vms.Vm,
    password: str,
    progress: Progress = print,
    timeout: float = vms.BOOT_TIMEOUT,
) -> MokResult:
    """Reboot ``vm`` and confirm its pending MOK enrolment and/or deletion in MokManager
    with ``password``, then boot it until SSH answers. Nothing pending: the boot goes on
    and the result has no actions. ``timeout`` bounds each boot (to MokManager, to SSH)."""
    check_password(password)
    start = time.monotonic()
    if vms.process_alive(vm, lab):
        progress(f"{vm.name}: powering off (MokManager runs at the next boot)")
        vms._stop_pid(vm, lab)  # SSH power-off; the ACPI button, then signals if it hangs
    vm = vms.start_stopped(lab, vm.name)
    booted = time.monotonic()
    progress(f"{vm.name}: QEMU pid {vm.pid}; watching its serial console")
    conn = _connect(vm, lab)
    step_timeout = min(timeout, STEP_TIMEOUT)
    try:
        outcome = Driver(conn, password, progress, step_timeout).run(timeout)
    except LabError as exc:
        hint = (
            f"the VM is still running: `kmodlab vm console {vm.name}` to answer MokManager "
            f"by hand, or `kmodlab vm down {vm.name}`"
            if vms.process_alive(vm, lab)
            else f"QEMU has exited: `kmodlab vm up {vm.name}` starts the VM again"
        )
        raise LabError(f"{vm.name}: {exc}\n({hint})") from None
    finally:
        with contextlib.suppress(OSError):
            conn.close()
    if outcome.prompt_at is None:
        progress(f"{vm.name}: no MokManager (nothing pending); waiting for SSH")
    if outcome.rebooted_at is not None:
        progress(f"{vm.name}: MokManager rebooted the VM (QEMU exited); starting it again")
        if vm.pid is not None:
            vms._wait_gone(vm, lab, vm.pid, time.monotonic() + 30)
        vm = vms.start_stopped(lab, vm.name)
    vms._wait_ssh(vm, lab, timeout)
    done = time.monotonic()
    with lab.locked() as state:
        state[vm.name] = vm
    progress(f"{vm.name}: SSH up")
    if outcome.error:
        raise LabError(f"{vm.name} is up again, but: {outcome.error}")
    return MokResult(
        name=vm.name,
        actions=outcome.actions,
        boot_to_mokmanager=None if outcome.prompt_at is None else outcome.prompt_at - booted,
        mokmanager_to_ssh=None if outcome.prompt_at is None else done - outcome.prompt_at,
        total=done - start,
    )
