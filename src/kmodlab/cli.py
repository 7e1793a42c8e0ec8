"""The ``kmodlab`` command: images, lab VMs, inventory, reports."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kmodlab import keys
from kmodlab.cliutil import clean_errors
from kmodlab.fleetcli import build_command
from kmodlab.keycli import key_app
from kmodlab.lab import image as image_mod
from kmodlab.lab import inventory as inventory_mod
from kmodlab.lab import paths
from kmodlab.lab import vms as vms_mod
from kmodlab.lab.errors import LabError

app = typer.Typer(no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)
image_app = typer.Typer(no_args_is_help=True, help="Build and list guest images.")
vm_app = typer.Typer(no_args_is_help=True, help="Lab VMs: QEMU guests running Debian's kernel.")
app.add_typer(image_app, name="image")
app.add_typer(vm_app, name="vm")
app.add_typer(key_app, name="key")
app.command("build")(build_command)

console = Console(stderr=True)
out = Console()


def _progress(start: float) -> Callable[[str], None]:
    def show(message: str) -> None:
        console.print(f"[dim]{time.monotonic() - start:6.1f}s[/] {message}", highlight=False)

    return show


Profile = Annotated[str, typer.Option("--profile", "-p", help="lab (with build tools) or bare")]
Release = Annotated[str, typer.Option("--release", help="Debian release")]
Kernel = Annotated[
    str | None,
    typer.Option(
        "--kernel",
        help="pin the image to this kernel ABI of the release (e.g. 6.1.0-50-amd64); "
        "default: the release's current kernel",
    ),
]


@image_app.command("build")
@clean_errors
def image_build(
    profile: Profile = "lab",
    release: Release = "bookworm",
    kernel: Kernel = None,
    force: Annotated[bool, typer.Option("--force", help="rebuild even if cached")] = False,
) -> None:
    """Build (or reuse) the Debian guest image for a profile, as root."""
    recipe = image_mod.Recipe.for_profile(profile, release, kernel)
    img = image_mod.build(recipe, force=force, progress=_progress(time.monotonic()))
    out.print(str(img.path))


@image_app.command("list")
@clean_errors
def image_list() -> None:
    """Images in the cache, and whether they match the current recipes."""
    table = Table("image", "profile", "kernel", "current", "size", "built")
    for meta_path in sorted(image_mod.images_dir().glob("*.json")):
        meta = json.loads(meta_path.read_text())
        pinned = meta.get("kernel_pinned") or None
        current = image_mod.Recipe.for_profile(meta["profile"], meta["release"], pinned).name
        qcow = meta_path.with_suffix(".qcow2")
        size = f"{qcow.stat().st_size / 2**20:.0f} MiB" if qcow.exists() else "missing"
        table.add_row(
            meta["name"],
            meta["profile"],
            meta["kernel_release"],
            "yes" if meta["name"] == current else "no",
            size,
            meta["built_at"],
        )
    out.print(table)


LabOpt = Annotated[
    Path | None,
    typer.Option("--lab-dir", envvar="KMODLAB_LAB_DIR", help="lab state directory"),
]
Names = Annotated[list[str] | None, typer.Argument(help="VM names (default: all)")]


def _lab(lab_dir: Path | None) -> vms_mod.Lab:
    return vms_mod.Lab(lab_dir or paths.lab_dir())


@vm_app.command("up")
@clean_errors
def vm_up(
    names: Annotated[list[str] | None, typer.Argument(help="VM names (default: lab1, ...)")] = None,
    count: Annotated[int, typer.Option("--count", "-n", min=1, max=8)] = 1,
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile", "-p", help="lab (with build tools) or bare; new VMs: lab by default"
        ),
    ] = None,
    kernel: Kernel = None,
    secure_boot: Annotated[bool, typer.Option("--secure-boot", help="OVMF Secure Boot")] = False,
    enroll_key: Annotated[
        list[Path] | None,
        typer.Option("--enroll-key", help="DER/PEM certificate to add to MokList (repeatable)"),
    ] = None,
    key: Annotated[
        str,
        typer.Option(
            "--key",
            help="project signing key (kmodlab key) enrolled in new Secure Boot VMs; "
            "created when missing",
        ),
    ] = keys.DEFAULT_NAME,
    no_project_key: Annotated[
        bool,
        typer.Option("--no-project-key", help="do not enrol the project key (Secure Boot VMs)"),
    ] = False,
    memory: Annotated[int, typer.Option("--memory", min=512, help="MiB")] = 2048,
    cpus: Annotated[int, typer.Option("--cpus", min=1, max=16)] = 2,
    lab_dir: LabOpt = None,
) -> None:
    """Boot VMs (copy-on-write overlays of the image) and wait until SSH answers."""
    lab = _lab(lab_dir)
    if profile is not None and profile not in image_mod.PROFILES:
        choices = ", ".join(image_mod.PROFILES)
        raise LabError(f"unknown profile {profile!r}: choose one of {choices}")
    if not names:
        names = vms_mod.next_names(set(lab.load()), count)
    project_key = None
    if secure_boot and not no_project_key:
        pair, created = keys.create(key)
        project_key = pair.cert.der_path
        console.print(
            f"project key {key}{' (created)' if created else ''}: SHA-256 "
            f"{pair.cert.fingerprint}, enrolled as a MOK in new Secure Boot VMs",
            highlight=False,
            emoji=False,
        )
    req = vms_mod.UpRequest(
        names=names,
        profile=profile,
        kernel=kernel,
        secure_boot=secure_boot,
        memory=memory,
        cpus=cpus,
        enroll_keys=list(enroll_key or []),
        project_key=project_key,
    )
    vms_mod.up(lab, req, progress=_progress(time.monotonic()))
    path = inventory_mod.write(lab)
    console.print(f"inventory: {path}")


@vm_app.command("down")
@clean_errors
def vm_down(names: Names = None, lab_dir: LabOpt = None) -> None:
    """Stop VMs started by this lab (by PID); disks and variable stores are kept."""
    lab = _lab(lab_dir)
    vms_mod.down(lab, names or [], progress=console.print)
    inventory_mod.write(lab)


@vm_app.command("destroy")
@clean_errors
def vm_destroy(names: Names = None, lab_dir: LabOpt = None) -> None:
    """Stop VMs and delete their overlays and UEFI variable stores."""
    lab = _lab(lab_dir)
    vms_mod.destroy(lab, names or [], progress=console.print)
    inventory_mod.write(lab)


@vm_app.command("status")
@clean_errors
def vm_status(
    names: Names = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    lab_dir: LabOpt = None,
) -> None:
    """Name, state, SSH port, Secure Boot, kernel, uptime and enrolled keys of each VM."""
    lab = _lab(lab_dir)
    vms = vms_mod.select(lab, lab.load(), names or [])
    rows = []
    for vm in vms:
        alive = vms_mod.process_alive(vm, lab)
        facts = vms_mod.guest_facts(lab, vm) if alive else {}
        rows.append(
            {
                "name": vm.name,
                "state": "running" if alive else ("failed" if vm.state == "failed" else "stopped"),
                "ssh_port": vm.ssh_port,
                "profile": vm.profile,
                "secure_boot": facts.get("secure_boot", "on" if vm.secure_boot else "off"),
                "kernel": facts.get("kernel", vm.kernel),
                "uptime_s": float(facts["uptime"]) if "uptime" in facts else None,
                "accel": vm.accel,
                "pid": vm.pid if alive else None,
                "enrolled_keys": vm.enrolled_keys,
            }
        )
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("name", "state", "ssh", "profile", "secure boot", "kernel", "uptime", "keys")
    for r in rows:
        up_s = f"{r['uptime_s']:.0f} s" if r["uptime_s"] is not None else "-"
        keys = ", ".join(Path(k).name for k in r["enrolled_keys"]) or "-"
        table.add_row(
            r["name"],
            r["state"],
            str(r["ssh_port"]),
            r["profile"],
            r["secure_boot"],
            r["kernel"],
            up_s,
            keys,
        )
    out.print(table)


# Everything after the VM name goes to the guest as it is: click stops parsing options
# at the first argument, so `kmodlab ssh sb1 mokutil --sb-state` keeps `--sb-state`.
SSH_CONTEXT = {"allow_interspersed_args": False}
SSH_HELP = (
    "Log in to a VM, or run CMD there, with the lab's key. Everything after NAME goes to "
    "the guest unparsed (an optional `--` first is dropped); CMD runs as the lab user, so "
    "root commands need sudo: `kmodlab ssh lab1 sudo modprobe dummy`. NAME may be left "
    "out for a login when one VM runs."
)


def ssh_argv(ssh_args: list[str], command: list[str]) -> list[str]:
    """The ssh command line: a login with a terminal when ``command`` is empty, else
    ``command`` after ``--`` and the destination, so ssh itself parses none of it."""
    if not command:
        return [ssh_args[0], "-t", *ssh_args[1:]]
    return [*ssh_args[:-1], "--", ssh_args[-1], *command]


@vm_app.command("ssh", help=SSH_HELP, context_settings=SSH_CONTEXT)
@clean_errors
def vm_ssh(
    name: Annotated[
        str | None, typer.Argument(metavar="NAME", help="VM (optional when one runs)")
    ] = None,
    command: Annotated[
        list[str] | None,
        typer.Argument(metavar="CMD", help="[--] command and its arguments, unparsed"),
    ] = None,
    lab_dir: LabOpt = None,
) -> None:
    """Log in to a VM (or run a command there) with the lab's key."""
    command = command or []
    if command[:1] == ["--"]:
        command = command[1:]
    lab = _lab(lab_dir)
    vm = vms_mod.require_running(lab, name)
    argv = ssh_argv(lab.ssh_args(vm, batch=bool(command)), command)
    sys.stdout.flush()
    os.execvp(argv[0], argv)


# `kmodlab ssh` is the same command, at the top level.
app.command("ssh", help=SSH_HELP, context_settings=SSH_CONTEXT)(vm_ssh)


@vm_app.command("console")
@clean_errors
def vm_console(
    name: Annotated[str | None, typer.Argument()] = None,
    log: Annotated[bool, typer.Option("--log", help="print the console log and exit")] = False,
    lab_dir: LabOpt = None,
) -> None:
    """Attach to a VM's serial console (Ctrl-] to leave), or print its log."""
    lab = _lab(lab_dir)
    if log:
        vms = lab.load()
        if not name or name not in vms:
            raise LabError(f"no such VM: {name}")
        out.print(vms_mod.console_tail(vms[name], lab, lines=10_000), highlight=False)
        return
    vm = vms_mod.require_running(lab, name)
    from kmodlab.lab.console import attach

    attach(vm.spec(lab).console_sock)


def _mok_password(password_file: Path | None, key: str | None) -> str:
    """The MOK password from ``password_file`` (its first line), else the key store's."""
    if password_file is not None:
        if key is not None:
            raise LabError("--password-file and --key both given: the password comes from one")
        try:
            text = password_file.read_text()
        except OSError as exc:
            raise LabError(f"--password-file {password_file}: {exc.strerror}") from None
        return text.splitlines()[0] if text else ""
    name = key or keys.DEFAULT_NAME
    stored = keys.key_dir(name) / keys.PASSWORD_FILE
    if not stored.is_file():
        raise LabError(
            f"no MOK password for key {name!r} ({stored}): give the one of the request "
            "with --password-file"
        )
    return keys.mok_password(name)


@vm_app.command("enroll")
@clean_errors
def vm_enroll(
    name: Annotated[str, typer.Argument(help="VM with a pending `mokutil --import/--delete`")],
    password_file: Annotated[
        Path | None,
        typer.Option("--password-file", help="file whose first line is the MOK password"),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            help=f"key store entry whose mok-password is used (default: {keys.DEFAULT_NAME})",
        ),
    ] = None,
    lab_dir: LabOpt = None,
) -> None:
    """Confirm a pending MOK enrolment and/or deletion in shim's MokManager, over the
    serial console, as a person would on a real host: the VM reboots into MokManager
    and boots again until SSH answers."""
    from kmodlab.lab import mokmanager

    lab = _lab(lab_dir)
    vm = vms_mod.select(lab, lab.load(), [name])[0]
    password = _mok_password(password_file, key)
    result = mokmanager.confirm(lab, vm, password, progress=_progress(time.monotonic()))
    inventory_mod.write(lab)
    if result.nothing_pending:
        out.print(
            f"{name}: nothing to confirm (no MokManager at boot); up again after "
            f"{result.total:.0f} s",
            highlight=False,
            soft_wrap=True,
        )
        return
    out.print(
        f"{name}: confirmed {' and '.join(result.actions)}; boot to MokManager "
        f"{result.boot_to_mokmanager:.0f} s, MokManager to SSH {result.mokmanager_to_ssh:.0f} s, "
        f"total {result.total:.0f} s",
        highlight=False,
        soft_wrap=True,
    )


@app.command("inventory")
@clean_errors
def inventory(lab_dir: LabOpt = None) -> None:
    """Write the Ansible inventory of the running VMs and print its path."""
    out.print(str(inventory_mod.write(_lab(lab_dir))))


module_app = typer.Typer(
    help="Modules kmodlab did not write: manifest drafts.", no_args_is_help=True
)
app.add_typer(module_app, name="module")


@module_app.command("import")
@clean_errors
def module_import(
    source: Annotated[
        Path,
        typer.Argument(help="a .ko file, a folder of built .ko files, or a source folder"),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="manifest folder: writes OUTPUT/NAME/module.yml (default: print)"
        ),
    ] = None,
    headers: Annotated[
        Path | None,
        typer.Option("--headers", help="kernel build tree to build a source folder against"),
    ] = None,
) -> None:
    """Write a module.yml draft for each module of SOURCE, read from the built module:
    name, version, licence, author, description, every parameter's type, mode, array
    size and initial value. A source folder without .ko files is built first."""
    from kmodlab.importer import ModuleImportError, import_source

    drafts = import_source(source, headers)
    for name, text in drafts:
        if output is None:
            out.print(text, markup=False, highlight=False, soft_wrap=True)
            continue
        path = output / name / "module.yml"
        if path.exists():
            raise ModuleImportError(f"{path} exists: not overwritten (remove it, or choose -o)")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        out.print(f"{name}: {path}", highlight=False)


@app.command("report")
@clean_errors
def report(
    path: Annotated[
        Path | None, typer.Argument(help="report.json or its folder (default: the last run's)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the JSON")] = False,
) -> None:
    """Show the status report of the last verify run (host x module)."""
    from kmodlab.verify.report import render_report

    if path is None:
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        path = Path(base) / "kmodlab" / "reports"
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise LabError(f"no report at {path}: run lab.yml (its kmod_verify role writes it)")
    if as_json:
        out.print_json(path.read_text())
        return
    out.print(render_report(path))


def main() -> None:  # pragma: no cover - console script
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
