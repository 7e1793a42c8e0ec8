# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin kmodlab.lab.module_build: build every selected module once per kernel ABI.

Runs on the controller, once for the play (run_once): collects the ABIs the play's hosts
run (``ansible_facts.kernel``) and the target kernels, the union of the hosts' selections,
and hands them to :func:`kmodlab.fleet.builder.build` (Docker builder, central signing,
Debian packages in the artifact store). Returns the packages of every host: those of its
running kernel and of the target kernels, for the modules it selects. The grouping is
:func:`kmodlab.fleet.plan.group` (unit-tested). Documentation: plugins/modules/module_build.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ansible.plugins.action import ActionBase

try:
    from kmodlab import keys
    from kmodlab.fleet import builder, plan
    from kmodlab.lab.errors import LabError
except ImportError as exc:  # the controller runs Ansible outside the kmodlab virtualenv
    IMPORT_ERROR: ImportError | None = exc
else:
    IMPORT_ERROR = None

_ARGS = frozenset(
    ("hosts", "selection", "target_kernels", "key_name", "key_store", "release", "jobs")
)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _VALID_ARGS = _ARGS

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
        args = self._task.args
        hostvars = task_vars.get("hostvars") or {}
        selection = args.get("selection")
        hosts: dict[str, plan.HostInput] = {}
        for name in args.get("hosts") or []:
            hv = hostvars.get(name) or {}
            kernel = (hv.get("ansible_facts") or {}).get("kernel")
            records = selection if selection is not None else hv.get("kmodlab_selection")
            if records is None:
                result.update(
                    failed=True,
                    msg=f"{name} has no kmodlab_selection: run kmodlab.lab.selection first "
                    "(fleet.yml does, in its first play)",
                )
                return result
            hosts[name] = plan.HostInput(
                kernel=self._templar.template(kernel), records=self._templar.template(records)
            )
        try:
            targets = plan.check_kernels(args.get("target_kernels") or [])
            work = plan.group(hosts, targets)
            name, store = str(args.get("key_name") or keys.DEFAULT_NAME), _store(args)
            keys.create(name, root=store)  # once: a second call changes nothing
            built = builder.build(
                work.records,
                work.abis,
                builder.KeyMaterial.from_store(name, store),
                release=str(args.get("release") or "bookworm"),
                jobs=int(args.get("jobs") or 2),
                progress=self._display.vvv,
            )
        except (LabError, plan.PlanError, ValueError) as exc:
            result.update(failed=True, msg=str(exc))
            return result
        failures = [
            {"module": f.module, "abi": f.abi, "message": f.message, "log": f.log_tail}
            for f in built.failures
        ]
        per_host = plan.packages_per_host(work, built.descriptors)
        result.update(
            changed=built.compiled > 0,
            abis=work.abis,
            hosts=per_host,
            packages=built.descriptors,
            compiled=built.compiled,
            cached=built.cached,
            failures=failures,
            failure_lines=[f"{f['module']} for {f['abi']}: {f['message']}" for f in failures],
            timings=built.timings,
            summary=plan.summary(work, built),
        )
        return result


def _store(args: dict[str, Any]) -> Path | None:
    store = args.get("key_store")
    return Path(str(store)).expanduser() if store else None
