# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Inventory plugin: the running VMs of a kmodlab lab (the default inventory of lab.yml)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: vms
short_description: The running VMs of a local kmodlab lab
description:
  - Reads the lab's state (C(kmodlab vm up)) and returns its running VMs in group C(lab)
    (and C(secure_boot) for VMs booted with Secure Boot), with SSH settings to reach them.
  - Used by C(inventory/lab/kmodlab.vms.yml), so C(ansible-playbook lab.yml) with no C(-i)
    runs on the local lab.
options:
  plugin:
    description: Token that ensures this is a source file for this plugin.
    required: true
    choices: [kmodlab.lab.vms, vms]
  lab_dir:
    description:
      - The lab directory. Empty means C($KMODLAB_LAB_DIR), else the default lab under
        C($XDG_STATE_HOME/kmodlab/labs/default).
    type: str
    default: ""
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin

if TYPE_CHECKING:
    from ansible.inventory.data import InventoryData
    from ansible.parsing.dataloader import DataLoader

try:  # ansible-core >= 2.19: values from a plugin are untrusted unless marked
    from ansible.template import trust_as_template
except ImportError:  # pragma: no cover - older ansible-core

    def trust_as_template(value: Any) -> Any:
        return value


class InventoryModule(BaseInventoryPlugin):
    NAME = "kmodlab.lab.vms"

    def verify_file(self, path: str) -> bool:
        return super().verify_file(path) and path.endswith(("vms.yml", "vms.yaml"))

    def parse(
        self, inventory: InventoryData, loader: DataLoader, path: str, cache: bool = True
    ) -> None:
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        try:
            from kmodlab.lab.inventory import build
            from kmodlab.lab.paths import lab_dir
            from kmodlab.lab.vms import Lab
        except ImportError as exc:
            raise AnsibleParserError(
                f"kmodlab is not importable ({exc}): run Ansible from the kmodlab virtualenv"
            ) from None
        configured = self.get_option("lab_dir")
        lab = Lab(Path(configured).expanduser() if configured else lab_dir())
        data = build(lab)
        for group, body in data["all"]["children"].items():
            self.inventory.add_group(group)
            for host, hvars in body["hosts"].items():
                self.inventory.add_host(host, group=group)
                for key, value in hvars.items():
                    if isinstance(value, str):
                        # Our own values (ports, paths): trusted, so that
                        # `ansible-inventory --list` (testinfra) shows them as plain strings.
                        value = trust_as_template(value)
                    self.inventory.set_variable(host, key, value)
