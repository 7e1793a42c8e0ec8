# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin kmodlab.lab.selection: resolve a host's module selection, on the controller.

The play-level layers (kmodlab_modules, kmodlab_group_modules, kmodlab_host_modules) are
merged by name and joined with the manifests of the selected modules (and of the modules
they depend on) into records, set as the host fact ``kmodlab_selection``. Every stage
role takes those records; none reads a layer or a manifest itself. Documentation:
plugins/modules/selection.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ansible.plugins.action import ActionBase

try:
    from kmodlab.manifest import ManifestError
    from kmodlab.selection import (
        SelectionError,
        manifest_dirs,
        resolve_delivery,
        resolve_layers,
    )
    from kmodlab.sources import SourceError
except ImportError as exc:  # the controller runs Ansible outside the kmodlab virtualenv
    IMPORT_ERROR: ImportError | None = exc
else:
    IMPORT_ERROR = None

# The collection's own catalog: modules/NAME/module.yml beside plugins/.
CATALOG = Path(__file__).resolve().parents[2] / "modules"
FACT = "kmodlab_selection"
DELIVERY_FACT = "kmodlab_delivery"
_ARGS = {
    "modules": "kmodlab_modules",
    "group_modules": "kmodlab_group_modules",
    "host_modules": "kmodlab_host_modules",
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _VALID_ARGS = frozenset(
        ("modules", "group_modules", "host_modules", "manifest_dirs", "delivery")
    )

    def run(
        self, tmp: str | None = None, task_vars: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        if IMPORT_ERROR is not None:
            result.update(
                failed=True,
                msg=f"the kmodlab Python package is not importable on the controller "
                f"({IMPORT_ERROR}): run Ansible from the kmodlab virtualenv "
                f"(scripts/install-deps)",
            )
            return result
        layers = []
        for arg, var in _ARGS.items():
            if arg in self._task.args:
                layers.append((arg, self._task.args[arg]))
            elif var in task_vars:
                layers.append((var, self._templar.template(task_vars[var])))
        if not layers:
            result.update(
                failed=True,
                msg=f"kmodlab_modules is not set for {task_vars.get('inventory_hostname')}: list "
                "the modules to build and load (see inventory/example/group_vars/all.yml), "
                "e.g. kmodlab_modules: [{name: hello-5, params: {myint: 7}}]",
            )
            return result
        extra_dirs = self._task.args.get("manifest_dirs")
        if extra_dirs is None and "kmodlab_manifest_dirs" in task_vars:
            extra_dirs = self._templar.template(task_vars["kmodlab_manifest_dirs"])
        delivery = self._task.args.get("delivery")
        if delivery is None and "kmodlab_delivery" in task_vars:
            delivery = self._templar.template(task_vars["kmodlab_delivery"])
        try:
            dirs = manifest_dirs(extra_dirs, CATALOG)
            records = resolve_layers(dirs, layers)
            delivery = resolve_delivery(delivery)
        except (ManifestError, SelectionError, SourceError) as exc:
            result.update(failed=True, msg=str(exc))
            return result
        result.update(
            changed=False,
            ansible_facts={FACT: records, DELIVERY_FACT: delivery},
            modules=[r["name"] for r in records],
            delivery=delivery,
            manifest_dirs=[str(d) for d in dirs],
        )
        return result
