"""MokManager over the serial console: screen parsing and the key-press dialogue, replayed
from real sessions (tests/fast/fixtures/mokmanager, recorded from a lab VM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kmodlab.cli import app
from kmodlab.lab import mokmanager, vms
from kmodlab.lab.errors import LabError
from kmodlab.lab.mokmanager import ENTER, Driver, Screen, near

FIXTURES = Path(__file__).parent / "fixtures" / "mokmanager"
PASSWORD = "Test-pw 1"


def events(scenario: str) -> list[dict[str, object]]:
    lines = (FIXTURES / f"{scenario}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[1:]]  # line 1 says what the file is


def raw(event: dict[str, object]) -> bytes:
    return str(event["out"]).encode("latin-1")


class Replay:
    """A recorded serial console: it sends the recorded output up to the next recorded
    key, and only when the driver presses that very key does the rest come. Time is
    fake: waiting for output that does not come advances the clock."""

    def __init__(self, recorded: list[dict[str, object]], password: str = PASSWORD) -> None:
        self.events = recorded
        self.password = password
        self.i = 0
        self.queue: list[bytes] = []
        self.now = 0.0
        self.timeout = 0.2
        self.sent: list[bytes] = []
        self._release()

    def _release(self) -> None:
        while self.i < len(self.events) and "sent" not in self.events[self.i]:
            event = self.events[self.i]
            self.queue.append(b"" if event.get("eof") else raw(event))
            self.i += 1

    def clock(self) -> float:
        return self.now

    def settimeout(self, value: float | None) -> None:
        self.timeout = value or 0.2

    def recv(self, size: int) -> bytes:
        if self.queue:
            self.now += 0.01
            return self.queue.pop(0)
        self.now += self.timeout
        raise TimeoutError

    def sendall(self, data: bytes) -> None:
        assert self.i < len(self.events), f"key {data!r} pressed after the recording ended"
        wanted = str(self.events[self.i]["sent"]).replace("<password>", self.password)
        assert data == wanted.encode("latin-1"), f"pressed {data!r}, recorded {wanted!r}"
        self.sent.append(data)
        self.i += 1
        self._release()


def drive(replay: Replay, step_timeout: float = 60.0) -> mokmanager.Outcome:
    messages: list[str] = []
    driver = Driver(replay, PASSWORD, messages.append, step_timeout, clock=replay.clock)
    return driver.run(boot_timeout=300.0)


def password_presses(replay: Replay) -> int:
    return sum(PASSWORD.encode() in data for data in replay.sent)


# --- the screen -----------------------------------------------------------------------


def first_menu() -> Screen:
    """The screen as MokManager's menu is first drawn (enrolment and deletion pending)."""
    screen = Screen()
    recorded = events("enroll-and-delete")
    sends = [i for i, e in enumerate(recorded) if "sent" in e]
    for event in recorded[: sends[1]]:
        if "out" in event:
            screen.feed(raw(event))
    return screen


def test_screen_renders_the_menu_and_its_highlight() -> None:
    screen = first_menu()
    text = "\n".join(screen.lines())
    assert "Perform MOK management" in text
    items = ["Continue boot", "Enroll MOK", "Delete MOK", "Enroll key from disk"]
    rows = [screen.item_row(item) for item in items]
    assert None not in rows and rows == sorted(rows)
    assert screen.highlighted_rows() == [rows[0]]  # the first item, as MokManager starts
    assert "\x1b" not in screen.tail() and "│" not in screen.tail()
    assert len(screen.tail(20).splitlines()) <= 20


def test_screen_feed_in_pieces_is_the_same_as_at_once() -> None:
    """Escape sequences split across reads (the socket cuts anywhere)."""
    data = b"".join(raw(e) for e in events("enroll-and-delete")[:6] if "out" in e)
    whole, pieces = Screen(), Screen()
    whole.feed(data)
    for i in range(0, len(data), 7):
        pieces.feed(data[i : i + 7])
    assert pieces.lines() == whole.lines()
    assert pieces.highlighted_rows() == whole.highlighted_rows()


def test_screen_survives_lost_bytes_in_escape_sequences() -> None:
    """Seen on the real console: an ESC whose sequence was lost, a sequence cut short."""
    screen = Screen()
    screen.feed(b"\x1b[0m\x1b[37m\x1b[44m\x1b[05;01H\xb3 one \xb3\x1b\xb3\x1b[06;01\xb3 two \xb3")
    assert screen.seen("one") and screen.seen("two")


def test_seen_is_only_what_came_after_the_mark() -> None:
    screen = Screen()
    screen.feed(b"\x1b[02;01H\xb3 Password: \xb3")
    assert screen.seen("Password:")
    screen.mark()
    assert not screen.seen("Password:")
    screen.feed(b"\x1b[02;01H\xb3 Password: \xb3")
    assert screen.seen("Password:")


@pytest.mark.parametrize(
    ("needle", "hay", "found"),
    [
        ("Enroll MOK", "     Enroll MOK       ", True),
        ("Enroll MOK", "Enrol MOK", True),  # a byte lost on the serial line
        ("Enroll MOK", "Enroll  MOK", True),
        ("Enroll MOK", "Delete MOK", False),
        ("Enroll MOK", "Enr MOK", False),
        ("Yes", "Ye", False),  # short texts: exact only
        ("Password doesn't match", "Password doesn't mtch", True),
    ],
)
def test_near_allows_one_lost_character(needle: str, hay: str, found: bool) -> None:
    assert near(needle, hay) is found


def test_menu_items_are_whole_segments() -> None:
    """ "Continue" is not "Continue boot", "OK" not the OK of "MOK"."""
    screen = first_menu()
    assert screen.item_row("Continue") is None
    assert screen.item_row("OK") is None


# --- the dialogue, replayed -------------------------------------------------------------


def test_replay_enrolment_and_deletion_in_one_session() -> None:
    replay = Replay(events("enroll-and-delete"))
    out = drive(replay)
    assert out.actions == ["enroll", "delete"]
    assert out.error is None
    assert out.prompt_at is not None and out.rebooted_at is not None
    assert password_presses(replay) == 2  # once per request
    assert replay.sent[0] == mokmanager.ANY_KEY
    assert replay.sent[-1] == ENTER  # "Reboot"
    assert replay.i == len(replay.events)  # every recorded key pressed


def test_replay_wrong_password_is_typed_once() -> None:
    replay = Replay(events("wrong-password"))
    out = drive(replay)
    assert out.actions == []
    assert out.error is not None and "wrong MOK password" in out.error
    assert PASSWORD not in out.error
    assert out.rebooted_at is None  # "Continue boot": the VM boots on
    assert password_presses(replay) == 1
    after = replay.sent[replay.sent.index(PASSWORD.encode() + ENTER) + 1 :]
    assert set(after) == {ENTER}  # OK, empty tries, OK, "Continue boot": never the password


def test_replay_nothing_pending_goes_on_booting() -> None:
    replay = Replay(events("nothing-pending"))
    out = drive(replay)
    assert out.prompt_at is None and out.actions == [] and out.error is None
    assert replay.sent == []


def test_replay_with_a_byte_lost_in_a_menu_item() -> None:
    """ "Enroll MOK" arrives as "Enrol MOK": still found, still chosen."""
    recorded = events("enroll-and-delete")
    sends = [i for i, e in enumerate(recorded) if "sent" in e]
    menu = next(i for i in range(sends[0] + 1, sends[1]) if "Enroll MOK" in str(recorded[i]))
    recorded[menu] = {"out": str(recorded[menu]["out"]).replace("Enroll MOK", "Enrol MOK", 1)}
    replay = Replay(recorded)
    assert drive(replay).actions == ["enroll", "delete"]


def test_garbled_highlight_asks_for_a_redraw() -> None:
    """Not one highlighted item (colours lost): a neutral key, MokManager redraws."""
    menu = b"".join(raw(e) for e in events("enroll-and-delete")[:3] if "out" in e)
    garbled = menu.replace(b"\x1b[44m", b"\x1b[4m")  # the blue lost: no item stands out

    class Console:
        def __init__(self) -> None:
            self.now = 0.0
            self.sent: list[bytes] = []
            self.queue = [garbled]

        def settimeout(self, value: float | None) -> None:
            pass

        def recv(self, size: int) -> bytes:
            self.now += 0.5
            if self.queue:
                return self.queue.pop(0)
            raise TimeoutError

        def sendall(self, data: bytes) -> None:
            self.sent.append(data)
            if data == mokmanager.REDRAW:
                self.queue.append(menu)  # the items as MokManager redraws them

    console = Console()
    driver = Driver(console, PASSWORD, lambda _m: None, 30.0, clock=lambda: console.now)
    driver.wait("menu", [("menu", ("Delete MOK",))])
    assert len(driver.screen.highlighted_rows()) != 1
    driver.choose("menu", "Continue boot")
    assert console.sent == [mokmanager.REDRAW, ENTER]


def test_step_timeout_names_the_step_and_shows_the_screen() -> None:
    """The key press is answered by nothing: the error says which step, and the screen."""
    recorded = events("enroll-and-delete")
    first_key = next(i for i, e in enumerate(recorded) if "sent" in e)
    replay = Replay(recorded[: first_key + 1])
    with pytest.raises(LabError) as err:
        drive(replay, step_timeout=20.0)
    message = str(err.value)
    assert "step 'MokManager menu'" in message and "within 20 s" in message
    assert "Press any key to perform MOK management" in message
    screen_part = message.split("--- screen (last 20 lines) ---\n", 1)[1]
    assert 0 < len(screen_part.splitlines()) <= 20


def test_qemu_exit_mid_dialogue_is_an_error() -> None:
    recorded = events("enroll-and-delete")
    first_key = next(i for i, e in enumerate(recorded) if "sent" in e)
    replay = Replay([*recorded[: first_key + 1], {"eof": True}])
    with pytest.raises(LabError, match="QEMU exited"):
        drive(replay)


class FakeVm:
    """confirm() around a replayed console: what it does to the VM, in order."""

    def __init__(self, lab: vms.Lab, scenario: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        self.replay = Replay(events(scenario))
        self.replay.close = lambda: None  # type: ignore[attr-defined]
        alive = {"now": True}

        def stop(vm: vms.Vm, lab: vms.Lab) -> None:
            self.calls.append("power off")
            alive["now"] = False

        def start(lab: vms.Lab, name: str) -> vms.Vm:
            self.calls.append("start")
            vm = lab.load()[name]
            vm.pid = 4242
            return vm

        def wait_ssh(vm: vms.Vm, lab: vms.Lab, timeout: float) -> None:
            self.calls.append("ssh")
            vm.boot_seconds = 30.0

        monkeypatch.setattr(vms, "process_alive", lambda vm, lab: alive["now"])
        monkeypatch.setattr(vms, "_stop_pid", stop)
        monkeypatch.setattr(vms, "start_stopped", start)
        monkeypatch.setattr(vms, "_wait_ssh", wait_ssh)
        monkeypatch.setattr(vms, "_wait_gone", lambda *a: self.calls.append("exited"))
        monkeypatch.setattr(mokmanager, "_connect", lambda vm, lab: self.replay)
        monkeypatch.setattr(mokmanager, "_clock", self.replay.clock)


def test_confirm_powers_off_confirms_and_boots_again(
    lab: vms.Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeVm(lab, "enroll-and-delete", monkeypatch)
    vm = lab.load()["sb1"]
    result = mokmanager.confirm(lab, vm, PASSWORD, progress=lambda _m: None)
    assert result.actions == ["enroll", "delete"]
    assert fake.calls == ["power off", "start", "exited", "start", "ssh"]
    assert result.boot_to_mokmanager is not None and result.mokmanager_to_ssh is not None
    assert lab.load()["sb1"].boot_seconds == 30.0  # the state file has the new boot


def test_confirm_nothing_pending_is_no_error(lab: vms.Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeVm(lab, "nothing-pending", monkeypatch)
    result = mokmanager.confirm(lab, lab.load()["sb1"], PASSWORD, progress=lambda _m: None)
    assert result.nothing_pending and result.boot_to_mokmanager is None
    assert fake.calls == ["power off", "start", "ssh"]


def test_confirm_wrong_password_fails_once_the_vm_is_up(
    lab: vms.Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeVm(lab, "wrong-password", monkeypatch)
    with pytest.raises(LabError, match="sb1 is up again, but: wrong MOK password") as err:
        mokmanager.confirm(lab, lab.load()["sb1"], PASSWORD, progress=lambda _m: None)
    assert PASSWORD not in str(err.value)
    assert fake.calls == ["power off", "start", "ssh"]  # "Continue boot": no reboot


@pytest.mark.parametrize(
    ("password", "why"),
    [("", "empty"), ("pässword", "printable ASCII"), ("x" * 257, "longer than 256")],
)
def test_password_that_cannot_be_typed(password: str, why: str) -> None:
    with pytest.raises(LabError, match=why) as err:
        mokmanager.check_password(password)
    assert not password or password not in str(err.value)


# --- the command ----------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> vms.Lab:
    monkeypatch.setenv("KMODLAB_KEY_DIR", str(tmp_path / "keys"))
    lab = vms.Lab(tmp_path / "lab")
    with lab.locked() as state:
        state["sb1"] = vms.Vm(
            name="sb1",
            profile="bare",
            image="/cache/x.qcow2",
            kernel="6.1.0-57-amd64",
            ssh_port=40023,
            memory=2048,
            cpus=2,
            secure_boot=True,
        )
    return lab


@pytest.fixture
def confirmed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The passwords `vm enroll` would confirm with (instead of rebooting a VM)."""
    passwords: list[str] = []

    def confirm(lab: vms.Lab, vm: vms.Vm, password: str, progress: object) -> object:
        passwords.append(password)
        return mokmanager.MokResult(vm.name, ["enroll"], 21.0, 70.0, 95.0)

    monkeypatch.setattr(mokmanager, "confirm", confirm)
    return passwords


def enroll(lab: vms.Lab, *words: str) -> object:
    return runner.invoke(app, ["vm", "enroll", "--lab-dir", str(lab.path), *words])


def test_cli_enroll_with_a_password_file(
    lab: vms.Lab, confirmed: list[str], tmp_path: Path
) -> None:
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    result = enroll(lab, "sb1", "--password-file", str(pw))
    assert result.exit_code == 0, result.output
    assert confirmed == [PASSWORD]  # the first line, without its newline
    assert "sb1: confirmed enroll" in result.output
    assert "boot to MokManager 21 s, MokManager to SSH 70 s, total 95 s" in result.output
    assert PASSWORD not in result.output


def test_cli_enroll_takes_the_key_stores_password(lab: vms.Lab, confirmed: list[str]) -> None:
    from kmodlab import keys

    stored = keys.mok_password("lab")
    assert enroll(lab, "sb1").exit_code == 0
    other = keys.mok_password("other")
    assert enroll(lab, "sb1", "--key", "other").exit_code == 0
    assert confirmed == [stored, other]


def test_cli_enroll_refuses_a_key_without_a_password(lab: vms.Lab, confirmed: list[str]) -> None:
    """A new password cannot be the request's: no default made up on the spot."""
    result = enroll(lab, "sb1", "--key", "nokey")
    assert result.exit_code == 2
    assert "no MOK password for key 'nokey'" in result.output and "--password-file" in result.output
    assert confirmed == []


def test_cli_enroll_errors(lab: vms.Lab, confirmed: list[str], tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    result = enroll(lab, "sb1", "--password-file", str(pw), "--key", "lab")
    assert result.exit_code == 2 and "both given" in result.output
    result = enroll(lab, "sb1", "--password-file", str(tmp_path / "missing"))
    assert result.exit_code == 2 and "--password-file" in result.output
    result = enroll(lab, "ghost", "--password-file", str(pw))
    assert result.exit_code == 2 and "no such VM: ghost" in result.output
    assert confirmed == []
