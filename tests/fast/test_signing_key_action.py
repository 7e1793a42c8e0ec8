"""Fast tier: the action kmodlab.lab.signing_key through a real ansible-playbook run on the
controller (no host): the key store's key created once, public facts only in the result,
a key others can read refused with the fix, a vault-encrypted key taken with the right
vault password and refused with a wrong one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kmodlab import keys

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - kmodlab.lab.signing_key: {args}
      register: key
    - ansible.builtin.copy:
        content: "{{{{ key | to_json }}}}"
        dest: {out}
        mode: "0600"
"""


def play(tmp_path: Path, args: dict, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "result.json"
    out.unlink(missing_ok=True)
    book = tmp_path / "play.yml"
    book.write_text(PLAY.format(args=json.dumps(args), out=out))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    proc = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            str(book),
            *extra,
            "-e",
            f"ansible_python_interpreter={sys.executable}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    result = json.loads(out.read_text()) if out.exists() else {}
    return proc, result


def test_creates_once_and_returns_public_facts_only(tmp_path: Path) -> None:
    store = tmp_path / "keys"
    proc, first = play(tmp_path, {"name": "lab", "store": str(store)})
    assert proc.returncode == 0, proc.stdout[-3000:]
    pair = keys.load("lab", root=store)
    assert first["changed"] is True
    cert = first["certificate"]
    assert cert["fingerprint"] == pair.cert.fingerprint and cert["sig_key"] == pair.cert.sig_key
    assert cert["signer"] == "kmodlab lab module signing key"
    assert Path(cert["der_file"]).read_bytes() == pair.cert.der_path.read_bytes()
    assert first["private_key"] == str(pair.key_path) and first["previous"] is None
    assert "PRIVATE KEY" not in json.dumps(first) + proc.stdout + proc.stderr
    assert "mok_password" not in first
    proc, second = play(tmp_path, {"name": "lab", "store": str(store)})
    assert proc.returncode == 0 and second["changed"] is False
    assert second["certificate"]["fingerprint"] == cert["fingerprint"]


def test_a_key_others_can_read_is_refused_with_the_fix(tmp_path: Path) -> None:
    store = tmp_path / "keys"
    pair, _created = keys.create("lab", root=store, bits=2048)
    pair.key_path.chmod(0o644)
    proc, result = play(tmp_path, {"name": "lab", "store": str(store)})
    assert proc.returncode != 0 and not result
    assert f"chmod 600 {pair.key_path}" in proc.stdout, proc.stdout[-3000:]


@pytest.mark.parametrize("password", ["right", "wrong"])
def test_a_vault_encrypted_key(tmp_path: Path, password: str) -> None:
    pair, _created = keys.create("lab", root=tmp_path / "keys", bits=2048)
    vault = tmp_path / "signing.key.vault"
    vault.write_bytes(pair.key_path.read_bytes())
    right, wrong = tmp_path / "right.pass", tmp_path / "wrong.pass"
    right.write_text("correct horse\n")
    wrong.write_text("battery staple\n")
    subprocess.run(
        [str(BIN / "ansible-vault"), "encrypt", "--vault-password-file", str(right), str(vault)],
        check=True,
        capture_output=True,
    )
    vault.chmod(0o644)  # a vault file's mode says nothing of the key inside
    args = {"private_key": str(vault), "certificate": str(pair.cert.pem_path)}
    proc, result = play(
        tmp_path, args, "--vault-password-file", str(right if password == "right" else wrong)
    )
    if password == "right":
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert result["certificate"]["fingerprint"] == pair.cert.fingerprint
        assert result["private_key"] == str(vault)
    else:
        assert proc.returncode != 0
        assert "Decryption failed" in proc.stdout + proc.stderr, proc.stdout[-3000:]
    assert "PRIVATE KEY" not in proc.stdout + proc.stderr
