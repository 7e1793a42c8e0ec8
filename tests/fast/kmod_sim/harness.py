"""Run the kmod_load role against a pretend kernel in a private mount namespace.

/sys/module, /proc/devices, /dev, /etc/modprobe.d and /etc/modules-load.d are
bind-mounted from a tmp dir (``unshare -m``), so the role, its probe module and
``modprobe``/``rmmod``/``modinfo`` (stand-ins on PATH) see a kernel that loads and
refuses modules like a real one. The pretend /dev has the few nodes Ansible needs, /dev/kmsg as a
file, and the nodes the pretend kernel creates for its modules (like devtmpfs).
``community.general.modprobe`` is replaced by a stand-in with the same interface
through a stub collection that also carries the real ``lists_mergeby``.
Needs root and ``unshare``; the tests skip otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
MODULES = HERE.parent / "fixtures" / "kmod" / "modules"
VENV_BIN = Path(sys.executable).parent


def available() -> str | None:
    """Why the simulation cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (mount namespaces)"
    if not shutil.which("unshare"):
        return "needs unshare"
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"unshare -m does not work here: {probe.stderr.strip()}"
    return None


def _spec_from_manifests() -> dict[str, Any]:
    """Pretend kernel modules matching the fixture manifests."""
    mods: dict[str, Any] = {}
    for path in sorted(MODULES.glob("*/module.yml")):
        m = yaml.safe_load(path.read_text())
        kmod = m["name"].replace("-", "_")
        mods[kmod] = {
            "name": m["name"],
            "params": {
                p["name"]: {
                    "type": p["type"],
                    "array": p.get("array", False),
                    "counted": p.get("counted", True),
                    "perm": p.get("perm", "0000"),
                    "default": p["default"],
                }
                for p in m.get("parameters", [])
            },
            "devices": m.get("expect", {}).get("proc_devices", []),
            "nodes": m.get("expect", {}).get("dev_nodes", []),
            "depends": [d.replace("-", "_") for d in m.get("depends", [])],
            "srcversion": "SRC1",
            "installed_srcversion": "SRC1",
            "load_lines": [],
            "unload_lines": [],
        }
    mods["hello_5"]["load_lines"] = [
        "hello_5: hello, world; myint={myint}",
        "hello_5: myshort={myshort}",
    ]
    mods["hello_5"]["unload_lines"] = ["hello_5: goodbye, world"]
    mods["memory"]["load_lines"] = ["memory: registered on major {major}"]
    mods["memory"]["unload_lines"] = ["memory: unregistered major 60"]
    mods["base"]["load_lines"] = ["base: up"]
    mods["base"]["unload_lines"] = ["base: down"]
    mods["user"]["load_lines"] = ["user: up"]
    mods["user"]["unload_lines"] = ["user: down"]
    return {"modules": mods}


def manifest_vars(folder: Path) -> dict[str, Any]:
    """The play variables that make kmodlab.lab.selection read the manifests of ``folder``
    (before the collection's catalog): kmodlab_manifest_dirs."""
    return {"kmodlab_manifest_dirs": [str(folder)]}


# Character devices Ansible and Python need in /dev (name, major, minor).
_DEV_NODES = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
    ("ptmx", 5, 2),  # opens a pty of the devpts mounted at pts/ beside it
)


def _make_dev(dev: Path) -> None:
    dev.mkdir(parents=True)
    for name, major, minor in _DEV_NODES:
        os.mknod(dev / name, stat.S_IFCHR | 0o666, os.makedev(major, minor))
        os.chmod(dev / name, 0o666)
    for name in ("pts", "shm"):
        (dev / name).mkdir()
    os.symlink("/proc/self/fd", dev / "fd")
    for number, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{number}", dev / name)


class Sim:
    """One pretend host. ``run()`` plays the kmod_load role on it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sys = tmp / "sys_module"
        self.dev = tmp / "dev"
        self.kmsg = self.dev / "kmsg"
        self.devices = tmp / "devices"
        self.modprobe_d = tmp / "modprobe.d"
        self.modules_load_d = tmp / "modules-load.d"
        self.facts = tmp / "facts.d"
        self.bin = tmp / "bin"
        self.collections = tmp / "collections"
        for d in (self.sys, self.modprobe_d, self.modules_load_d, self.bin):
            d.mkdir(parents=True)
        _make_dev(self.dev)
        self.kmsg.write_text("6,1,1000,-;Linux version sim\n")
        self.devices.write_text("Character devices:\n  1 mem\n  4 tty\n\nBlock devices:\n  8 sd\n")
        self.spec = _spec_from_manifests()
        self.spec_path = tmp / "spec.json"
        self.save_spec()
        kernel = HERE / "simkernel.py"
        for name, command in (("rmmod", "unload"), ("modinfo", "modinfo")):
            script = self.bin / name
            script.write_text(f'#!/bin/sh\nexec {sys.executable} {kernel} {command} "$@"\n')
            script.chmod(script.stat().st_mode | stat.S_IXUSR)
        # modprobe as kmodlab.lab.kmod_modprobe runs it (found on PATH before the host's
        # own); each call is logged, one line of arguments, for the tests to count.
        self.modprobe_log = tmp / "modprobe.log"
        script = self.bin / "modprobe"
        script.write_text(
            f'#!/bin/sh\necho "$*" >> {self.modprobe_log}\n'
            f'exec {sys.executable} {kernel} modprobe "$@"\n'
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        cg = self.collections / "ansible_collections" / "community" / "general"
        (cg / "plugins" / "modules").mkdir(parents=True)
        shutil.copy(HERE / "modprobe.py", cg / "plugins" / "modules" / "modprobe.py")
        (cg / "meta").mkdir()
        (cg / "meta" / "runtime.yml").write_text("requires_ansible: '>=2.15'\n")
        (tmp / "play.yml").write_text(
            "- hosts: localhost\n  gather_facts: false\n  roles:\n"
            "    - role: kmodlab.lab.kmod_load\n"
        )

    def save_spec(self) -> None:
        self.spec_path.write_text(json.dumps(self.spec))

    def mount_script(self) -> str:
        """Shell lines that put the pretend host in place (in a private namespace)."""
        mounts = [
            (self.sys, "/sys/module"),
            (self.devices, "/proc/devices"),
            (self.modprobe_d, "/etc/modprobe.d"),
            (self.modules_load_d, "/etc/modules-load.d"),
            ("/dev/pts", self.dev / "pts"),
            ("/dev/shm", self.dev / "shm"),
        ]
        script = "set -e\n"
        for src, dst in mounts:
            script += f"mount --bind {src} {dst}\n"
        script += f"mount --rbind {self.dev} /dev\n"
        return script

    # ------------------------------------------------------------------ running

    def run(
        self,
        modules: list[dict[str, Any]],
        check: bool = False,
        tags: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Result:
        variables = {
            "kmodlab_modules": modules,
            **manifest_vars(MODULES),
            "__kmod_load_fact_dir": str(self.facts),
            "ansible_become_method": "su",
            "ansible_python_interpreter": sys.executable,
        }
        variables.update(extra or {})
        (self.tmp / "vars.json").write_text(json.dumps(variables))
        argv = [
            str(VENV_BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            str(self.tmp / "play.yml"),
            "-e",
            f"@{self.tmp / 'vars.json'}",
        ]
        if check:
            argv.append("--check")
        if tags:
            argv += ["--tags", tags]
        script = self.mount_script() + 'exec "$@"\n'
        env = dict(os.environ)
        env.update(
            {
                "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
                "ANSIBLE_COLLECTIONS_PATH": str(self.collections),
                "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
                "ANSIBLE_LOCAL_TEMP": str(self.tmp / "ansible-local"),
                "ANSIBLE_REMOTE_TEMP": str(self.tmp / "ansible-remote"),
                "PATH": f"{self.bin}:{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
                "KMODLAB_SIM_SPEC": str(self.spec_path),
                "KMODLAB_SIM_KERNEL": str(HERE / "simkernel.py"),
            }
        )
        proc = subprocess.run(
            ["unshare", "-m", "sh", "-c", script, "sh", *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.tmp,
            check=False,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    # ------------------------------------------------------------------ looking

    def loaded(self, kmod: str) -> bool:
        return (self.sys / kmod / "initstate").exists()

    def values(self, kmod: str) -> dict[str, Any]:
        """All parameter values of a loaded module, hidden ones included."""
        return json.loads((self.sys / kmod / ".sim.json").read_text())

    def modprobe_calls(self) -> list[str]:
        """The arguments of every ``modprobe`` run on PATH so far (kmodlab.lab.kmod_modprobe;
        community.general.modprobe is the stand-in module, which calls the kernel directly)."""
        if not self.modprobe_log.exists():
            return []
        return self.modprobe_log.read_text().splitlines()

    def kmsg_lines(self) -> list[str]:
        return [line.split(";", 1)[1] for line in self.kmsg.read_text().splitlines()]

    def fact(self) -> dict[str, Any] | None:
        path = self.facts / "kmodlab_kmod_load.fact"
        return json.loads(path.read_text()) if path.exists() else None

    def insmod_by_hand(self, kmod: str, *args: str) -> None:
        """Load a module outside the role (like a user running modprobe)."""
        self.kernel_by_hand("load", kmod, *args)

    def rmmod_by_hand(self, kmod: str) -> None:
        """Unload a module outside the role (like a user running rmmod)."""
        self.kernel_by_hand("unload", kmod)

    def kernel_by_hand(self, command: str, kmod: str, *args: str) -> None:
        env = dict(os.environ, KMODLAB_SIM_SPEC=str(self.spec_path))
        subprocess.run(
            [
                "unshare",
                "-m",
                "sh",
                "-c",
                self.mount_script() + 'exec "$@"\n',
                "sh",
                sys.executable,
                str(HERE / "simkernel.py"),
                command,
                kmod,
                *args,
            ],
            check=True,
            env=env,
        )


class Result:
    """An ansible-playbook run, its JSON output parsed."""

    def __init__(self, rc: int, stdout: str, stderr: str) -> None:
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        lines = stdout.splitlines()
        try:
            start = lines.index("{")
            end = len(lines) - 1 - lines[::-1].index("}")
            self.data = json.loads("\n".join(lines[start : end + 1]))
        except ValueError:
            self.data = {}

    @property
    def stats(self) -> dict[str, int]:
        return self.data.get("stats", {}).get("localhost", {})

    @property
    def changed(self) -> int:
        return self.stats.get("changed", 0)

    @property
    def failed(self) -> bool:
        return self.rc != 0

    def tasks(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for play in self.data.get("plays", []):
            for task in play.get("tasks", []):
                out.append((task["task"]["name"], task["hosts"].get("localhost", {})))
        return out

    def changed_tasks(self) -> list[str]:
        names = []
        for name, result in self.tasks():
            if result.get("changed"):
                names.append(name)
            for item in result.get("results", []) or []:
                if isinstance(item, dict) and item.get("changed"):
                    names.append(name)
        return names

    def failure_messages(self) -> list[str]:
        out = []
        for _name, result in self.tasks():
            if result.get("failed") and not result.get("ignore_errors"):
                msg = result.get("msg")
                out.extend(msg if isinstance(msg, list) else [str(msg)])
        return out

    def remote_tasks(self) -> list[str]:
        """Tasks that ran a module on the host (not set_fact/debug/assert/include, nor
        kmodlab.lab.selection, which resolves on the controller)."""
        local = {
            "selection",
            "set_fact",
            "debug",
            "assert",
            "include_tasks",
            "fail",
            "meta",
            "validate_argument_spec",
        }
        out = []
        for name, result in self.tasks():
            action = result.get("action") or ""
            short = action.rsplit(".", 1)[-1]
            if result.get("skipped") or short in local:
                continue
            if result.get("results") is not None and all(
                r.get("skipped") for r in result["results"] if isinstance(r, dict)
            ):
                continue
            out.append(name)
        return out

    def explain(self) -> str:
        return (
            f"rc={self.rc}\nfailures={self.failure_messages()}\n"
            f"changed={self.changed_tasks()}\nstderr={self.stderr[-3000:]}\n"
            f"stdout tail={self.stdout[-3000:]}"
        )
