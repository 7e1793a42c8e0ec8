"""``kmodlab key``: the project's module signing key (kept on this machine).

Prints certificates only: nothing here reads out the private key.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kmodlab import keys
from kmodlab.cliutil import clean_errors

key_app = typer.Typer(
    no_args_is_help=True, help="The project's module signing key (kept on this machine)."
)

# No emoji codes: a fingerprint like 71:AB:02 holds `:ab:`.
console = Console(stderr=True, emoji=False, highlight=False, soft_wrap=True)
out = Console(emoji=False, highlight=False, soft_wrap=True)


class Format(StrEnum):
    der = "der"
    pem = "pem"


Name = Annotated[str, typer.Argument(help="key name")]
KeyDir = Annotated[
    Path | None,
    typer.Option(
        "--key-dir",
        help="key store (default: $KMODLAB_KEY_DIR, else $XDG_DATA_HOME/kmodlab/keys)",
    ),
]
Years = Annotated[int, typer.Option("--years", min=1, max=100, help="certificate validity")]
Bits = Annotated[int, typer.Option("--bits", help=f"RSA key size (at least {keys.MIN_BITS})")]


def _say(text: str) -> None:
    out.print(text, markup=False)


def _line(label: str, value: str) -> None:
    _say(f"{label + ':':<13}{value}")


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def _print_cert(cert: keys.CertInfo, indent: str = "") -> None:
    _line(f"{indent}subject", cert.subject)
    _line(f"{indent}serial", f"{cert.sig_key} (modinfo's sig_key)")
    _line(f"{indent}sha256", cert.fingerprint)
    _line(f"{indent}valid", f"{_when(cert.not_before)} to {_when(cert.not_after)}")
    _line(f"{indent}keyring", cert.keyring_description())


def _print_pair(pair: keys.KeyPair, *, previous: bool = False) -> None:
    _line("name", pair.name)
    _line("directory", str(pair.directory))
    files = [p.name for p in (pair.cert.pem_path, pair.cert.der_path) if p is not None]
    _line("certificate", ", ".join(files))
    _line("key", f"RSA {pair.cert.key_bits} bits, {pair.key_path}")
    _print_cert(pair.cert)
    if previous and pair.previous is not None:
        _say("previous certificate (its key is deleted):")
        _print_cert(pair.previous, indent="  ")


@key_app.command("create")
@clean_errors
def key_create(
    name: Name = keys.DEFAULT_NAME,
    years: Years = 10,
    bits: Bits = 4096,
    key_dir: KeyDir = None,
) -> None:
    """Create the signing key and its certificate; an existing key is kept as it is."""
    pair, changed = keys.create(name, years=years, bits=bits, root=key_dir)
    if changed:
        _say(f"created signing key {name}")
    else:
        _say(f"signing key {name} exists: nothing changed")
    _print_pair(pair)


@key_app.command("show")
@clean_errors
def key_show(
    name: Name = keys.DEFAULT_NAME,
    as_json: Annotated[bool, typer.Option("--json", help="print it as JSON")] = False,
    key_dir: KeyDir = None,
) -> None:
    """Show the key's certificate (and the previous one after a rotation)."""
    pair = keys.load(name, root=key_dir)
    if as_json:
        typer.echo(json.dumps(pair.as_dict(), indent=2))
        return
    _print_pair(pair, previous=True)


NEXT_STEPS = """\
next steps:
  1. run lab.yml (or your playbook): on Secure Boot hosts it queues the new certificate
     for MOK enrolment beside the old one and stops them; their modules keep running
  2. reboot them and confirm the enrolment in MokManager (`kmodlab vm enroll NAME` on
     a lab VM)
  3. run lab.yml again: it signs every module again with the new key, reloads it,
     verifies, and queues the old certificate for deletion from MokList (confirmed
     in MokManager at the next boot, as in 2)"""


@key_app.command("rotate")
@clean_errors
def key_rotate(
    name: Name = keys.DEFAULT_NAME,
    years: Years = 10,
    bits: Bits = 4096,
    key_dir: KeyDir = None,
) -> None:
    """Replace the key: the old certificate is kept as the previous one, its key deleted."""
    pair = keys.rotate(name, years=years, bits=bits, root=key_dir)
    old = pair.previous
    _say(f"rotated signing key {name}")
    _line("old sha256", old.fingerprint if old else "-")
    _line("new sha256", pair.cert.fingerprint)
    _line("directory", str(pair.directory))
    _say(NEXT_STEPS)


@key_app.command("export")
@clean_errors
def key_export(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="file (or existing folder) to write")
    ],
    name: Name = keys.DEFAULT_NAME,
    fmt: Annotated[
        Format, typer.Option("--format", "-f", help="der (for MOK) or pem")
    ] = Format.der,
    key_dir: KeyDir = None,
) -> None:
    """Write the key's certificate (never the private key)."""
    path = keys.export(name, output, "der" if fmt is Format.der else "pem", root=key_dir)
    _say(str(path))
