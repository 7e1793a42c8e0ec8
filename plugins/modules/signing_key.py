# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# The work is done on the controller by the action plugin plugins/action/signing_key.py;
# this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: signing_key
short_description: The project's kernel module signing key, kept on the controller
description:
  - Takes the project signing key from the kmodlab key store (the one C(kmodlab key)
    manages; C(~/.local/share/kmodlab/keys/NAME/) by default), creating it there when it
    does not exist yet, or takes a private key and certificate given by path.
  - "A created key: RSA 4096, a self-signed X.509 certificate (SHA-256) whose subject names
    the key (C(CN=kmodlab NAME module signing key)), key usage digitalSignature, extended
    key usage code signing, valid ten years; folder 0700, private key 0600."
  - Refuses a private key that others can read, that does not match its certificate, or
    whose certificate has expired, saying what to do. Either file may be an Ansible Vault
    file (decrypted in memory to check it; the vault's own mode does not matter).
  - Returns the certificate's public facts and the controller path of the private key,
    never the key itself. Runs on the controller and never contacts the host.
version_added: "0.2.0"
author: kmodlab (@kmodlab)
options:
  name:
    description: Name of the key in the store.
    type: str
    default: lab
  store:
    description:
      - Controller folder of the key store. Default C($KMODLAB_KEY_DIR), else
        C($XDG_DATA_HOME/kmodlab/keys), else C(~/.local/share/kmodlab/keys).
    type: path
  private_key:
    description:
      - Controller path of an existing PEM private key (unencrypted, or an Ansible Vault
        file), instead of the store's. With O(certificate).
    type: path
  certificate:
    description: Controller path of the certificate of O(private_key), PEM or DER.
    type: path
  create:
    description: Create the key in the store when it does not exist.
    type: bool
    default: true
  mok_password:
    description:
      - Also return the one-time MOK password of the store's key (generated once, kept in
        the store as C(mok-password), mode 0600). Use with C(no_log).
    type: bool
    default: false
attributes:
  check_mode:
    description: In check mode a missing key is still created (it lives on the controller only).
    support: partial
  diff_mode:
    description: Shows no diff.
    support: none
  platform:
    description: Runs on the controller only.
    support: full
    platforms: all
notes:
  - Set C(no_log) on the task when O(mok_password) is true.
"""

EXAMPLES = r"""
- name: Take (or create) the lab's signing key
  kmodlab.lab.signing_key:
    name: lab
  register: key
  run_once: true

- name: Use a key from the organisation's PKI, kept in a vault file
  kmodlab.lab.signing_key:
    private_key: files/module-signing.key.vault
    certificate: files/module-signing.crt
  register: key
  run_once: true
"""

RETURN = r"""
name:
  description: The key's name in the store; null for a key given by path.
  returned: success
  type: str
private_key:
  description: Controller path of the private key (a vault file stays encrypted on disk).
  returned: success
  type: str
certificate:
  description: The certificate's public facts.
  returned: success
  type: dict
  contains:
    subject:
      description: Subject, RFC 4514.
      type: str
    signer:
      description: Its common name, as C(modinfo -F signer) shows it on a signed module.
      type: str
    sig_key:
      description: Its serial number as C(modinfo -F sig_key) shows it (C(1A:2B:...)).
      type: str
    fingerprint:
      description: SHA-256 of the DER certificate, C(AA:BB:...).
      type: str
    keyring_description:
      description: How the kernel names the key in C(/proc/keys) once it trusts it.
      type: str
    not_after:
      description: End of validity, ISO 8601.
      type: str
    der_b64:
      description: The DER certificate, base64.
      type: str
    der_file:
      description: A controller file holding the DER certificate (for C(copy) and mokutil).
      type: str
    pem:
      description: The certificate in PEM.
      type: str
previous:
  description: After C(kmodlab key rotate), the replaced certificate (same fields); else null.
  returned: success
  type: dict
mok_password:
  description: The one-time MOK password, with O(mok_password).
  returned: when O(mok_password) is true
  type: str
mok_password_file:
  description: Where the store keeps it.
  returned: when O(mok_password) is true
  type: str
"""
