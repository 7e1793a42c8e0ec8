"""Fast tier: the dkms.conf kmodlab.package renders, for real manifests.

Rendered by ``kmodlab.package.render`` (which the dkms_module role calls through the
``kmodlab.lab.dkms_packages`` lookup, and the container builder directly) for the record
``kmodlab.selection.resolve`` returns, then read back the way dkms reads it: sourced by
bash, with dkms's variables set. Every package keeps its Module.symvers with a POST_BUILD;
a module that depends on others gets BUILD_DEPENDS and their Module.symvers through
KBUILD_EXTRA_SYMBOLS. Where dkms is installed (and the tests run as root), the pair
symexport/symuse is written by ``kmodlab.package.write``, then added, built and installed
by the real dkms in a scratch tree, the way kmodlab.lab.dkms orders it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from kmodlab.package import KEEP_SYMVERS, Package, render, write
from kmodlab.selection import resolve

REPO = Path(__file__).resolve().parents[2]
# dkms.conf is sourced by bash inside dkms, which sets these variables.
BUILD_DIR = "${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build"
SYMVERS = "${dkms_tree}/symexport/kernel-${kernelver}-${arch}/module/Module.symvers"
POST_BUILD = (
    f'POST_BUILD="{KEEP_SYMVERS} '
    '${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/${kernelver}/${arch}/module"'
)


def conf(record, **options) -> str:
    """dkms.conf as the role and the container builder get it."""
    return render(record, **options).files["dkms.conf"]


def settings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def record(name: str) -> dict:
    (rec,) = resolve(REPO / "modules", [{"name": name}], var="test")
    rec.pop("dependents", None)  # no longer read: every package keeps its Module.symvers
    return rec


def record_of(name: str, entries: list[dict]) -> dict:
    rec = next(r for r in resolve(REPO / "modules", entries, var="test") if r["name"] == name)
    rec.pop("dependents", None)
    return rec


def test_hello_5_renders_the_expected_dkms_conf():
    rec = record("hello-5")
    text = conf(rec)
    lines = text.splitlines()
    # starts with the managed-by comment, naming the package and its manifest
    assert lines[0] == (
        f"# Managed by kmodlab: DKMS package hello-5 {rec['version']}, "
        "rendered from modules/hello-5/module.yml."
    )
    assert settings(text) == [
        'PACKAGE_NAME="hello-5"',
        f'PACKAGE_VERSION="{rec["version"]}"',  # the manifest's
        'BUILT_MODULE_NAME[0]="hello-5"',
        'DEST_MODULE_LOCATION[0]="/updates/dkms"',
        f'MAKE[0]="make -C ${{kernel_source_dir}} M={BUILD_DIR}"',
        f'CLEAN="make -C ${{kernel_source_dir}} M={BUILD_DIR} clean"',
        POST_BUILD,
        'AUTOINSTALL="yes"',
    ]
    assert text.endswith('AUTOINSTALL="yes"\n')


def test_settings_follow_the_options():
    text = conf(record("chardev"), dest_location="/extra", autoinstall=False)
    assert 'DEST_MODULE_LOCATION[0]="/extra"' in text
    assert 'AUTOINSTALL="no"' in text
    assert 'PACKAGE_NAME="chardev"' in text


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash: apt-get install bash")
@pytest.mark.parametrize("name", ["hello-5", "startstop", "chardev"])
def test_dkms_reads_what_it_needs(name, tmp_path):
    """dkms sources dkms.conf in bash with kernel_source_dir and dkms_tree set."""
    rec = record(name)
    path = tmp_path / "dkms.conf"
    path.write_text(conf(rec))
    script = (
        "kernel_source_dir=/lib/modules/K/build; dkms_tree=/var/lib/dkms; "
        f"source {path}; "
        'printf "%s\\n" "$PACKAGE_NAME" "$PACKAGE_VERSION" "${BUILT_MODULE_NAME[0]}" '
        '"${DEST_MODULE_LOCATION[0]}" "${MAKE[0]}" "$AUTOINSTALL"'
    )
    out = subprocess.run(["bash", "-c", script], check=True, capture_output=True, text=True)
    assert out.stdout.splitlines() == [
        rec["name"],
        rec["version"],
        rec["name"],  # the .ko is named after the package (Kbuild: obj-m := NAME.o)
        "/updates/dkms",
        f"make -C /lib/modules/K/build M=/var/lib/dkms/{rec['name']}/{rec['version']}/build",
        "yes",
    ]
    assert out.stderr == ""


def test_every_lab_module_has_the_kbuild_object_the_conf_names():
    """BUILT_MODULE_NAME is the package name: each Kbuild must build NAME.ko."""
    for rec in resolve(
        REPO / "modules", [{"name": p.parent.name} for p in (REPO / "modules").glob("*/module.yml")]
    ):
        kbuild = Path(rec["source_dir"]) / "Kbuild"
        assert f"obj-m := {rec['name']}.o" in kbuild.read_text(), kbuild
        assert f'BUILT_MODULE_NAME[0]="{rec["name"]}"' in conf(rec)


def test_every_package_keeps_its_module_symvers():
    """Whether other manifests depend on it or not, and whatever dependents says."""
    rec = record("symexport")
    assert settings(conf(rec)) == [
        'PACKAGE_NAME="symexport"',
        f'PACKAGE_VERSION="{rec["version"]}"',
        'BUILT_MODULE_NAME[0]="symexport"',
        'DEST_MODULE_LOCATION[0]="/updates/dkms"',
        f'MAKE[0]="make -C ${{kernel_source_dir}} M={BUILD_DIR}"',
        f'CLEAN="make -C ${{kernel_source_dir}} M={BUILD_DIR} clean"',
        POST_BUILD,
        'AUTOINSTALL="yes"',
    ]
    pair = [{"name": "symuse"}, {"name": "symexport"}]
    for rec in [record("hello-1"), record("memory"), record_of("symuse", pair)]:
        package = render({**rec, "dependents": []})
        assert POST_BUILD in package.files["dkms.conf"].splitlines(), rec["name"]
        assert package.executables == (KEEP_SYMVERS,)


def test_a_module_that_depends_on_another_builds_against_its_symbols():
    rec = record_of("symuse", [{"name": "symuse"}, {"name": "symexport"}])
    assert settings(conf(rec)) == [
        'PACKAGE_NAME="symuse"',
        f'PACKAGE_VERSION="{rec["version"]}"',
        'BUILT_MODULE_NAME[0]="symuse"',
        'DEST_MODULE_LOCATION[0]="/updates/dkms"',
        'BUILD_DEPENDS=("symexport")',
        f'MAKE[0]="make -C ${{kernel_source_dir}} M={BUILD_DIR} KBUILD_EXTRA_SYMBOLS={SYMVERS}"',
        f'CLEAN="make -C ${{kernel_source_dir}} M={BUILD_DIR} clean"',
        POST_BUILD,
        'AUTOINSTALL="yes"',
    ]
    assert render(rec).depends == ("symexport",)


def test_modules_without_depends_build_against_nothing_else():
    """No BUILD_DEPENDS or KBUILD_EXTRA_SYMBOLS: only their own sources and the kernel's."""
    for rec in resolve(REPO / "modules", [{"name": "hello-5"}, {"name": "memory"}]):
        package = render(rec)
        assert not any(key in package.files["dkms.conf"] for key in ("BUILD_DEPENDS", "KBUILD_"))
        assert package.depends == ()


DKMS_VARS = "kernel_source_dir=/lib/modules/K/build; dkms_tree=/var/lib/dkms; kernelver=K; arch=A; "


def _source(path: Path, *expressions: str) -> list[str]:
    script = f"{DKMS_VARS}source {path}; printf '%s\\n' {' '.join(expressions)}"
    out = subprocess.run(["bash", "-c", script], check=True, capture_output=True, text=True)
    assert out.stderr == ""
    return out.stdout.splitlines()


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash: apt-get install bash")
def test_dkms_reads_the_dependency_settings(tmp_path):
    path = tmp_path / "dkms.conf"
    path.write_text(conf(record_of("symuse", [{"name": "symuse"}, {"name": "symexport"}])))
    assert _source(path, '"${BUILD_DEPENDS[@]}"', '"${MAKE[0]}"', '"$POST_BUILD"') == [
        "symexport",
        "make -C /lib/modules/K/build M=/var/lib/dkms/symuse/1.0.0/build "
        "KBUILD_EXTRA_SYMBOLS=/var/lib/dkms/symexport/kernel-K-A/module/Module.symvers",
        f"{KEEP_SYMVERS} /var/lib/dkms/symuse/1.0.0/K/A/module",
    ]
    path.write_text(conf(record("symexport")))
    assert _source(path, '"${#BUILD_DEPENDS[@]}"', '"$POST_BUILD"') == [
        "0",
        f"{KEEP_SYMVERS} /var/lib/dkms/symexport/1.0.0/K/A/module",
    ]


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash: apt-get install bash")
def test_several_dependencies_are_one_kbuild_extra_symbols_word(tmp_path):
    rec = record("hello-1")
    rec["manifest"] = {**rec["manifest"], "depends": ["one", "two"]}
    path = tmp_path / "dkms.conf"
    path.write_text(conf(rec))
    assert 'BUILD_DEPENDS=("one" "two")' in path.read_text()
    (make,) = _source(path, '"${MAKE[0]}"')
    # dkms evals MAKE: the quoted list stays one make argument
    argv = subprocess.run(
        ["bash", "-c", f"eval \"printf '%s\\n' {make.removeprefix('make ')}\""],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert argv[-1] == (
        "KBUILD_EXTRA_SYMBOLS=/var/lib/dkms/one/kernel-K-A/module/Module.symvers "
        "/var/lib/dkms/two/kernel-K-A/module/Module.symvers"
    )


def test_the_keep_symvers_script_is_the_packages_data():
    data = resources.files("kmodlab.package").joinpath(KEEP_SYMVERS)
    text = data.read_text()
    assert text.startswith("#!/bin/sh\n")
    with resources.as_file(data) as path:
        assert os.access(path, os.X_OK)  # git keeps its mode: runnable by hand too
    package = render(record("symexport"))
    assert package.files[KEEP_SYMVERS] == text
    assert package.executables == (KEEP_SYMVERS,)


# -- the real dkms --------------------------------------------------------------------------

DKMS = shutil.which("dkms") or ("/usr/sbin/dkms" if Path("/usr/sbin/dkms").exists() else None)


def _headers() -> Path | None:
    chosen = os.environ.get("KMODLAB_KERNEL_HEADERS")
    if chosen:
        return Path(chosen)
    trees = sorted(Path("/usr/src").glob("linux-headers-*-amd64"))
    trees = [t for t in trees if (t / "include/config/kernel.release").is_file()]
    return trees[-1] if trees else None


@pytest.mark.skipif(DKMS is None, reason="no dkms: apt-get install --no-install-recommends dkms")
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (dkms refuses to run otherwise)")
@pytest.mark.skipif(
    _headers() is None,
    reason="no /usr/src/linux-headers-*-amd64: apt-get install linux-headers-amd64",
)
def test_real_dkms_builds_the_pair_dependency_first(tmp_path):
    """dkms 3.0's add, build and install of symexport then symuse, as kmodlab.lab.dkms runs
    them, in a scratch tree (--dkmstree, --sourcetree, --installtree; unsigned), from the
    trees kmodlab.package.write wrote: symuse's build reads symexport's Module.symvers,
    which its POST_BUILD kept; symuse, which exports nothing, keeps its own all the same."""
    headers = _headers()
    kernel = (headers / "include/config/kernel.release").read_text().strip()
    arch = os.uname().machine
    src, tree, lib = tmp_path / "src", tmp_path / "dkms", tmp_path / "lib/modules"
    (lib / kernel).mkdir(parents=True)
    tree.mkdir()
    records = {
        r["name"]: r for r in resolve(REPO / "modules", [{"name": "symuse"}, {"name": "symexport"}])
    }
    packages: dict[str, Package] = {}
    for name, rec in records.items():
        packages[name] = render(rec)
        folder = write(packages[name], src)
        assert folder == src / f"{name}-{rec['version']}"
        assert os.access(folder / KEEP_SYMVERS, os.X_OK)
    # sign_file that does not exist: dkms neither signs nor makes a key in /var/lib/dkms
    env = {**os.environ, "LC_ALL": "C", "sign_file": str(tmp_path / "no-sign-file")}
    trees = ["--dkmstree", str(tree), "--sourcetree", str(src), "--installtree", str(lib)]

    def dkms(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DKMS, *args, *trees],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def step(verb: str, name: str) -> subprocess.CompletedProcess[str]:
        args = [verb, "-m", name, "-v", records[name]["version"]]
        if verb != "add":
            args += ["-k", kernel, "--kernelsourcedir", str(headers)]
        if verb == "install":
            args.append("--no-depmod")
        done = dkms(*args)
        log = tree / name / records[name]["version"] / "build/make.log"
        assert done.returncode == 0, f"dkms {verb} {name}: {done.stdout}{done.stderr}" + (
            log.read_text() if log.exists() else ""
        )
        return done

    # the dependent alone cannot link: modpost has no Module.symvers of symexport
    step("add", "symuse")
    early = dkms(
        "build", "-m", "symuse", "-v", "1.0.0", "-k", kernel, "--kernelsourcedir", str(headers)
    )
    assert early.returncode != 0
    early_log = (tree / "symuse/1.0.0/build/make.log").read_text()
    assert "symexport/kernel-" in early_log and "Module.symvers" in early_log, early_log
    # kmodlab.lab.dkms order: the dependency built and installed, then the dependent
    for name in ("symexport",):
        step("add", name)
        built = step("build", name)
        assert "kmodlab-keep-symvers: kept Module.symvers" in built.stdout, built.stdout
        step("install", name)
    kept = tree / f"symexport/kernel-{kernel}-{arch}/module/Module.symvers"
    assert "\tsymexport_count\t" in kept.read_text()
    built = step("build", "symuse")
    assert "kmodlab-keep-symvers: kept Module.symvers" in built.stdout, built.stdout
    step("install", "symuse")
    log = (tree / f"symuse/1.0.0/{kernel}/{arch}/log/make.log").read_text()
    assert "undefined" not in log and "WARNING" not in log, log
    assert (tree / f"symuse/kernel-{kernel}-{arch}/module/Module.symvers").is_file()
    status = dkms("status").stdout
    assert f"symexport/1.0.0, {kernel}, {arch}: installed" in status, status
    assert f"symuse/1.0.0, {kernel}, {arch}: installed" in status, status
    ko = lib / kernel / "updates/dkms/symuse.ko"
    assert b"depends=symexport\0" in ko.read_bytes()
