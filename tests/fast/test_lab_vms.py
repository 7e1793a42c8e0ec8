"""Lab state, inventory rendering and CLI errors (no VM)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kmodlab import cli
from kmodlab.cli import app
from kmodlab.lab import inventory, vms
from kmodlab.lab.errors import LabError


def make_vm(name: str = "lab1", port: int = 40022, **kw: object) -> vms.Vm:
    base = {
        "name": name,
        "profile": "lab",
        "image": "/cache/x.qcow2",
        "kernel": "6.1.0-56-amd64",
        "ssh_port": port,
        "memory": 2048,
        "cpus": 2,
        "secure_boot": False,
    }
    base.update(kw)
    return vms.Vm(**base)  # type: ignore[arg-type]


@pytest.fixture
def lab(tmp_path: Path) -> vms.Lab:
    return vms.Lab(tmp_path / "lab")


def test_state_round_trip(lab: vms.Lab) -> None:
    with lab.locked() as state:
        state["lab1"] = make_vm(enrolled_keys=["/k/test.der"])
    loaded = lab.load()
    assert loaded["lab1"].enrolled_keys == ["/k/test.der"]
    assert loaded["lab1"].ssh_port == 40022


def test_state_not_saved_on_error(lab: vms.Lab) -> None:
    with lab.locked() as state:
        state["lab1"] = make_vm()
    with pytest.raises(RuntimeError), lab.locked() as state:
        state["lab2"] = make_vm("lab2")
        raise RuntimeError
    assert set(lab.load()) == {"lab1"}


def test_process_alive_rejects_foreign_pid(lab: vms.Lab) -> None:
    """A recorded PID that now belongs to another process is not our VM."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        vm = make_vm(pid=proc.pid)
        assert not vms.process_alive(vm, lab)
    finally:
        proc.kill()
        proc.wait()
    assert not vms.process_alive(make_vm(pid=None), lab)


def test_process_alive_accepts_our_qemu(lab: vms.Lab) -> None:
    vm = make_vm()
    disk = vm.run_dir(lab) / "disk.qcow2"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", f"file={disk}"])
    try:
        vm.pid = proc.pid
        deadline = time.monotonic() + 10  # until the child has exec'd
        while not vms.process_alive(vm, lab) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert vms.process_alive(vm, lab)
        with lab.locked() as state:
            state["lab1"] = vm
        stopped = vms.down(lab, [], progress=lambda m: None)
        assert stopped == ["lab1"]
        assert proc.poll() is not None
        assert lab.load()["lab1"].state == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_down_and_destroy_only_touch_named(lab: vms.Lab) -> None:
    with lab.locked() as state:
        state["lab1"] = make_vm()
        state["lab2"] = make_vm("lab2", 40023)
    for name in ("lab1", "lab2"):
        (lab.path / "vms" / name).mkdir(parents=True)
    vms.destroy(lab, ["lab1"], progress=lambda m: None)
    assert set(lab.load()) == {"lab2"}
    assert not (lab.path / "vms/lab1").exists()
    assert (lab.path / "vms/lab2").exists()
    with pytest.raises(LabError, match="no such VM: nope"):
        vms.down(lab, ["nope"])


def test_next_names() -> None:
    assert vms.next_names({"lab1", "lab3"}, 3) == ["lab2", "lab4", "lab5"]


def test_free_port_is_free_and_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    port = vms.free_port(set())
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # nothing listens there
    # The kernel's pick is retried while it is a port another VM of the lab has.
    picks = iter([40022, 40022, 40023])

    class Picked(socket.socket):
        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", next(picks))

    monkeypatch.setattr(vms.socket, "socket", Picked)
    assert vms.free_port({40022}) == 40023
    picks = iter([40022] * 50)
    with pytest.raises(LabError, match="no free TCP port"):
        vms.free_port({40022})


def test_up_rejects_bad_input_before_starting_anything(lab: vms.Lab, tmp_path: Path) -> None:
    with pytest.raises(LabError, match="invalid VM name"):
        vms.up(lab, vms.UpRequest(names=["Bad_Name"]))
    with pytest.raises(LabError, match="given twice"):
        vms.up(lab, vms.UpRequest(names=["a", "a"]))
    with pytest.raises(LabError, match="no such file"):
        vms.up(lab, vms.UpRequest(names=["a"], secure_boot=True, enroll_keys=[tmp_path / "x"]))
    cert = tmp_path / "c.der"
    cert.write_bytes(b"x")
    with pytest.raises(LabError, match="needs --secure-boot"):
        vms.up(lab, vms.UpRequest(names=["a"], enroll_keys=[cert]))
    assert not (lab.path / "vms").exists()


def test_inventory_lists_running_vms(lab: vms.Lab) -> None:
    plain = make_vm()
    sb = make_vm("sb1", 40023, secure_boot=True)
    data = inventory.build(lab, [sb, plain])
    hosts = data["all"]["children"]["lab"]["hosts"]
    assert list(hosts) == ["lab1", "sb1"]
    h = hosts["lab1"]
    assert h["ansible_host"] == "127.0.0.1"
    assert h["ansible_port"] == 40022
    assert h["ansible_user"] == "kmodlab"
    assert h["ansible_ssh_private_key_file"] == str(lab.key)
    assert h["ansible_python_interpreter"] == "/usr/bin/python3"
    assert data["all"]["children"]["secure_boot"]["hosts"] == {"sb1": {}}
    path = inventory.write(lab, [plain])
    assert yaml.safe_load(path.read_text())["all"]["children"]["lab"]["hosts"]["lab1"]
    assert "secure_boot" not in yaml.safe_load(path.read_text())["all"]["children"]


def test_inventory_empty_when_nothing_runs(lab: vms.Lab) -> None:
    with lab.locked() as state:
        state["lab1"] = make_vm(pid=None)
    assert inventory.build(lab)["all"]["children"]["lab"]["hosts"] == {}


runner = CliRunner()


def test_cli_ssh_to_stopped_vm_is_exit_2(lab: vms.Lab) -> None:
    with lab.locked() as state:
        state["lab1"] = make_vm()
    result = runner.invoke(app, ["ssh", "--lab-dir", str(lab.path), "lab1"])
    assert result.exit_code == 2
    assert "VM lab1 is not running" in result.output
    result = runner.invoke(app, ["vm", "ssh", "--lab-dir", str(lab.path), "ghost", "true"])
    assert result.exit_code == 2
    assert "no such VM: ghost" in result.output


@pytest.fixture
def ssh_exec(lab: vms.Lab, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """sb1 running in ``lab``; the argv each `kmodlab ssh` would exec instead of ssh."""
    with lab.locked() as state:
        state["sb1"] = make_vm("sb1", 40023, secure_boot=True)
    monkeypatch.setattr(vms, "process_alive", lambda vm, lab: True)
    calls: list[list[str]] = []

    def execvp(file: str, argv: list[str]) -> None:
        assert file == argv[0] == "ssh"
        calls.append(argv)

    monkeypatch.setattr(cli.os, "execvp", execvp)
    return calls


DEST = "kmodlab@127.0.0.1"
LAB = ["--lab-dir", "LAB"]  # kmodlab's own option, before NAME; "LAB" is the test's lab


def invoke(words: list[str], lab: vms.Lab) -> None:
    result = runner.invoke(app, [str(lab.path) if w == "LAB" else w for w in words])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("words", "guest_command"),
    [
        (["ssh", *LAB, "sb1", "mokutil", "--sb-state"], ["mokutil", "--sb-state"]),
        (["ssh", *LAB, "sb1", "--", "mokutil", "--sb-state"], ["mokutil", "--sb-state"]),
        (["vm", "ssh", *LAB, "sb1", "sudo", "modprobe", "dummy"], ["sudo", "modprobe", "dummy"]),
        # kmodlab's options, ssh's options and --help after NAME are the guest's too.
        (
            ["ssh", *LAB, "sb1", "ls", "--lab-dir", "/x", "--help"],
            ["ls", "--lab-dir", "/x", "--help"],
        ),
        (["ssh", *LAB, "sb1", "-t", "-v"], ["-t", "-v"]),
        (["ssh", *LAB, "sb1", "--", "--", "-x"], ["--", "-x"]),
        (["ssh", *LAB, "sb1", "echo 'a b' | wc -w"], ["echo 'a b' | wc -w"]),
    ],
)
def test_cli_ssh_passes_everything_after_the_name_to_the_guest(
    lab: vms.Lab, ssh_exec: list[list[str]], words: list[str], guest_command: list[str]
) -> None:
    invoke(words, lab)
    [argv] = ssh_exec
    dest = argv.index(DEST)
    # After the destination only the command; `--` before it, so ssh parses none of it.
    assert argv[dest + 1 :] == guest_command
    assert argv[dest - 1] == "--"
    assert str(lab.key) in argv[:dest] and "40023" in argv[:dest]
    assert "BatchMode=yes" in argv[:dest] and "-t" not in argv[:dest]


@pytest.mark.parametrize(
    "words",
    [["ssh", *LAB, "sb1"], ["ssh", *LAB], ["vm", "ssh", *LAB, "sb1"], ["ssh", *LAB, "sb1", "--"]],
)
def test_cli_ssh_without_a_command_opens_a_login_shell(
    lab: vms.Lab, ssh_exec: list[list[str]], words: list[str]
) -> None:
    invoke(words, lab)
    [argv] = ssh_exec
    assert argv[-1] == DEST and "--" not in argv
    assert argv[1] == "-t" and "BatchMode=yes" not in argv
    assert str(lab.key) in argv and "40023" in argv


def test_cli_unknown_profile_is_exit_2(lab: vms.Lab) -> None:
    result = runner.invoke(app, ["vm", "up", "x1", "--profile", "fat", "--lab-dir", str(lab.path)])
    assert result.exit_code == 2
    assert "unknown profile 'fat'" in result.output
    assert not (lab.path / "vms").exists()


def test_cli_name_in_use_is_exit_2(lab: vms.Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    with lab.locked() as state:
        state["lab1"] = make_vm(pid=1)
    monkeypatch.setattr(vms, "process_alive", lambda vm, lab: True)
    monkeypatch.setattr(vms, "require_tools", lambda *a: None)
    monkeypatch.setattr(vms.qemu, "firmware", lambda sb: None)
    monkeypatch.setattr(vms.Lab, "ensure_key", lambda self: None)
    result = runner.invoke(app, ["vm", "up", "lab1", "--lab-dir", str(lab.path)])
    assert result.exit_code == 2
    assert "already running" in result.output


def test_cli_status_json(lab: vms.Lab) -> None:
    with lab.locked() as state:
        state["lab1"] = make_vm(enrolled_keys=["/k/test.der"])
    result = runner.invoke(app, ["vm", "status", "--json", "--lab-dir", str(lab.path)])
    assert result.exit_code == 0, result.output
    assert '"state": "stopped"' in result.output
    assert "/k/test.der" in result.output


def test_cli_report_missing_is_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "no report at" in result.output


def test_up_restarts_a_stopped_vm_with_its_own_profile(
    lab: vms.Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vm up NAME` after `vm down NAME` needs no options: a stopped bare Secure Boot VM
    restarts as it was (its profile, disk and variable store), not as a new lab VM."""
    with lab.locked() as state:
        state["sb1"] = make_vm("sb1", 40023, profile="bare", secure_boot=True)
    asked: list[str] = []

    class Img:
        vmlinuz = Path("/cache/vmlinuz")

    def require_image(profile: str, kernel: str | None = None) -> Img:
        asked.append(profile)
        return Img()

    started: list[vms.Vm] = []
    monkeypatch.setattr(vms, "require_tools", lambda *a: None)
    monkeypatch.setattr(vms.qemu, "firmware", lambda sb: None)
    monkeypatch.setattr(vms.qemu, "choose_accel", lambda *a: ("tcg", "test"))
    monkeypatch.setattr(vms.image_mod, "require_image", require_image)
    monkeypatch.setattr(vms, "_start", lambda vm, lab: started.append(vm))
    monkeypatch.setattr(vms, "_wait_ssh", lambda vm, lab, timeout: None)
    monkeypatch.setattr(vms, "process_alive", lambda vm, lab: False)
    (vm,) = vms.up(lab, vms.UpRequest(names=["sb1"]), progress=lambda m: None)
    # Its own disk: no image of the profile is needed (a pinned image's VM restarts too).
    assert asked == [] and started == [vm]
    assert (vm.profile, vm.secure_boot, vm.ssh_port) == ("bare", True, 40023)
    with pytest.raises(LabError, match="exists \\(profile bare\\)"):
        vms.up(lab, vms.UpRequest(names=["sb1"], profile="lab"), progress=lambda m: None)
