# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin kmodlab.lab.signing_key: the project's module signing key, on the controller.

Creates the key in the kmodlab key store when it does not exist (``kmodlab.keys``, the
code behind ``kmodlab key``), or takes a key and certificate given by path (either may be
an Ansible Vault file), checks them (modes, key matches certificate, not expired) and
returns the certificate's public facts. The private key never leaves this plugin: only
its controller path is returned, for a ``copy`` task that has ``no_log``. Documentation:
plugins/modules/signing_key.py.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleError
from ansible.parsing.vault import is_encrypted_file
from ansible.plugins.action import ActionBase

try:
    from kmodlab import keys
except ImportError as exc:  # the controller runs Ansible outside the kmodlab virtualenv
    IMPORT_ERROR: ImportError | None = exc
else:
    IMPORT_ERROR = None


def _public(cert: Any) -> dict[str, Any]:
    """What hosts and checks need of a certificate; all of it public."""
    return {
        "subject": cert.subject,
        "signer": cert.common_name,
        "sig_key": cert.sig_key,
        "fingerprint": cert.fingerprint,
        "keyring_description": cert.keyring_description(),
        "not_after": cert.not_after.isoformat(),
    }


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _VALID_ARGS = frozenset(
        ("name", "store", "private_key", "certificate", "create", "mok_password")
    )

    def run(
        self, tmp: str | None = None, task_vars: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        if IMPORT_ERROR is not None:
            result.update(
                failed=True,
                msg=f"the kmodlab Python package is not importable on the controller "
                f"({IMPORT_ERROR}): run Ansible from the kmodlab virtualenv "
                f"(scripts/install-deps)",
            )
            return result
        args = self._task.args
        name = args.get("name") or keys.DEFAULT_NAME
        store = Path(args["store"]).expanduser() if args.get("store") else None
        try:
            if args.get("private_key") or args.get("certificate"):
                out = self._given(args.get("private_key"), args.get("certificate"))
            else:
                out = self._stored(name, store, bool(args.get("create", True)))
            if args.get("mok_password"):
                out["mok_password"] = keys.mok_password(name, store)
                out["mok_password_file"] = str(keys.key_dir(name, store) / keys.PASSWORD_FILE)
        except keys.KeyStoreError as exc:
            result.update(failed=True, msg=str(exc))
            return result
        result.update(out)
        return result

    def _stored(self, name: str, store: Path | None, create: bool) -> dict[str, Any]:
        changed = False
        if create:
            pair, changed = keys.create(name, root=store)
        pair = keys.load(name, root=store)  # modes, match and expiry checked
        out = {
            "changed": changed,
            "name": name,
            "private_key": str(pair.key_path),
            "certificate": _public_with_der(pair.cert),
            "previous": _public_with_der(pair.previous) if pair.previous else None,
        }
        return out

    def _given(self, key: str | None, cert: str | None) -> dict[str, Any]:
        if not key or not cert:
            raise keys.KeyStoreError(
                "give both private_key and certificate (or neither, for the key store's key)"
            )
        cert_data = self._read(cert)
        info = keys.cert_info_bytes(cert_data)
        key_path = Path(key).expanduser()
        try:
            with open(key_path, "rb") as handle:
                encrypted = is_encrypted_file(handle)
        except OSError as exc:
            raise keys.KeyStoreError(f"cannot read the private key {key}: {exc.strerror}") from None
        if encrypted:
            # A vault file: its own mode says nothing of the key; decrypted to a 0600 temp.
            real = self._loader.get_real_file(str(key_path), decrypt=True)
            try:
                keys.check_key_file(Path(real), info)
            finally:
                self._loader.cleanup_tmp_file(real)
        else:
            keys.check_key_file(key_path, info)
        return {
            "changed": False,
            "name": None,
            "private_key": str(key_path),
            "certificate": _public_with_der(info, cert_data),
            "previous": None,
        }

    def _read(self, path: str) -> bytes:
        try:
            real = self._loader.get_real_file(str(Path(path).expanduser()), decrypt=True)
        except AnsibleError as exc:
            raise keys.KeyStoreError(f"cannot read {path}: {exc}") from None
        try:
            return Path(real).read_bytes()
        finally:
            self._loader.cleanup_tmp_file(real)


def _public_with_der(cert: Any, data: bytes | None = None) -> dict[str, Any]:
    """The public facts, the DER (base64) and a controller file holding the DER: the key
    store's own, else a copy in the cache (a certificate given as PEM, or from a vault)."""
    out = _public(cert)
    der_file = Path(cert.der_path) if data is None and cert.der_path is not None else None
    if der_file is not None:
        data = der_file.read_bytes()
    if data is None:
        raise keys.KeyStoreError(f"no certificate data for {cert.subject}")
    if data.lstrip().startswith(b"-----BEGIN"):
        body = data.decode("ascii").split("-----")[2]
        data = base64.b64decode("".join(body.split()))
    if der_file is None:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kmodlab/certs"
        cache.mkdir(parents=True, exist_ok=True)
        der_file = cache / (cert.fingerprint.replace(":", "").lower() + ".der")
        if not der_file.exists() or der_file.read_bytes() != data:
            der_file.write_bytes(data)
    out["der_b64"] = base64.b64encode(data).decode()
    out["der_file"] = str(der_file)
    body = base64.encodebytes(data).decode().replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    out["pem"] = (
        "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"
    )
    return out
