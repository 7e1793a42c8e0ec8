# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin kmodlab.lab.kmod_packages: hand built packages to the host in one call.

Reads each package descriptor's ``path`` (a .deb in the controller's artifact store),
checks its sha256 against the descriptor and passes the file base64 as ``content``
(``path`` dropped), then runs the module of the same name on the host once. Every
descriptor's content is passed: the packages are small, the host's store may have been
pruned since the facts were gathered, and a second round trip would cost more than the
bytes. Documentation: plugins/modules/kmod_packages.py.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from ansible.plugins.action import ActionBase

MODULE = "kmodlab.lab.kmod_packages"


class PackageError(Exception):
    pass


def with_content(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with ``content`` read from its ``path`` (checked against ``sha256``)."""
    out = {k: v for k, v in spec.items() if k != "path"}
    path = spec.get("path")
    if not path or spec.get("content") is not None:
        return out
    name = spec.get("package") or spec.get("file") or path
    try:
        data = Path(str(path)).expanduser().read_bytes()
    except OSError as exc:
        raise PackageError(
            f"package {name}: cannot read {path} on the controller ({exc.strerror or exc}); "
            "build the packages first"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    wanted = str(spec.get("sha256") or "").lower()
    if digest != wanted:
        raise PackageError(
            f"package {name}: {path} has sha256 {digest}, the descriptor says {wanted or 'none'}: "
            "the artifact store changed after the build; build again"
        )
    out["content"] = base64.b64encode(data).decode("ascii")
    return out


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("state", "packages", "records", "store", "fact_path", "keep"))

    def run(
        self, tmp: str | None = None, task_vars: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        packages = args.get("packages") or []
        if not isinstance(packages, list) or not all(isinstance(p, dict) for p in packages):
            result.update(failed=True, msg="packages must be a list of package descriptors")
            return result
        try:
            args["packages"] = [with_content(p) for p in packages]
        except PackageError as exc:
            result.update(failed=True, msg=str(exc))
            return result
        result.update(
            self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)
        )
        return result
