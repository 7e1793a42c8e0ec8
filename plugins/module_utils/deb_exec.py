# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The executor of ``kmodlab.lab.kmod_packages``: gather a snapshot, plan, act, report.

Runs on the managed host inside the module's payload: standard library and Ansible's
``module_utils`` only. The decisions are the planner's (``deb_plan.py``); this file reads
the host (``/lib/modules``, one ``dpkg-query``, the package store, the state file), runs
the plan (store files, one ``dpkg -i`` with ``KMODLAB_DEFER_DEPMOD=1``, one
``dpkg --purge``, one ``depmod -a ABI`` per kernel), writes the state file, and reports.

When ``dpkg -i`` fails, the packages of that batch are put back as they were: a package
that was not installed before is purged, one that was is installed again at its previous
version from the store. The failure names each package dpkg refused and dpkg's words,
and says whether the host is back where it was.
"""

from __future__ import annotations

import base64
import binascii
import glob
import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ansible_collections.kmodlab.lab.plugins.module_utils.deb_plan import (
    ABI,
    DEFER_DEPMOD_ENV,
    Descriptor,
    Install,
    Installed,
    Plan,
    PlanError,
    Purge,
    Snapshot,
    normalise,
    plan_commit,
    plan_present,
    plan_rollback,
    split_deb,
)
from ansible_collections.kmodlab.lab.plugins.module_utils.delivery import (
    DKMS_TREE,
    dkms_conflict,
    dkms_copies,
)
from ansible_collections.kmodlab.lab.plugins.module_utils.dpkg_status import (
    parse_query,
    query_argv,
)
from ansible_collections.kmodlab.lab.plugins.module_utils.files import write_atomic

ENV = {
    "LC_ALL": "C",
    "LANG": "C",
    "DEBIAN_FRONTEND": "noninteractive",
    DEFER_DEPMOD_ENV: "1",
}
_DPKG_ERROR = re.compile(
    r"^dpkg: error processing (?:package|archive) (\S+) \(--[a-z-]+\):\n((?: .*\n?)+)",
    re.MULTILINE,
)


@dataclass(frozen=True)
class Paths:
    """Where the host keeps its kernels and DKMS its modules (tests move them)."""

    lib_modules: str = "/lib/modules"
    dkms_tree: str = DKMS_TREE


class Failed(Exception):
    """Stop the run: ``msg`` and extra return values."""

    def __init__(self, msg: str, **extra: Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.extra = extra


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def dpkg_errors(output: str, files: dict[str, str]) -> list[str]:
    """``PACKAGE: dpkg's message`` per package (or archive) dpkg reported an error for."""
    out = []
    for match in _DPKG_ERROR.finditer(output):
        name = files.get(match.group(1), match.group(1))
        text = " ".join(line.strip() for line in match.group(2).splitlines() if line.strip())
        out.append(f"{name}: {text}")
    return out


def _item(step: Install | Purge) -> dict[str, str]:
    return {"package": step.package, "version": step.version, "abi": step.abi}


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class Executor:
    def __init__(self, module: Any, paths: Paths | None = None) -> None:
        self.module = module
        self.params = module.params
        self.paths = paths or Paths()
        self.check_mode = module.check_mode
        self.state_name = self.params["state"]
        self.store = self.params["store"]
        self.fact_path = self.params["fact_path"]
        self.depmod_done: list[str] = []
        self.kernels: frozenset[str] = frozenset()

    # -- reading the host ------------------------------------------------------------------

    def now(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def read_state(self) -> dict[str, Any]:
        try:
            with open(self.fact_path) as handle:
                text = handle.read()
        except FileNotFoundError:
            return normalise(None)
        except OSError as exc:
            raise Failed(f"cannot read the rollout state {self.fact_path}: {exc}") from None
        try:
            return normalise(json.loads(text) if text.strip() else None)
        except (ValueError, AttributeError) as exc:
            raise Failed(
                f"the rollout state {self.fact_path} is not valid JSON ({exc}); it was left "
                "as it is: repair or remove it (removing forgets good and pending versions)"
            ) from None

    def query(self, names: Iterable[str]) -> dict[str, Installed]:
        """dpkg's view of the kmodlab packages and of the named ones, in one call."""
        cmd = [*query_argv("kmodlab-*"), *names]
        rc, out, err = self.module.run_command(cmd, environ_update=ENV)
        if rc not in (0, 1):  # 1: some name matched no package
            raise Failed(f"dpkg-query failed (rc {rc}): {_tail(err)}")
        return {
            name: Installed(entry["version"], entry["abbrev"])
            for name, entry in parse_query(out).items()
            if entry["version"]
        }

    def read_store(self) -> dict[tuple[str, str], str]:
        found = {}
        for path in glob.glob(os.path.join(glob.escape(self.store), "*", "*.deb")):
            abi, file = path.split(os.sep)[-2:]
            if ABI.match(abi) and split_deb(file) and os.path.isfile(path):
                found[(abi, file)] = sha256_file(path)
        return found

    def kernel_there(self, abi: str, dpkg: dict[str, Installed]) -> bool:
        if os.path.exists(os.path.join(self.paths.lib_modules, abi, "modules.order")):
            return True
        return any(
            (cur := dpkg.get(name)) is not None and cur.ok
            for name in (f"linux-image-{abi}", f"linux-image-{abi}-unsigned")
        )

    def snapshot(self, state: dict[str, Any], descriptors: Sequence[Descriptor]) -> Snapshot:
        abis = {d.abi for d in descriptors}
        for part in ("good", "pending"):
            for entry in (state[part] or {}).values():
                abis.update((entry.get("packages") or {}).keys())
        kernel_packages = [f"linux-image-{a}{s}" for a in sorted(abis) for s in ("", "-unsigned")]
        dpkg = self.query(kernel_packages)
        for package in dpkg:
            # The ABI of any kmodlab package: the part after "-modules-" that is a release.
            _before, sep, abi = package.rpartition("-modules-")
            if sep and ABI.match(abi):
                abis.add(abi)
        kernels = frozenset(a for a in abis if self.kernel_there(a, dpkg))
        self.kernels = kernels
        dpkg = {k: v for k, v in dpkg.items() if k.startswith("kmodlab-")}
        return Snapshot(
            kernels=kernels, dpkg=dpkg, store=self.read_store(), state=state, now=self.now()
        )

    # -- acting ----------------------------------------------------------------------------

    def store_path(self, abi: str, file: str) -> str:
        return os.path.join(self.store, abi, file)

    def write_store(self, items: Sequence[Descriptor], contents: dict[str, bytes]) -> None:
        for d in items:
            folder = os.path.join(self.store, d.abi)
            try:
                for path in (self.store, folder):
                    if not os.path.isdir(path):
                        os.makedirs(path, 0o755, exist_ok=True)
                        os.chmod(path, 0o755)
                write_atomic(
                    self.module, self.store_path(d.abi, d.file), contents[d.package], 0o644, True
                )
            except OSError as exc:
                raise Failed(f"cannot write {self.store_path(d.abi, d.file)}: {exc}") from None

    def dpkg(self, args: list[str]) -> tuple[int, str]:
        rc, out, err = self.module.run_command(["dpkg", *args], environ_update=ENV)
        return rc, (out or "") + (err or "")

    def depmod(self, abis: Iterable[str]) -> list[str]:
        """``depmod -a ABI`` for each; the failures' texts."""
        failures = []
        depmod = self.module.get_bin_path("depmod", required=False) or "depmod"
        for abi in abis:
            rc, out, err = self.module.run_command([depmod, "-a", abi], environ_update=ENV)
            self.depmod_done.append(abi)
            if rc != 0:
                failures.append(f"depmod -a {abi} failed (rc {rc}): {_tail(out + err, 5)}")
        return failures

    def install(self, installs: Sequence[Install], before: dict[str, Installed]) -> None:
        if not installs:
            return
        paths = [self.store_path(i.abi, i.file) for i in installs]
        rc, output = self.dpkg(["-i", *paths])
        if rc == 0:
            return
        files = {p: i.package for p, i in zip(paths, installs, strict=True)}
        errors = dpkg_errors(output, files) or [f"dpkg -i exited {rc}: {_tail(output)}"]
        host = self.restore([i.package for i in installs], before)
        raise Failed(
            "dpkg could not install " + "; ".join(errors) + ". " + host["summary"],
            dpkg_output=_tail(output, 40),
            host_packages=host["packages"],
            restored=host["restored"],
        )

    def restore(self, packages: Sequence[str], before: dict[str, Installed]) -> dict[str, Any]:
        """Put ``packages`` back as ``before`` had them; say where the host stands."""
        now = self.query(packages)
        reinstall, purge, lost = [], [], []
        for name in packages:
            was, cur = before.get(name), now.get(name)
            if was is None or not was.present:
                if cur is not None and cur.present:
                    purge.append(name)
                continue
            if cur is not None and cur.version == was.version and cur.status == was.status:
                continue
            abi = name.rpartition("-modules-")[2]
            copies = glob.glob(
                os.path.join(
                    glob.escape(os.path.join(self.store, abi)), f"{name}_{was.version}_*.deb"
                )
            )
            if copies:
                reinstall.append(copies[0])
            else:
                lost.append(f"{name} {was.version} (no copy in {self.store}/{abi})")
        notes = []
        if reinstall:
            rc, output = self.dpkg(["-i", *reinstall])
            if rc != 0:
                notes.append(f"reinstalling the previous versions failed: {_tail(output, 5)}")
        if purge:
            rc, output = self.dpkg(["--purge", *purge])
            if rc != 0:
                notes.append(f"purging the new packages failed: {_tail(output, 5)}")
        abis = {n.rpartition("-modules-")[2] for n in packages}
        notes += self.depmod(sorted(abis & self.kernels))
        after = self.query(packages)
        state = {
            n: (f"{after[n].version} ({after[n].status.strip()})" if n in after else "absent")
            for n in packages
        }
        back = all(
            (after.get(n) is None or not after[n].present)
            if before.get(n) is None or not before[n].present
            else (after.get(n) == before[n])
            for n in packages
        )
        if back:
            summary = (
                "The host has the packages it had before this call (restored: "
                + (
                    ", ".join(os.path.basename(p) for p in reinstall)
                    + "; purged: "
                    + ", ".join(purge)
                )
                + ")."
            )
        else:
            summary = (
                "The host could NOT be fully restored: "
                + ", ".join(f"{n} is {s}" for n, s in state.items())
                + (f"; lost: {', '.join(lost)}" if lost else "")
                + (f"; {'; '.join(notes)}" if notes else "")
                + ". Repair with dpkg by hand before the next rollout."
            )
        return {"summary": summary, "packages": state, "restored": back}

    def purge(self, purges: Sequence[Purge]) -> None:
        if not purges:
            return
        names = list(dict.fromkeys(p.package for p in purges))
        rc, output = self.dpkg(["--purge", *names])
        if rc != 0:
            errors = dpkg_errors(output, {}) or [f"dpkg --purge exited {rc}: {_tail(output)}"]
            now = self.query(names)
            left = [f"{n} {now[n].version} ({now[n].status.strip()})" for n in names if n in now]
            raise Failed(
                "dpkg could not remove " + "; ".join(errors)
                + (". Still on the host: " + ", ".join(left) if left else ""),
                dpkg_output=_tail(output, 40),
            )  # fmt: skip

    def prune(self, items: Sequence[tuple[str, str]]) -> None:
        for abi, file in items:
            try:
                os.unlink(self.store_path(abi, file))
            except FileNotFoundError:
                pass
            except OSError as exc:
                self.module.warn(f"could not prune {self.store_path(abi, file)}: {exc}")

    def write_state(self, state: dict[str, Any]) -> None:
        data = (json.dumps(state, indent=2, sort_keys=True) + "\n").encode()
        try:
            write_atomic(self.module, self.fact_path, data, 0o644, True)
        except OSError as exc:
            raise Failed(f"cannot write the rollout state {self.fact_path}: {exc}") from None

    # -- the run ---------------------------------------------------------------------------

    def contents(self) -> dict[str, bytes]:
        out = {}
        for spec in self.params["packages"] or []:
            if spec.get("content") is None:
                continue
            try:
                data = base64.b64decode(spec["content"], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise Failed(f"package {spec['package']}: content is not base64 ({exc})") from None
            digest = hashlib.sha256(data).hexdigest()
            if digest != (spec["sha256"] or "").lower():
                raise Failed(
                    f"package {spec['package']}: the content's sha256 is {digest}, the "
                    f"descriptor says {spec['sha256']}: the .deb changed in transit or in the "
                    "artifact store; build it again"
                )
            out[spec["package"]] = data
        return out

    def plan(self, state: dict[str, Any], descriptors: list[Descriptor]) -> tuple[Plan, Snapshot]:
        snap = self.snapshot(state, descriptors)
        if self.state_name == "present":
            return plan_present(descriptors, self.params["records"] or [], snap), snap
        if self.state_name == "commit":
            return plan_commit(snap, self.params["keep"]), snap
        return plan_rollback(snap), snap

    def run(self) -> dict[str, Any]:
        state = self.read_state()
        descriptors = [Descriptor.from_params(s) for s in self.params["packages"] or []]
        if self.state_name == "present":
            wanted = {d.module for d in descriptors} | {
                r["name"] for r in self.params["records"] or [] if r.get("state") != "absent"
            }
            found = dkms_copies(sorted(wanted), self.paths.dkms_tree)
            if found:
                raise Failed(dkms_conflict(found))
        contents = self.contents() if self.state_name == "present" else {}
        plan, snap = self.plan(state, descriptors)
        state_changed = plan.state != state
        result: dict[str, Any] = {
            "installed": [_item(i) for i in plan.installs],
            "removed": [_item(p) for p in plan.purges],
            "depmod": plan.depmod,
            "skipped_abis": plan.skipped_abis,
            "records": plan.records,
            "written": [f"{d.abi}/{d.file}" for d in plan.writes],
            "pruned": [f"{a}/{f}" for a, f in plan.prune],
            "state_changed": state_changed,
            "rollout": plan.state,
        }
        result["changed"] = plan.touches_packages or (
            self.state_name != "present" and (state_changed or bool(plan.prune))
        )
        if self.check_mode:
            return result
        self.write_store(plan.writes, contents)
        self.install(plan.installs, dict(snap.dpkg))
        self.purge(plan.purges)
        if state_changed:
            self.write_state(plan.state)
        self.prune(plan.prune)
        failures = self.depmod(plan.depmod)
        if failures:
            raise Failed(
                "the packages are in place and recorded, but " + "; ".join(failures)
                + ": run depmod -a for that kernel before loading modules",
                **result,
            )  # fmt: skip
        return result

    def main(self) -> None:
        try:
            result = self.run()
        except PlanError as exc:
            self.module.fail_json(msg=str(exc))
        except Failed as exc:
            self.module.fail_json(msg=exc.msg, **exc.extra)
        self.module.exit_json(**result)
