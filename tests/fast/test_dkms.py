"""Fast tier: the kmodlab.lab.dkms Ansible module (executor and planner), with dkms mocked.

``AnsibleModule.run_command`` is replaced by ``FakeDkms``, a small model of dkms 3.0.10's
add/build/install/uninstall/remove (behaviour checked against the real one on Debian 12)
that keeps dkms's tree in a scratch folder, laid out as dkms lays it out (the module reads
its state from there; the VM tier checks that reading against the real ``dkms status``);
``get_bin_path`` and the /lib/modules, /boot and /etc paths point there too. Each test
asserts on the module's result and on the commands it ran. The planner alone, on plain
data, is tested in test_dkms_plan.py.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from unittest import mock

import pytest
import yaml
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args
from dkms_tree import DkmsTree

REPO = Path(__file__).resolve().parents[2]
kmodlab_dkms = importlib.import_module("ansible_collections.kmodlab.lab.plugins.modules.dkms")
modsig = importlib.import_module("ansible_collections.kmodlab.lab.plugins.module_utils.modsig")
dkms_exec = importlib.import_module(
    "ansible_collections.kmodlab.lab.plugins.module_utils.dkms_exec"
)
dkms_tree_reader = importlib.import_module(
    "ansible_collections.kmodlab.lab.plugins.module_utils.dkms_tree"
)

K = "6.1.0-56-amd64"
K2 = "6.1.0-99-amd64"
ARCH = os.uname()[4]
DKMS = "/usr/sbin/dkms"
DEPMOD = "/usr/sbin/depmod"
OPENSSL = "/usr/bin/openssl"
GOOD_C = '#include <linux/module.h>\nMODULE_LICENSE("GPL");\n'
BAD_C = "int x = no_such_symbol;\n"


class ExitJson(Exception):
    pass


class FailJson(Exception):
    pass


def _exit_json(self, **kwargs):
    kwargs.setdefault("changed", False)
    raise ExitJson(kwargs)


def _fail_json(self, msg, **kwargs):
    kwargs["msg"] = msg
    kwargs["failed"] = True
    raise FailJson(kwargs)


class FakeDkms:
    """dkms's state machine over a scratch source tree and DKMS tree."""

    def __init__(self, root: Path):
        self.root = root
        self.src = root / "usr/src"
        self.tree = root / "var/lib/dkms"
        self.lib = root / "lib/modules"
        self.layout = DkmsTree(root, ARCH)
        self.src.mkdir(parents=True)
        self.tree.mkdir(parents=True)
        (self.lib / K / "build").mkdir(parents=True)
        # (name, version) -> {kernel: "built" | "installed"}; "diff" marks a replaced .ko
        self.reg: dict[tuple[str, str], dict[str, str]] = {}
        self.diff: set[tuple[str, str]] = set()
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()
        self.running = 0
        self.max_running = 0
        self.build_delay = 0.0
        # Builds wait (at most build_delay) until this many run at once: concurrency is
        # shown however slowly threads start on a busy machine.
        self.together = 0
        self.gate = threading.Condition(self.lock)
        self.events: list[tuple[str, str]] = []  # ("start" | "end", name) of builds
        self.install_refuses: set[str] = set()  # names whose install exits 0 but copies nothing
        self.dpkg_query = ""  # what dpkg-query -W says about the kmodlab packages

    # -- helpers for tests -----------------------------------------------------------
    def register(self, name, version, files=None, state="installed", kernel=K):
        folder = self.src / f"{name}-{version}"
        folder.mkdir(parents=True, exist_ok=True)
        for rel, content in (files or pkg_files(name, version)).items():
            (folder / rel).write_text(content)
        self.reg.setdefault((name, version), {})
        if state in ("built", "installed"):
            if state == "installed":
                self._uninstall_others(name, kernel)
            self.reg[(name, version)][kernel] = state
            log = self.tree / name / version / kernel / ARCH / "log"
            log.mkdir(parents=True, exist_ok=True)

    def commands(self, verb=None):
        """The dkms commands run, as 'verb name/version' strings, in order."""
        out = []
        for argv in self.calls:
            if argv[0] != DKMS or argv[1] == "status":
                continue
            if verb is None or argv[1] == verb:
                a = argv[1:]
                out.append(f"{a[0]} {a[a.index('-m') + 1]}/{a[a.index('-v') + 1]}")
        return out

    def depmods(self):
        return [a for a in self.calls if a[0] == DEPMOD]

    # -- dkms ------------------------------------------------------------------------
    def _uninstall_others(self, name, kernel):
        for (n, _v), kernels in self.reg.items():
            if n == name and kernels.get(kernel) == "installed":
                kernels[kernel] = "built"

    def sync(self, only=None):
        """Lay the model out as dkms 3.0.10 keeps it: ``VERSION/source``, built modules in
        ``VERSION/KERNEL/ARCH/module``, the ``kernel-KERNEL-ARCH`` link of the installed
        version and its copy in /lib/modules (other content there when in ``diff``).
        ``only``: the one package a dkms call touched (dkms leaves the others alone)."""
        names = {n for n, _v in self.reg} | {
            d.name for d in self.tree.iterdir() if d.is_dir() and not d.is_symlink()
        }
        if only is not None:
            names &= {only}
        for name in sorted(names):
            base = self.tree / name
            base.mkdir(parents=True, exist_ok=True)
            for link in base.glob("kernel-*"):
                link.unlink()
            kernels = {k for (n, _v), ks in self.reg.items() if n == name for k in ks}
            kernels |= {p.parent.parent.name for p in base.glob(f"*/*/{ARCH}/module")}
            for kernel in kernels:
                copy = self.lib / kernel / "updates/dkms" / f"{name}.ko"
                if copy.exists():
                    copy.unlink()
            for (n, version), ks in sorted(self.reg.items()):
                if n != name:
                    continue
                self.layout.register(name, version)
                for built in base.glob(f"{version}/*/{ARCH}/module"):
                    if built.parent.parent.name not in ks:
                        shutil.rmtree(built)
                for kernel, state in ks.items():
                    self.layout.build(name, version, kernel)
                    if state == "installed":
                        replaced = (name, version) in self.diff
                        self.layout.install(
                            name, version, kernel, content=b"replaced" if replaced else None
                        )

    def __call__(self, module, argv, **kwargs):
        if argv[0] == "dpkg-query":
            with self.lock:
                self.calls.append(list(argv))
            if self.dpkg_query:
                return 0, self.dpkg_query, ""
            return 1, "", f"dpkg-query: no packages found matching {argv[-1]}\n"
        if argv[0] not in (DKMS, DEPMOD):
            # a real program the module runs itself (sign-file): not dkms's business
            self.calls.append(list(argv))
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
            return proc.returncode, proc.stdout, proc.stderr
        result = self.dispatch(module, argv, **kwargs)
        with self.lock:
            if argv[0] == DKMS and argv[1] == "build":
                # dkms build writes VERSION/KERNEL/ARCH only: an install or a check of the
                # same package for another kernel may run meanwhile.
                name, version = argv[argv.index("-m") + 1], argv[argv.index("-v") + 1]
                kernel = argv[argv.index("-k") + 1]
                if self.reg.get((name, version), {}).get(kernel) == "built":
                    self.layout.build(name, version, kernel)
            else:
                self.sync(only=argv[argv.index("-m") + 1] if "-m" in argv else None)
        return result

    def dispatch(self, _module, argv, **kwargs):
        argv = list(argv)
        with self.lock:
            self.calls.append(argv)
        if argv[0] == DEPMOD:
            return 0, "", ""
        assert argv[0] == DKMS, argv
        assert kwargs.get("environ_update", {}).get("LC_ALL") == "C"
        verb, rest = argv[1], argv[2:]

        def opt(flag):
            return rest[rest.index(flag) + 1] if flag in rest else None

        name, version, kernel = opt("-m"), opt("-v"), opt("-k")
        key = (name, version)
        if verb == "add":
            if key in self.reg:
                return 3, "", "Error! DKMS tree already contains: ..."
            conf = self.src / f"{name}-{version}" / "dkms.conf"
            if not conf.is_file() or "PACKAGE_NAME" not in conf.read_text():
                return 8, "", "Error! Bad conf file."
            self.reg[key] = {}
            (self.tree / name / version / "build").mkdir(parents=True, exist_ok=True)
            return 0, f"Creating symlink {self.tree}/{name}/{version}/source\n", ""
        if verb == "build":
            assert key in self.reg and kernel not in self.reg[key], (key, self.reg)
            with self.gate:
                self.events.append(("start", name))
                self.running += 1
                self.max_running = max(self.max_running, self.running)
                self.gate.notify_all()
                deadline = time.monotonic() + self.build_delay
                while self.max_running < self.together or not self.together:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.gate.wait(left)
                self.running -= 1
                self.events.append(("end", name))
            sources = "".join(p.read_text() for p in (self.src / f"{name}-{version}").glob("*.c"))
            build = self.tree / name / version / "build"
            build.mkdir(parents=True, exist_ok=True)
            conf = (self.src / f"{name}-{version}" / "dkms.conf").read_text()
            # modpost reads each dependency's Module.symvers from its installed build
            depends = "".join(re.findall(r"BUILD_DEPENDS=\((.*)\)", conf))
            for dep in re.findall(r'"([^"]+)"', depends):
                if not any(
                    n == dep and ks.get(kernel) == "installed" for (n, _v), ks in self.reg.items()
                ):
                    symvers = f"{self.tree}/{dep}/kernel-{kernel}-{ARCH}/module/Module.symvers"
                    (build / "make.log").write_text(f"{symvers}: No such file or directory\n")
                    return 10, "(bad exit status: 2)\n", "Error! Bad return status\n"
            if "no_such_symbol" in sources:
                log = [f"DKMS make.log for {name}-{version} for kernel {kernel} ({ARCH})"]
                log += [f"noise {i}" for i in range(60)]
                log += [f"{build}/{name}.c:1:9: error: 'no_such_symbol' undeclared here"]
                (build / "make.log").write_text("\n".join(log) + "\n")
                return (
                    10,
                    "Building module:\nCleaning build area...\n(bad exit status: 2)\n",
                    f"Error! Bad return status for module build on kernel: {kernel} ({ARCH})\n"
                    f"Consult {build}/make.log for more information.\n",
                )
            (self.tree / name / version / kernel / ARCH / "log").mkdir(parents=True, exist_ok=True)
            self.reg[key][kernel] = "built"
            return 0, "Building module:\nCleaning build area...\n", ""
        if verb == "install":
            assert "--no-depmod" in rest
            if self.reg.get(key, {}).get(kernel) == "installed":
                return 5, "", "Error! This module/version combo is already installed"
            if self.reg.get(key, {}).get(kernel) != "built":
                return 6, "", "Error! not built"
            others = [
                v
                for (n, v), ks in self.reg.items()
                if n == name and v != version and ks.get(kernel) == "installed"
            ]
            self._uninstall_others(name, kernel)
            self.reg[key][kernel] = "installed"
            if name in self.install_refuses or (others and "--force-version-override" not in rest):
                # dkms's version sanity check: moves the symlink, copies nothing, exits 0
                self.diff.add(key)
                return (
                    0,
                    "",
                    f"Module version {version} ... is not newer than what is already found",
                )
            self.diff.discard(key)
            return 0, "Installing to /lib/modules\n", ""
        if verb == "uninstall":
            assert "--no-depmod" in rest
            if self.reg.get(key, {}).get(kernel) == "installed":
                self.reg[key][kernel] = "built"
                self.diff.discard(key)
            return 0, "", ""
        if verb == "remove":
            assert "--all" in rest and "--no-depmod" in rest
            self.reg.pop(key, None)
            self.diff.discard(key)
            folder = self.tree / name / version
            if folder.exists():
                shutil.rmtree(folder)
            return 0, f"Deleting module {name}-{version} completely from the DKMS tree.\n", ""
        raise AssertionError(f"unexpected dkms call {argv}")


BINS_OPENSSL = ("dkms", "depmod", "openssl")


def pkg_files(name, version, c=GOOD_C):
    return {
        f"{name}.c": c,
        "Kbuild": f"obj-m := {name}.o\n",
        "dkms.conf": f'PACKAGE_NAME="{name}"\nPACKAGE_VERSION="{version}"\n',
    }


def pkg(name, version, c=GOOD_C, **extra):
    return {"name": name, "version": version, "files": pkg_files(name, version, c), **extra}


def dependent(name, version, depends, c=GOOD_C):
    """A package whose dkms.conf names ``depends`` in BUILD_DEPENDS, as the role renders it."""
    p = pkg(name, version, c, depends=depends)
    listed = " ".join(f'"{d}"' for d in depends)
    p["files"]["dkms.conf"] += f"BUILD_DEPENDS=({listed})\n"
    return p


@pytest.fixture
def dkms(tmp_path, monkeypatch):
    fake = FakeDkms(tmp_path)
    monkeypatch.setattr(kmodlab_dkms, "LIB_MODULES", str(fake.lib))
    monkeypatch.setattr(kmodlab_dkms, "BOOT", str(tmp_path / "boot"))
    monkeypatch.setattr(
        kmodlab_dkms,
        "FRAMEWORK_CONFS",
        (str(tmp_path / "etc/dkms/framework.conf"), str(tmp_path / "etc/dkms/framework.conf.d")),
    )
    monkeypatch.setattr(kmodlab_dkms, "OS_RELEASE", str(tmp_path / "etc/os-release"))
    # The signing key exists unless a test removes it (then the first build runs alone).
    (fake.tree / "mok.key").write_text("key")
    (fake.tree / "mok.pub").write_text("cert")
    return fake


def run(fake, packages, check=False, diff=False, bins=("dkms", "depmod"), **args):
    params = {
        "packages": packages,
        "kernels": [K],
        "source_root": str(fake.src),
        "dkms_tree": str(fake.tree),
        "_ansible_check_mode": check,
        "_ansible_diff": diff,
        **args,
    }
    paths = {
        "dkms": DKMS,
        "depmod": DEPMOD,
        "openssl": OPENSSL,
        "dpkg-query": "/usr/bin/dpkg-query",
    }

    def get_bin_path(_self, name, required=False, opt_dirs=None):
        if name in bins:
            return paths[name]
        if required:
            raise FailJson({"msg": f"Failed to find required executable {name}", "failed": True})
        return None

    fake.sync()
    with (
        patch_module_args(params),
        mock.patch.multiple(
            basic.AnsibleModule,
            exit_json=_exit_json,
            fail_json=_fail_json,
            get_bin_path=get_bin_path,
        ),
        mock.patch.object(basic.AnsibleModule, "run_command", autospec=True, side_effect=fake),
    ):
        try:
            kmodlab_dkms.main()
        except ExitJson as exc:
            return exc.args[0]
        except FailJson as exc:
            return exc.args[0]
    raise AssertionError("the module neither exited nor failed")


def by_name(result):
    return {p["name"]: p for p in result["packages"]}


# -- first install, idempotence, check mode ------------------------------------------


def test_new_package_is_written_added_built_installed(dkms):
    dkms.build_delay = 0.3  # the build takes that long: its timing must show it
    res = run(dkms, [pkg("hello", "1.0")], fact_path=str(dkms.root / "facts.d/dkms.fact"))
    assert res["failed_packages"] == [] and "failed" not in res
    assert res["changed"] is True
    p = by_name(res)["hello"]
    assert p["actions"] == ["sources", "add", "build", "install"]
    assert p["files_changed"] == ["Kbuild", "dkms.conf", "hello.c"]
    assert (p["before"], p["after"], p["status"]) == ({}, {"1.0": "installed"}, "installed")
    assert dkms.commands() == ["add hello/1.0", "build hello/1.0", "install hello/1.0"]
    # when each step started and how long it took, in order
    timing = p["timing"]
    assert set(timing) == {"add", "build", "install"}
    assert timing["add"][0] <= timing["build"][0] <= timing["install"][0]
    assert timing["build"][1] >= 0.3
    assert (dkms.src / "hello-1.0/hello.c").read_text() == GOOD_C
    assert oct((dkms.src / "hello-1.0/hello.c").stat().st_mode & 0o777) == "0o644"
    # one depmod, for the kernel, after the installs
    assert dkms.depmods() == [[DEPMOD, "-a", K]]
    assert res["depmod"] == [K]
    digest = dkms.tree / "hello/1.0" / K / ARCH / "log/kmodlab-source.sha256"
    # the source digest, then the certificate dkms signed with (its fingerprint)
    lines = digest.read_text().splitlines()
    assert len(lines[0]) == 64
    assert lines[1] == "signing-key " + dkms_exec.certificate_fingerprint(b"cert")
    fact = json.loads((dkms.root / "facts.d/dkms.fact").read_text())
    assert fact == {
        "hello": {
            "version": "1.0",
            "wanted_version": "1.0",
            "kernel": K,
            "status": "installed",
            "result": "ok",
        }
    }
    assert res["fact_changed"] is True


def test_a_module_installed_as_a_prebuilt_package_is_refused_before_anything_changes(dkms):
    """One copy per module: hello-1 has a kmodlab package (the deb delivery), so DKMS does
    not build a second copy; a purged package, or another module's, does not count."""
    bins = ("dkms", "depmod", "dpkg-query")
    dkms.dpkg_query = (
        f"kmodlab-hello-1-modules-{K}\t1.0\tii \n"
        f"kmodlab-hello-2-modules-{K}\t1.0\tpn \n"
        f"kmodlab-memory-modules-{K}\t1.0\tii \n"
    )
    for check in (True, False):
        res = run(dkms, [pkg("hello-1", "1.0"), pkg("hello-2", "1.0")], check=check, bins=bins)
        assert res["failed"] is True, res
        assert res["msg"].startswith(
            f"hello-1: installed on this host as prebuilt package (kmodlab-hello-1-modules-{K})"
        ), res["msg"]
        assert "kmodlab_delivery: deb" in res["msg"] and "Nothing was changed" in res["msg"]
        assert dkms.commands() == [] and not list(dkms.src.iterdir())
    res = run(dkms, [pkg("hello-2", "1.0")], bins=bins)
    assert res["changed"] is True and dkms.commands("install") == ["install hello-2/1.0"]
    # Absent is no copy: removing hello-1 from DKMS is allowed while its package is there.
    res = run(dkms, [{**pkg("hello-1", "1.0"), "state": "absent"}], bins=bins)
    assert not res.get("failed"), res


def test_second_run_changes_nothing_and_runs_no_command(dkms):
    fact = str(dkms.root / "facts.d/dkms.fact")
    run(dkms, [pkg("hello", "1.0"), pkg("chardev", "2.0")], fact_path=fact)
    dkms.calls.clear()
    res = run(dkms, [pkg("hello", "1.0"), pkg("chardev", "2.0")], fact_path=fact)
    assert res["changed"] is False and res["fact_changed"] is False
    assert all(p["actions"] == [] and p["changed"] is False for p in res["packages"])
    # the state comes from the DKMS tree: not even dkms status runs
    assert dkms.calls == []
    assert {p["name"]: p["before"] for p in res["packages"]} == {
        "hello": {"1.0": "installed"},
        "chardev": {"2.0": "installed"},
    }


def test_check_mode_reports_the_plan_and_runs_nothing(dkms):
    fact = dkms.root / "facts.d/dkms.fact"
    res = run(dkms, [pkg("hello", "1.0")], check=True, diff=True, fact_path=str(fact))
    assert res["changed"] is True and res["fact_changed"] is True
    p = by_name(res)["hello"]
    assert p["actions"] == ["sources", "add", "build", "install"]
    assert p["after"] == {"1.0": "installed"} and p["status"] == "installed"
    assert res["depmod"] == [K]
    # nothing written, nothing run
    assert dkms.calls == []
    assert not (dkms.src / "hello-1.0").exists() and not fact.exists()
    # diff: dkms status lines before/after and the new files
    status_diff = res["diff"][0]
    assert status_diff["before"] == ""
    assert status_diff["after"] == f"hello/1.0, {K}, {ARCH}: installed\n"
    assert {d["after_header"] for d in res["diff"][1:]} == {
        str(dkms.src / "hello-1.0" / n) for n in ("Kbuild", "dkms.conf", "hello.c")
    }


def test_check_mode_on_a_converged_host_reports_no_change(dkms):
    run(dkms, [pkg("hello", "1.0")])
    dkms.calls.clear()
    res = run(dkms, [pkg("hello", "1.0")], check=True)
    assert res["changed"] is False and by_name(res)["hello"]["actions"] == []
    assert dkms.commands() == []


# -- partial states ------------------------------------------------------------------


def test_added_only_is_built_and_installed(dkms):
    dkms.register("hello", "1.0", state="added")
    res = run(dkms, [pkg("hello", "1.0")])
    assert by_name(res)["hello"]["actions"] == ["build", "install"]
    assert dkms.commands() == ["build hello/1.0", "install hello/1.0"]


def test_built_only_is_installed(dkms):
    dkms.register("hello", "1.0", state="built")
    (dkms.tree / "hello/1.0" / K / ARCH / "log/kmodlab-source.sha256").write_text(
        dkms_tree_reader.source_digest(str(dkms.src / "hello-1.0"))
        + "\nsigning-key "
        + dkms_exec.certificate_fingerprint(b"cert")
        + "\n"
    )
    res = run(dkms, [pkg("hello", "1.0")])
    assert by_name(res)["hello"]["actions"] == ["install"]


def test_installed_for_another_kernel_only_is_built_for_this_one(dkms):
    dkms.register("hello", "1.0", kernel="6.1.0-99-amd64")
    res = run(dkms, [pkg("hello", "1.0")])
    assert by_name(res)["hello"]["actions"] == ["build", "install"]
    assert dkms.reg[("hello", "1.0")] == {"6.1.0-99-amd64": "installed", K: "installed"}


def test_changed_sources_rebuild_the_same_version(dkms):
    run(dkms, [pkg("hello", "1.0")])
    dkms.calls.clear()
    res = run(dkms, [pkg("hello", "1.0", c=GOOD_C + "/* edited */\n")])
    p = by_name(res)["hello"]
    assert p["files_changed"] == ["hello.c"]
    assert p["actions"] == ["sources", "remove 1.0", "add", "build", "install"]
    assert p["changed"] is True and p["status"] == "installed"


def test_sources_edited_behind_our_back_are_noticed_by_their_digest(dkms):
    run(dkms, [pkg("hello", "1.0")])
    (dkms.src / "hello-1.0/hello.c").write_text(GOOD_C + "// by hand\n")
    dkms.calls.clear()
    res = run(dkms, [{"name": "hello", "version": "1.0"}])  # no files: use what is there
    assert by_name(res)["hello"]["actions"] == ["remove 1.0", "add", "build", "install"]


def test_a_build_made_elsewhere_is_adopted_not_rebuilt(dkms):
    dkms.register("hello", "1.0")  # e.g. dkms autoinstall: no digest recorded
    res = run(dkms, [pkg("hello", "1.0")])
    assert res["changed"] is False and dkms.commands() == []
    assert (dkms.tree / "hello/1.0" / K / ARCH / "log/kmodlab-source.sha256").is_file()


def test_missing_sources_never_tear_down_a_working_module(dkms):
    run(dkms, [pkg("hello", "1.0")])
    import shutil

    shutil.rmtree(dkms.src / "hello-1.0")
    dkms.calls.clear()
    res = run(dkms, [{"name": "hello", "version": "1.0"}])
    assert res["changed"] is False and dkms.commands() == []
    assert by_name(res)["hello"]["status"] == "installed"


def test_installed_module_that_differs_from_its_build_is_reinstalled(dkms):
    run(dkms, [pkg("hello", "1.0")])
    dkms.diff.add(("hello", "1.0"))
    dkms.calls.clear()
    res = run(dkms, [pkg("hello", "1.0")])
    assert by_name(res)["hello"]["actions"] == ["uninstall", "install"]
    assert res["changed"] is True and dkms.depmods() == [[DEPMOD, "-a", K]]


# -- failures --------------------------------------------------------------------------


def test_failed_build_returns_the_log_tail_and_is_cleaned_up(dkms):
    res = run(dkms, [pkg("broken", "0.1", c=BAD_C)], log_lines=5)
    assert res["failed"] is True
    assert res["failed_packages"] == ["broken"]
    assert "broken 0.1: build failed" in res["msg"]
    p = by_name(res)["broken"]
    assert p["failed"] is True and p["step"] == "build" and p["rc"] == 10
    assert len(p["log_tail"]) == 5
    assert p["log_tail"][-1].endswith("error: 'no_such_symbol' undeclared here")
    assert p["log_path"] == str(dkms.tree / "broken/0.1/build/make.log")
    assert "fix the module's sources" in p["msg"]
    assert "Bad return status" in p["stderr"]
    # the version this run added is gone again, its sources stay for debugging
    assert ("broken", "0.1") not in dkms.reg
    assert (dkms.src / "broken-0.1/broken.c").is_file()
    assert p["actions"] == ["sources", "add", "remove 0.1 (cleanup)"]
    assert dkms.depmods() == []


def test_failed_build_without_cleanup_stays_added(dkms):
    res = run(dkms, [pkg("broken", "0.1", c=BAD_C)], cleanup_failed=False)
    assert res["failed_packages"] == ["broken"]
    assert dkms.reg[("broken", "0.1")] == {}


def test_one_of_two_fails_the_other_is_built_and_installed(dkms):
    fact = dkms.root / "facts.d/dkms.fact"
    res = run(
        dkms,
        [pkg("broken", "0.1", c=BAD_C), pkg("hello", "1.0")],
        fact_path=str(fact),
    )
    assert res["failed"] is True and res["failed_packages"] == ["broken"]
    assert "1 of 2 package(s)" in res["msg"]
    hello = by_name(res)["hello"]
    assert hello["failed"] is False and hello["status"] == "installed"
    assert dkms.reg[("hello", "1.0")] == {K: "installed"}
    assert dkms.depmods() == [[DEPMOD, "-a", K]]
    facts = json.loads(fact.read_text())
    assert facts["hello"]["result"] == "ok"
    assert facts["broken"] == {
        "version": "0.1",
        "wanted_version": "0.1",
        "kernel": K,
        "status": "absent",
        "result": "failed",
    }


def test_an_install_that_exits_0_but_installs_nothing_is_a_failure(dkms):
    dkms.install_refuses.add("hello")
    res = run(dkms, [pkg("hello", "1.0")])
    p = by_name(res)["hello"]
    assert p["failed"] is True and p["step"] == "install"
    assert "exited 0 but the DKMS tree says" in p["msg"]


def test_missing_headers_fail_before_anything_runs(dkms):
    import shutil

    shutil.rmtree(dkms.lib / K)
    res = run(dkms, [pkg("hello", "1.0")])
    assert res["failed"] is True and "no kernel headers for " + K in res["msg"]
    assert "kernel_headers" in res["msg"]
    assert dkms.commands() == [] and not (dkms.src / "hello-1.0").exists()


def test_missing_headers_in_check_mode_warn(dkms):
    import shutil

    shutil.rmtree(dkms.lib / K)
    res = run(dkms, [pkg("hello", "1.0")], check=True)
    assert res["changed"] is True and "failed" not in res


def test_no_dkms_fails_with_what_to_do(dkms):
    res = run(dkms, [pkg("hello", "1.0")], bins=("depmod",))
    assert res["failed"] is True
    assert "dkms is not installed" in res["msg"] and "kernel_headers" in res["msg"]


def test_no_dkms_in_check_mode_plans_everything(dkms):
    res = run(dkms, [pkg("hello", "1.0")], check=True, bins=("depmod",))
    assert "failed" not in res
    assert by_name(res)["hello"]["actions"] == ["sources", "add", "build", "install"]
    assert dkms.calls == []


def test_bad_dkms_conf_fails_at_add(dkms):
    files = pkg_files("hello", "1.0")
    files["dkms.conf"] = "garbage\n"
    res = run(dkms, [{"name": "hello", "version": "1.0", "files": files}])
    p = by_name(res)["hello"]
    assert p["step"] == "add" and p["rc"] == 8 and "dkms.conf" in p["msg"]


# -- versions ----------------------------------------------------------------------------


def test_new_version_is_installed_beside_the_old_one_and_prune_removes_that(dkms):
    run(dkms, [pkg("hello", "1.0")])
    dkms.calls.clear()
    res = run(dkms, [pkg("hello", "2.0")])
    p = by_name(res)["hello"]
    assert p["actions"] == ["sources", "add", "build", "install"]
    # the old one stays registered and built, with its sources: a rollback target
    assert p["before"] == {"1.0": "installed"}
    assert p["after"] == {"1.0": "built", "2.0": "installed"}
    assert p["removed_versions"] == [] and res["prunable"] == ["hello"]
    assert dkms.commands() == ["add hello/2.0", "build hello/2.0", "install hello/2.0"]
    install = next(a for a in dkms.calls if a[1] == "install")
    assert "--force-version-override" in install
    assert (dkms.src / "hello-1.0").is_dir()
    assert dkms.reg == {("hello", "1.0"): {K: "built"}, ("hello", "2.0"): {K: "installed"}}
    # the old one goes only in the prune stage, after the new one is installed
    dkms.calls.clear()
    res = run(dkms, [pkg("hello", "2.0")], stage="prune")
    p = by_name(res)["hello"]
    assert p["actions"] == ["remove 1.0", f"delete {dkms.src}/hello-1.0"]
    assert p["before"] == {"1.0": "built", "2.0": "installed"}
    assert p["after"] == {"2.0": "installed"} and p["removed_versions"] == ["1.0"]
    assert res["changed"] is True and res["held"] == [] and res["prunable"] == []
    assert dkms.commands() == ["remove hello/1.0"]
    assert dkms.depmods() == []  # 1.0 was installed nowhere any more
    assert not (dkms.src / "hello-1.0").exists()
    assert dkms.reg == {("hello", "2.0"): {K: "installed"}}
    again = run(dkms, [pkg("hello", "2.0")], stage="prune")
    assert again["changed"] is False and by_name(again)["hello"]["actions"] == []


def test_the_install_stage_never_removes_another_version(dkms):
    run(dkms, [pkg("hello", "1.0")])
    run(dkms, [pkg("hello", "2.0")])
    dkms.calls.clear()
    res = run(dkms, [pkg("hello", "2.0")])
    assert res["changed"] is False and dkms.calls == []
    assert res["prunable"] == ["hello"]


def test_downgrade_works_the_same_way(dkms):
    run(dkms, [pkg("hello", "2.0")])
    res = run(dkms, [pkg("hello", "1.0")])
    assert by_name(res)["hello"]["after"] == {"1.0": "installed", "2.0": "built"}
    assert ("hello", "1.0") not in dkms.diff
    res = run(dkms, [pkg("hello", "1.0")], stage="prune")
    assert by_name(res)["hello"]["after"] == {"1.0": "installed"}


def test_failed_new_version_keeps_the_old_one_installed(dkms):
    fact = dkms.root / "facts.d/dkms.fact"
    run(dkms, [pkg("hello", "1.0")], fact_path=str(fact))
    res = run(dkms, [pkg("hello", "2.0", c=BAD_C)], fact_path=str(fact))
    p = by_name(res)["hello"]
    assert p["failed"] is True and p["step"] == "build"
    assert p["after"] == {"1.0": "installed"} and p["status"] == "absent"
    assert res["prunable"] == []
    assert dkms.reg == {("hello", "1.0"): {K: "installed"}}
    assert (dkms.src / "hello-1.0").is_dir()
    assert json.loads(fact.read_text())["hello"] == {
        "version": "1.0",
        "wanted_version": "2.0",
        "kernel": K,
        "status": "installed",
        "result": "failed",
    }


def test_prune_leaves_a_package_whose_wanted_version_is_not_installed(dkms):
    run(dkms, [pkg("hello", "1.0")])
    run(dkms, [pkg("hello", "2.0", c=BAD_C)])  # leaves /usr/src/hello-2.0, 1.0 installed
    dkms.calls.clear()
    res = run(dkms, [pkg("hello", "2.0", c=BAD_C)], stage="prune")
    assert "failed" not in res and res["changed"] is False
    assert res["held"] == ["hello"]
    p = by_name(res)["hello"]
    assert p["actions"] == [] and p["removed_versions"] == []
    assert p["notes"] == [
        f"hello 2.0 is not installed (or differs from its build) for {K}: 1.0 of hello stay "
        "until it is"
    ]
    assert dkms.calls == [] and (dkms.src / "hello-1.0").is_dir()
    assert dkms.reg == {("hello", "1.0"): {K: "installed"}}


def test_prune_writes_no_sources_and_builds_nothing(dkms):
    run(dkms, [pkg("hello", "1.0")])
    dkms.calls.clear()
    res = run(dkms, [pkg("hello", "2.0")], stage="prune")
    assert res["held"] == ["hello"] and dkms.calls == []
    assert not (dkms.src / "hello-2.0").exists()


def test_check_mode_predicts_the_install_and_the_prune(dkms):
    run(dkms, [pkg("hello", "1.0")])
    dkms.calls.clear()
    res = run(dkms, [pkg("hello", "2.0")], check=True, diff=True)
    p = by_name(res)["hello"]
    assert p["removed_versions"] == [] and p["after"] == {"1.0": "built", "2.0": "installed"}
    assert res["prunable"] == ["hello"]
    assert dkms.commands() == []
    assert res["diff"][0]["before"] == f"hello/1.0, {K}, {ARCH}: installed\n"
    assert res["diff"][0]["after"] == (
        f"hello/1.0, {K}, {ARCH}: built\nhello/2.0, {K}, {ARCH}: installed\n"
    )
    run(dkms, [pkg("hello", "2.0")])
    dkms.calls.clear()
    res = run(dkms, [pkg("hello", "2.0")], stage="prune", check=True, diff=True)
    p = by_name(res)["hello"]
    assert p["removed_versions"] == ["1.0"] and p["after"] == {"2.0": "installed"}
    assert p["actions"] == ["remove 1.0", f"delete {dkms.src}/hello-1.0"]
    assert res["changed"] is True and dkms.calls == []
    assert (dkms.src / "hello-1.0").is_dir()
    assert res["diff"][0]["after"] == f"hello/2.0, {K}, {ARCH}: installed\n"


def test_leftovers_of_other_versions_go_in_the_prune_once_the_wanted_one_is_installed(dkms):
    run(dkms, [pkg("hello", "1.0")])
    run(dkms, [pkg("hello", "2.0", c=BAD_C)])  # leaves /usr/src/hello-2.0
    # a folder of another package whose name starts alike must survive
    (dkms.src / "hello-extra-1.0").mkdir()
    (dkms.src / "hello-extra-1.0/dkms.conf").write_text('PACKAGE_NAME="hello-extra"\n')
    res = run(dkms, [pkg("hello", "1.0")])
    assert by_name(res)["hello"]["actions"] == [] and res["prunable"] == ["hello"]
    assert (dkms.src / "hello-2.0").is_dir()
    res = run(dkms, [pkg("hello", "1.0")], stage="prune")
    assert by_name(res)["hello"]["actions"] == [f"delete {dkms.src}/hello-2.0"]
    assert not (dkms.src / "hello-2.0").exists()
    assert (dkms.src / "hello-extra-1.0").is_dir()


def test_prune_ignores_absent_packages(dkms):
    run(dkms, [pkg("hello", "1.0")])
    dkms.calls.clear()
    res = run(dkms, [{"name": "hello", "version": "1.0", "state": "absent"}], stage="prune")
    assert res["changed"] is False and dkms.calls == []


# -- absent --------------------------------------------------------------------------------


def test_absent_removes_every_version_and_its_sources(dkms):
    fact = dkms.root / "facts.d/dkms.fact"
    run(dkms, [pkg("hello", "1.0")], fact_path=str(fact))
    dkms.register("hello", "0.9", state="built", kernel="6.1.0-99-amd64")
    dkms.calls.clear()
    res = run(dkms, [{"name": "hello", "version": "1.0", "state": "absent"}], fact_path=str(fact))
    p = by_name(res)["hello"]
    assert res["changed"] is True and p["removed_versions"] == ["0.9", "1.0"]
    assert p["after"] == {} and p["status"] == "absent"
    assert dkms.commands() == ["remove hello/0.9", "remove hello/1.0"]
    assert not list(dkms.src.iterdir())
    assert dkms.depmods() == [[DEPMOD, "-a", K]]  # 1.0 was installed here
    assert json.loads(fact.read_text()) == {}
    again = run(dkms, [{"name": "hello", "version": "1.0", "state": "absent"}], fact_path=str(fact))
    assert again["changed"] is False


# -- several kernels ---------------------------------------------------------------------


def with_headers(fake, kernel=K2):
    (fake.lib / kernel / "build").mkdir(parents=True, exist_ok=True)
    return kernel


def fail_builds_for(fake, kernel):
    """Builds for ``kernel`` fail as a compile error does; the others work."""
    dispatch = fake.dispatch

    def failing(module, argv, **kwargs):
        if argv[1] == "build" and argv[argv.index("-k") + 1] == kernel:
            fake.calls.append(list(argv))
            return 10, "(bad exit status: 2)\n", "Error! Bad return status\n"
        return dispatch(module, argv, **kwargs)

    fake.dispatch = failing


def test_several_kernels_in_one_call(dkms):
    with_headers(dkms)
    fact = dkms.root / "facts.d/dkms.fact"
    dkms.build_delay = 0.2
    res = run(
        dkms,
        [pkg("hello", "1.0"), pkg("chardev", "2.0")],
        kernels=[K, K2],
        jobs=2,
        fact_path=str(fact),
    )
    assert res["failed_packages"] == [], [p.get("msg") for p in res["packages"]]
    assert (res["kernel"], res["kernels"]) == (K, [K, K2])
    p = by_name(res)["hello"]
    assert sorted(p["actions"]) == sorted(
        ["sources", "add", f"build {K}", f"install {K}", f"build {K2}", f"install {K2}"]
    )
    assert p["actions"][:2] == ["sources", "add"]
    assert set(p["timing"]) == {"add", f"build {K}", f"install {K}", f"build {K2}", f"install {K2}"}
    for kernel in (K, K2):
        assert p["kernels"][kernel] == {
            "before": {},
            "after": {"1.0": "installed"},
            "status": "installed",
            "actions": ["build", "install"],
            "failed": False,
        }
    assert p["kernel"] == K and p["status"] == "installed"
    assert dkms.reg[("hello", "1.0")] == {K: "installed", K2: "installed"}
    # one depmod per kernel, at the end
    assert dkms.depmods() == [[DEPMOD, "-a", K], [DEPMOD, "-a", K2]]
    assert res["depmod"] == [K, K2]
    # builds of one package share its build folder: they never overlap
    for name in ("hello", "chardev"):
        mine = [e for e, n in dkms.events if n == name]
        assert mine == ["start", "end", "start", "end"], dkms.events
    assert json.loads(fact.read_text())["hello"]["kernels"] == {K: "installed", K2: "installed"}
    dkms.calls.clear()
    again = run(dkms, [pkg("hello", "1.0"), pkg("chardev", "2.0")], kernels=[K, K2])
    assert again["changed"] is False and dkms.calls == []


def test_a_second_kernel_gets_only_what_it_lacks(dkms):
    with_headers(dkms)
    run(dkms, [pkg("hello", "1.0")])
    dkms.calls.clear()
    res = run(dkms, [pkg("hello", "1.0")], kernels=[K, K2])
    p = by_name(res)["hello"]
    assert p["actions"] == [f"build {K2}", f"install {K2}"]
    assert p["kernels"][K]["actions"] == [] and p["kernels"][K2]["actions"] == ["build", "install"]
    assert p["kernels"][K2]["before"] == {"1.0": "added"}
    assert dkms.commands() == ["build hello/1.0", "install hello/1.0"]
    assert dkms.depmods() == [[DEPMOD, "-a", K2]]


def test_check_mode_with_several_kernels(dkms):
    with_headers(dkms)
    res = run(dkms, [pkg("hello", "1.0")], kernels=[K, K2], check=True, diff=True)
    p = by_name(res)["hello"]
    assert p["actions"] == [
        "sources",
        "add",
        f"build {K}",
        f"install {K}",
        f"build {K2}",
        f"install {K2}",
    ]
    assert p["kernels"][K2]["after"] == {"1.0": "installed"} and res["depmod"] == [K, K2]
    assert res["diff"][0]["after"] == (
        f"hello/1.0, {K}, {ARCH}: installed\nhello/1.0, {K2}, {ARCH}: installed\n"
    )
    assert dkms.calls == []


def test_a_kernel_without_headers_fails_the_call_before_anything_runs(dkms):
    res = run(dkms, [pkg("hello", "1.0")], kernels=[K, K2])
    assert res["failed"] is True and f"no kernel headers for {K2}" in res["msg"]
    assert f"no kernel headers for {K} " not in res["msg"]
    assert res["kernels"] == [K, K2]
    assert dkms.calls == [] and not (dkms.src / "hello-1.0").exists()


def test_a_build_failing_for_one_kernel_keeps_the_other(dkms):
    with_headers(dkms)
    fail_builds_for(dkms, K2)
    res = run(dkms, [pkg("hello", "1.0")], kernels=[K, K2])
    assert res["failed_packages"] == ["hello"]
    p = by_name(res)["hello"]
    assert p["step"] == "build" and p["kernels"][K2]["failed"] is True
    assert p["kernels"][K]["failed"] is False and p["kernels"][K]["status"] == "installed"
    assert p["status"] == "added"  # the lowest of the kernels
    # installed for one kernel: not removed as a failed new version
    assert dkms.reg[("hello", "1.0")] == {K: "installed"}
    assert "remove" not in " ".join(p["actions"])
    assert dkms.depmods() == [[DEPMOD, "-a", K]]


def test_prune_waits_for_every_kernel(dkms):
    with_headers(dkms)
    run(dkms, [pkg("hello", "1.0")], kernels=[K, K2])
    run(dkms, [pkg("hello", "2.0")])  # only for K
    dkms.calls.clear()
    res = run(dkms, [pkg("hello", "2.0")], kernels=[K, K2], stage="prune")
    assert res["held"] == ["hello"] and dkms.calls == []
    assert K2 in by_name(res)["hello"]["notes"][0]
    res = run(dkms, [pkg("hello", "2.0")], kernels=[K, K2])
    assert res["prunable"] == ["hello"]
    # 1.0 is now built, not installed, for both kernels
    assert by_name(res)["hello"]["kernels"][K2]["after"] == {"1.0": "built", "2.0": "installed"}
    dkms.calls.clear()
    res = run(dkms, [pkg("hello", "2.0")], kernels=[K, K2], stage="prune")
    assert dkms.commands() == ["remove hello/1.0"]
    assert dkms.reg == {("hello", "2.0"): {K: "installed", K2: "installed"}}


# -- concurrency -----------------------------------------------------------------------


def test_builds_run_concurrently(dkms):
    dkms.build_delay, dkms.together = 10, 3
    res = run(dkms, [pkg(f"m{i}", "1.0") for i in range(3)], jobs=3)
    assert res["failed_packages"] == []
    assert dkms.max_running == 3
    assert dkms.depmods() == [[DEPMOD, "-a", K]]


def test_jobs_limits_the_concurrent_builds(dkms):
    dkms.build_delay = 0.1
    run(dkms, [pkg(f"m{i}", "1.0") for i in range(3)], jobs=1)
    assert dkms.max_running == 1


def test_without_a_signing_key_the_first_build_runs_alone_and_none_is_made(dkms):
    (dkms.tree / "mok.key").unlink()
    # the first build waits out the delay alone, the other two meet
    dkms.build_delay, dkms.together = 1.5, 2
    res = run(dkms, [pkg(f"m{i}", "1.0") for i in range(3)], jobs=3, bins=BINS_OPENSSL)
    assert res["failed_packages"] == [], [p.get("msg") for p in res["packages"]]
    # dkms generates its key on the first build: no other build starts before it is done
    assert dkms.events[:2] == [("start", "m0"), ("end", "m0")]
    assert dkms.max_running == 2
    assert len(dkms.commands("install")) == 3
    # the module itself makes no key, even with openssl at hand
    assert all(a[0] != OPENSSL for a in dkms.calls)
    assert not (dkms.tree / "mok.key").exists()


def test_the_key_framework_conf_names_is_the_one_looked_for(dkms, tmp_path):
    conf = tmp_path / "etc/dkms/framework.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(f'mok_signing_key="{tmp_path}/keys/signing.key"\n')
    dkms.build_delay, dkms.together = 1.5, 2
    res = run(dkms, [pkg(f"m{i}", "1.0") for i in range(3)], jobs=3)
    assert res["failed_packages"] == []
    assert dkms.events[:2] == [("start", "m0"), ("end", "m0")]
    # once it is there, all builds run at once
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys/signing.key").write_text("key")
    dkms.events.clear()
    dkms.max_running = 0
    dkms.build_delay, dkms.together = 10, 3
    res = run(dkms, [pkg(f"n{i}", "1.0") for i in range(3)], jobs=3)
    assert res["failed_packages"] == [] and dkms.max_running == 3


def test_a_new_signing_certificate_re_signs_every_module_the_same_one_nothing(dkms, tmp_path):
    """The signing stage points dkms at the project key through a framework.conf.d
    drop-in: every module built with another key is signed again in place, with the
    kernel's sign-file (no compile, no depmod); the same key changes nothing."""
    from kmodlab import keys

    sign_file = "/usr/lib/linux-kbuild-6.1/scripts/sign-file"
    assert os.access(sign_file, os.X_OK), (
        "needs linux-kbuild-6.1 (apt-get install linux-kbuild-6.1)"
    )
    run(dkms, [pkg("m0", "1.0"), pkg("m1", "1.0")])
    body = {
        n: (dkms.tree / n / "1.0" / K / ARCH / "module" / f"{n}.ko").read_bytes()
        for n in ("m0", "m1")
    }
    assert run(dkms, [pkg("m0", "1.0"), pkg("m1", "1.0")])["changed"] is False
    project, _created = keys.create("project", bits=2048, root=tmp_path / "keys")
    dropin = tmp_path / "etc/dkms/framework.conf.d/kmodlab.conf"
    dropin.parent.mkdir(parents=True)
    dropin.write_text(
        f"mok_signing_key={project.key_path}\nmok_certificate={project.cert.der_path}\n"
        f"sign_file={sign_file}\n"
    )
    dkms.calls.clear()
    res = run(dkms, [pkg("m0", "1.0"), pkg("m1", "1.0")])
    assert res["changed"] is True and res["depmod"] == []
    assert by_name(res)["m0"]["actions"] == ["re-sign"]
    assert dkms.commands() == []  # not one dkms call
    assert [a[0] for a in dkms.calls] == [sign_file] * 2
    n, e, serial = modsig.public_numbers_from_der(project.cert.der_path.read_bytes())
    for name in ("m0", "m1"):
        built = dkms.tree / name / "1.0" / K / ARCH / "module" / f"{name}.ko"
        copy = dkms.lib / K / "updates/dkms" / f"{name}.ko"
        assert built.read_bytes() == copy.read_bytes()
        assert modsig.verify(built.read_bytes(), n, e, serial) is None
        assert built.read_bytes()[: len(body[name])] == body[name]
    dkms.calls.clear()
    assert run(dkms, [pkg("m0", "1.0"), pkg("m1", "1.0")])["changed"] is False


def test_ubuntu_keys_are_left_to_dkms_and_the_first_build_runs_alone(dkms, tmp_path):
    (dkms.tree / "mok.key").unlink()
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc/os-release").write_text("NAME=Ubuntu\nID=ubuntu\n")
    dkms.build_delay, dkms.together = 1.5, 2
    res = run(dkms, [pkg(f"m{i}", "1.0") for i in range(3)], jobs=3, bins=BINS_OPENSSL)
    assert res["failed_packages"] == []
    assert all(a[0] != OPENSSL for a in dkms.calls)
    assert dkms.events[:2] == [("start", "m0"), ("end", "m0")]


# -- dependencies (BUILD_DEPENDS) ---------------------------------------------------------


def test_a_dependent_builds_once_its_dependency_is_installed(dkms):
    # listed first, and builds could run three at once: the dependent still waits
    dkms.build_delay, dkms.together = 1.0, 2
    res = run(
        dkms,
        [dependent("symuse", "1.0", ["symexport"]), pkg("symexport", "1.0"), pkg("other", "1.0")],
        jobs=3,
    )
    assert res["failed_packages"] == [], [p.get("msg") for p in res["packages"]]
    cmds = dkms.commands()
    assert cmds.index("install symexport/1.0") < cmds.index("add symuse/1.0")
    assert cmds.index("add symuse/1.0") < cmds.index("build symuse/1.0")
    assert dkms.events.index(("end", "symexport")) < dkms.events.index(("start", "symuse"))
    # the independent package built alongside the dependency
    assert dkms.max_running == 2
    assert {p["name"]: p["status"] for p in res["packages"]} == {
        "symuse": "installed",
        "symexport": "installed",
        "other": "installed",
    }
    # results stay in the order given; one depmod at the end
    assert [p["name"] for p in res["packages"]] == ["symuse", "symexport", "other"]
    assert dkms.depmods() == [[DEPMOD, "-a", K]]


def test_without_ordering_the_dependent_would_not_link(dkms):
    """The fake's modpost check: a dependent built before its dependency fails."""
    res = run(dkms, [dependent("symuse", "1.0", ["symexport"])])
    p = by_name(res)["symuse"]
    assert p["failed"] and p["step"] == "build"
    assert any("symexport/kernel-" in line for line in p["log_tail"])


def test_a_dependent_is_not_touched_when_its_dependency_fails(dkms):
    res = run(dkms, [pkg("symexport", "1.0", c=BAD_C), dependent("symuse", "1.0", ["symexport"])])
    assert res["failed_packages"] == ["symexport", "symuse"]
    p = by_name(res)["symuse"]
    assert p["step"] == "build"
    assert "symexport, which symuse depends on (BUILD_DEPENDS), failed" in p["msg"]
    # nothing of it was run: not even its sources were written
    assert [c for c in dkms.commands() if "symuse" in c] == []
    assert p["actions"] == [] and not (dkms.src / "symuse-1.0").exists()
    assert "symuse 1.0: build failed" in res["msg"]


def test_a_failed_new_dependency_leaves_the_installed_dependent_alone(dkms):
    dkms.register("symexport", "1.0")
    dkms.register("symuse", "1.0", files=dependent("symuse", "1.0", ["symexport"])["files"])
    res = run(dkms, [pkg("symexport", "2.0", c=BAD_C), dependent("symuse", "1.0", ["symexport"])])
    p = by_name(res)["symuse"]
    assert p["failed"] and "symuse 1.0 stays installed" in p["msg"]
    assert p["after"] == {"1.0": "installed"}
    assert by_name(res)["symexport"]["after"] == {"1.0": "installed"}
    assert [c for c in dkms.commands() if "symuse" in c] == []


def test_a_dependency_built_again_rebuilds_its_dependents(dkms):
    packages = [pkg("symexport", "1.0"), dependent("symuse", "1.0", ["symexport"])]
    run(dkms, packages)
    dkms.calls.clear()
    # converged: nothing to do for either
    res = run(dkms, packages)
    assert res["changed"] is False and dkms.calls == []
    # the dependency gets new sources: the dependent is rebuilt after it
    packages[0] = pkg("symexport", "1.0", c=GOOD_C + "/* v2 */\n")
    plan = run(dkms, packages, check=True)
    assert by_name(plan)["symuse"]["actions"] == ["remove 1.0", "add", "build", "install"]
    res = run(dkms, packages)
    assert res["failed_packages"] == []
    assert dkms.commands() == [
        "remove symexport/1.0",
        "add symexport/1.0",
        "build symexport/1.0",
        "install symexport/1.0",
        "remove symuse/1.0",
        "add symuse/1.0",
        "build symuse/1.0",
        "install symuse/1.0",
    ]
    assert by_name(res)["symuse"]["changed"] is True


def test_a_dependency_not_in_the_call_only_documents(dkms):
    dkms.register("symexport", "1.0")
    res = run(dkms, [dependent("symuse", "1.0", ["symexport"])])
    assert res["failed_packages"] == []
    assert dkms.commands() == ["add symuse/1.0", "build symuse/1.0", "install symuse/1.0"]


def test_a_dependency_cycle_fails_before_anything_runs(dkms):
    res = run(dkms, [pkg("a", "1.0", depends=["b"]), pkg("b", "1.0", depends=["a"])])
    assert res["failed"] and "dependency cycle a -> b -> a" in res["msg"]
    assert dkms.calls == []


def test_executables_are_written_with_mode_0755(dkms):
    package = pkg("symexport", "1.0", executables=["keep.sh"])
    package["files"]["keep.sh"] = "#!/bin/sh\n"
    run(dkms, [package])
    script = dkms.src / "symexport-1.0/keep.sh"
    assert oct(script.stat().st_mode & 0o777) == "0o755"
    assert oct((dkms.src / "symexport-1.0/Kbuild").stat().st_mode & 0o777) == "0o644"
    # a mode lost is put back (and the package rebuilt: dkms runs the script at build)
    script.chmod(0o644)
    res = run(dkms, [package])
    assert by_name(res)["symexport"]["files_changed"] == ["keep.sh"]
    assert oct(script.stat().st_mode & 0o777) == "0o755"


def test_executables_must_be_among_the_files(dkms):
    res = run(dkms, [pkg("symexport", "1.0", executables=["nope.sh"])])
    assert res["failed"] and "executables of symexport name nope.sh" in res["msg"]


# -- input checks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("package", "message"),
    [
        (
            {"name": "hello", "version": "1.0", "source_path": "/opt/hello"},
            "dkms adds sources only from",
        ),
        ({"name": "hel lo", "version": "1.0"}, "not a valid DKMS name"),
        ({"name": "hello", "version": "1/0"}, "not a valid DKMS version"),
        ({"name": "hello", "version": "1.0", "files": {"../x.c": ""}}, "must be relative"),
        ({"name": "hello", "version": "1.0", "files": {"/etc/x": ""}}, "must be relative"),
    ],
)
def test_bad_input_fails_with_a_message(dkms, package, message):
    res = run(dkms, [package])
    assert res["failed"] is True and message in res["msg"], res["msg"]
    assert dkms.calls == []


def test_a_package_listed_twice_fails(dkms):
    res = run(dkms, [pkg("hello", "1.0"), pkg("hello", "2.0")])
    assert "listed twice" in res["msg"]


# -- the module file itself ----------------------------------------------------------------


def _doc_to_spec(options):
    spec = {}
    for name, doc in options.items():
        entry = {"type": doc.get("type", "str")}
        for key in ("required", "default", "choices", "elements"):
            if key in doc and not (key == "required" and doc[key] is False):
                entry[key] = doc[key]
        if "suboptions" in doc:
            entry["options"] = _doc_to_spec(doc["suboptions"])
        spec[name] = entry
    return spec


def test_documentation_options_match_the_argument_spec():
    doc = yaml.safe_load(kmodlab_dkms.DOCUMENTATION)
    assert _doc_to_spec(doc["options"]) == kmodlab_dkms.ARGUMENT_SPEC
    assert doc["attributes"]["check_mode"]["support"] == "full"
    assert doc["attributes"]["diff_mode"]["support"] == "full"
    for option in doc["options"].values():
        assert option.get("description"), option


def test_examples_and_return_are_valid_yaml():
    examples = yaml.safe_load(kmodlab_dkms.EXAMPLES)
    assert all("kmodlab.lab.dkms" in task for task in examples)
    returned = yaml.safe_load(kmodlab_dkms.RETURN)
    for key in (
        "stage",
        "kernel",
        "kernels",
        "packages",
        "failed_packages",
        "prunable",
        "held",
        "depmod",
        "fact_changed",
    ):
        assert returned[key]["description"] and returned[key]["returned"]
    result_keys = set(returned["packages"]["contains"])
    assert {
        "name",
        "version",
        "kernels",
        "before",
        "after",
        "changed",
        "actions",
        "notes",
        "log_tail",
    } <= result_keys


def test_returned_package_keys_are_all_documented(dkms):
    res = run(dkms, [pkg("broken", "0.1", c=BAD_C), pkg("hello", "1.0")])
    documented = set(yaml.safe_load(kmodlab_dkms.RETURN)["packages"]["contains"])
    for p in res["packages"]:
        assert set(p) <= documented, set(p) - documented
    top = set(yaml.safe_load(kmodlab_dkms.RETURN)) | {"changed", "failed", "msg", "diff"}
    assert set(res) <= top, set(res) - top


def test_the_module_does_not_import_kmodlab():
    """Targets do not have the kmodlab package; only ansible.module_utils may be imported."""
    utils = REPO / "plugins/module_utils"
    for path in (
        REPO / "plugins/modules/dkms.py",
        utils / "dkms_tree.py",
        utils / "dkms_plan.py",
        utils / "dkms_exec.py",
    ):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n == "kmodlab" or n.startswith("kmodlab.") for n in names), path
