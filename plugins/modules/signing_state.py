#!/usr/bin/python
# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only probe of module signing on a target: Secure Boot, lockdown, MOKs, keyrings."""

from __future__ import annotations

DOCUMENTATION = r"""
module: signing_state
short_description: Read the Secure Boot state and where module signing certificates stand
description:
  - Reads whether the host booted through UEFI, the firmware's C(SecureBoot) and
    C(SetupMode) variables, the kernel's lockdown mode
    (C(/sys/kernel/security/lockdown)) and whether the kernel refuses unsigned modules
    (C(/sys/module/module/parameters/sig_enforce)).
  - For each certificate given, tells whether shim has it enrolled as a Machine Owner
    Key (C(MokListRT), read from C(/sys/firmware/efi/mok-variables) or from efivars,
    split lists C(MokListRT1), C(MokListRT2)... joined), whether an enrolment or a
    deletion is waiting for the next boot (C(MokNew), C(MokDel), as C(mokutil --import)
    and C(mokutil --delete) leave them), and whether a key with its description is in
    the kernel's keyrings (C(/proc/keys)).
  - Never changes anything (C(changed) is always false).
  - Runs on the target; needs root to see the kernel's keyrings in C(/proc/keys).
author:
  - kmodlab (@kmodlab)
attributes:
  check_mode:
    support: full
    description: Read-only; runs normally in check mode.
  diff_mode:
    support: none
    description: Reads only; there is nothing to show a difference of.
options:
  certificates:
    description:
      - The certificates to look for (public data only).
    type: list
    elements: dict
    default: []
    suboptions:
      id:
        description:
          - Name of the certificate in RV(certificates).
        type: str
        required: true
      der_b64:
        description:
          - The DER-encoded X.509 certificate, base64-encoded.
        type: str
        required: true
      keyring_description:
        description:
          - "The description the kernel gives the certificate's key in C(/proc/keys):
            its common name, a colon and a space, and its subject key identifier in hex,
            e.g. C(kmodlab module signing: 6ccece7e4c6c0d1f6149f3dd27dfcc5cbb419ea1)."
        type: str
        required: true
  modules:
    description:
      - Kernel module names whose installed files (as C(modinfo -n) finds them) are checked
        against the first certificate of O(certificates); see RV(unsigned).
    type: list
    elements: str
    default: []
  root:
    description:
      - Directory under which C(/sys) and C(/proc) are read. Only for tests and chroots.
    type: path
    default: /
notes:
  - The firmware variables are read from efivarfs; a host where it is not mounted
    shows RV(secure_boot) and RV(setup_mode) as null.
"""

EXAMPLES = r"""
- name: Read the signing state of the host
  kmodlab.lab.signing_state:
    certificates:
      - id: kmodlab
        der_b64: "{{ lookup('ansible.builtin.file', 'mok.der.b64') }}"
        keyring_description: "kmodlab module signing: 6ccece7e4c6c0d1f6149f3dd27dfcc5cbb419ea1"
  register: __signing_state

- name: Tell whether the certificate still has to be enrolled
  ansible.builtin.debug:
    msg: >-
      {{ 'enrolled' if __signing_state.certificates.kmodlab.enrolled
         else 'waiting for the next boot' if __signing_state.certificates.kmodlab.pending_enroll
         else 'not enrolled' }}
"""

RETURN = r"""
efi:
  description: Whether the host booted through UEFI (C(/sys/firmware/efi) exists).
  returned: always
  type: bool
secure_boot:
  description: The firmware's C(SecureBoot) variable; false on a host without UEFI, null
    when it cannot be read.
  returned: always
  type: bool
setup_mode:
  description: The firmware's C(SetupMode) variable (true - no platform key, Secure Boot
    not enforced); null without UEFI or when it cannot be read.
  returned: always
  type: bool
lockdown:
  description: The kernel's lockdown mode (none, integrity, confidentiality), or null when
    C(/sys/kernel/security/lockdown) does not exist.
  returned: always
  type: str
module_sig_enforced:
  description: Whether the kernel refuses modules without a valid signature
    (C(/sys/module/module/parameters/sig_enforce)), or null when that file does not exist.
  returned: always
  type: bool
unsigned:
  description:
    - With O(modules), the modules whose installed file is not validly signed by the
      first certificate of O(certificates) (checked as the kernel checks it), as messages.
  returned: always
  type: list
  elements: str
certificates:
  description: Per certificate id given in O(certificates), where it stands.
  returned: always
  type: dict
  contains:
    enrolled:
      description: "Enrolled: in shim's MokListRT."
      type: bool
    pending_enroll:
      description: "An enrolment waits for the next boot (MokNew)."
      type: bool
    pending_delete:
      description: "A deletion waits for the next boot (MokDel)."
      type: bool
    in_kernel_keyring:
      description: A key of the kernel's keyrings in C(/proc/keys) has the given
        description.
      type: bool
"""

import base64
import binascii
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kmodlab.lab.plugins.module_utils.files import host_path
from ansible_collections.kmodlab.lab.plugins.module_utils.modsig import (
    problem_for_file,
    public_numbers_from_der,
)
from ansible_collections.kmodlab.lab.plugins.module_utils.secure_boot import (
    certificate_state,
    lockdown,
    secure_boot,
    sig_enforce,
)

ARGUMENT_SPEC = dict(
    certificates=dict(
        type="list",
        elements="dict",
        default=[],
        options=dict(
            id=dict(type="str", required=True),
            der_b64=dict(type="str", required=True),
            keyring_description=dict(type="str", required=True, no_log=False),
        ),
    ),
    modules=dict(type="list", elements="str", default=[]),
    root=dict(type="path", default="/"),
)


def _decode(text: str) -> tuple[bytes, str | None]:
    """(DER bytes, None) of a base64 text (whitespace ignored), or (b"", why not)."""
    try:
        der = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        return b"", f"der_b64 is not base64: {exc}"
    return der, None if der else "der_b64 is empty"


def _unsigned(
    module: AnsibleModule, root: str, kmods: list[str], der: bytes, cert_id: str
) -> list[str]:
    """Modules whose installed file (as modprobe finds it) is not validly signed by the
    certificate ``der``, checked as the kernel checks it."""
    try:
        n, e, serial = public_numbers_from_der(der)
    except ValueError as exc:
        module.fail_json(msg=f"certificates[{cert_id}]: not an RSA certificate ({exc})")
    modinfo = module.get_bin_path("modinfo", required=True)
    out = []
    for kmod in kmods:
        argv = [modinfo, "-n", kmod] if root == "/" else [modinfo, "-b", root, "-n", kmod]
        rc, stdout, stderr = module.run_command(argv)
        if rc != 0:
            out.append(f"{kmod}: not installed ({stderr.strip()})")
            continue
        path = stdout.strip()
        problem = problem_for_file(host_path(root, path), n, e, serial)
        if problem:
            out.append(f"{kmod}: {path}: {problem}")
    return out


def run(module: AnsibleModule) -> dict[str, Any]:
    params = module.params
    root = params["root"]
    wanted = {}
    for index, cert in enumerate(params["certificates"] or []):
        what = f"certificates[{index}] ({cert['id']})"
        if cert["id"] in wanted:
            module.fail_json(msg=f"{what}: the id is given twice")
        der, error = _decode(str(cert["der_b64"]))
        if error:
            module.fail_json(msg=f"{what}: {error}")
        wanted[cert["id"]] = (der, cert["keyring_description"])
    certificates = {}
    for cert_id, (der, description) in wanted.items():
        try:
            certificates[cert_id] = certificate_state(root, der, description)
        except ValueError as exc:
            module.fail_json(msg=f"shim's MOK variables cannot be read: {exc}")
    unsigned = []
    if params["modules"]:
        if not wanted:
            module.fail_json(msg="modules: give the certificate to check them against")
        first = next(iter(wanted))
        unsigned = _unsigned(module, root, params["modules"], wanted[first][0], first)
    return {
        "changed": False,
        "unsigned": unsigned,
        **secure_boot(root),
        "lockdown": lockdown(root),
        "module_sig_enforced": sig_enforce(root),
        "certificates": certificates,
    }


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module.exit_json(**run(module))


if __name__ == "__main__":
    main()
