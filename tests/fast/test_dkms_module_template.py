"""Fast tier: the dkms_module role's one dkms.conf template, rendered for real manifests.

Rendered with the template lookup, as the role renders it, for the record the
``kmodlab_modules`` lookup returns, then read back the way dkms reads it: sourced by
bash, with dkms's variables set. A module other modules depend on gets a POST_BUILD that
keeps its Module.symvers; a module that depends on others gets BUILD_DEPENDS and their
Module.symvers through KBUILD_EXTRA_SYMBOLS. Where dkms is installed (and the tests run as
root), the pair symexport/symuse is added, built and installed by the real dkms in a
scratch tree, the way kmodlab_dkms orders it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import lookup_loader
from ansible.template import Templar

from kmodlab.selection import resolve

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles/dkms_module"
TEMPLATE = ROLE / "templates/usr/src/dkms.conf.j2"
DEFAULTS = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
ROLE_VARS = yaml.safe_load((ROLE / "vars/main.yml").read_text())
KEEP_SYMVERS = ROLE_VARS["__dkms_module_keep_symvers"]
# dkms.conf is sourced by bash inside dkms, which sets these variables.
BUILD_DIR = "${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build"
SYMVERS = "${dkms_tree}/symexport/kernel-${kernelver}-${arch}/module/Module.symvers"


def render(record, **overrides) -> str:
    """dkms.conf as the role's source phase renders it (the template lookup)."""
    variables = {
        "ansible_managed": "Ansible managed",
        "dkms_module_dest_location": DEFAULTS["dkms_module_dest_location"],
        "dkms_module_autoinstall": DEFAULTS["dkms_module_autoinstall"],
        "__dkms_module_symvers_path": ROLE_VARS["__dkms_module_symvers_path"],
        "__dkms_module_keep_symvers": KEEP_SYMVERS,
        **overrides,
    }
    loader = DataLoader()
    lookup = lookup_loader.get("template", loader=loader, templar=Templar(loader=loader))
    (text,) = lookup.run([str(TEMPLATE)], variables, template_vars={"dkms_module_item": record})
    return text


def settings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def record(name: str) -> dict:
    (rec,) = resolve(REPO / "modules", [{"name": name}], var="test")
    return rec


def test_hello_5_renders_the_expected_dkms_conf():
    rec = record("hello-5")
    text = render(rec)
    lines = text.splitlines()
    # starts with the managed-by comment
    assert lines[:3] == ["#", "# Ansible managed", "#"]
    assert settings(text) == [
        'PACKAGE_NAME="hello-5"',
        f'PACKAGE_VERSION="{rec["version"]}"',  # the manifest's
        'BUILT_MODULE_NAME[0]="hello-5"',
        'DEST_MODULE_LOCATION[0]="/updates/dkms"',
        f'MAKE[0]="make -C ${{kernel_source_dir}} M={BUILD_DIR}"',
        f'CLEAN="make -C ${{kernel_source_dir}} M={BUILD_DIR} clean"',
        'AUTOINSTALL="yes"',
    ]
    assert "modules/hello-5/module.yml" in text


def test_settings_follow_the_role_variables():
    text = render(
        record("chardev"), dkms_module_dest_location="/extra", dkms_module_autoinstall=False
    )
    assert 'DEST_MODULE_LOCATION[0]="/extra"' in text
    assert 'AUTOINSTALL="no"' in text
    assert 'PACKAGE_NAME="chardev"' in text


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash: apt-get install bash")
@pytest.mark.parametrize("name", ["hello-5", "startstop", "chardev"])
def test_dkms_reads_what_it_needs(name, tmp_path):
    """dkms sources dkms.conf in bash with kernel_source_dir and dkms_tree set."""
    rec = record(name)
    conf = tmp_path / "dkms.conf"
    conf.write_text(render(rec))
    script = (
        "kernel_source_dir=/lib/modules/K/build; dkms_tree=/var/lib/dkms; "
        f"source {conf}; "
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


def test_every_lab_module_has_the_kbuild_object_the_template_names():
    """BUILT_MODULE_NAME is the package name: each Kbuild must build NAME.ko."""
    for rec in resolve(
        REPO / "modules", [{"name": p.parent.name} for p in (REPO / "modules").glob("*/module.yml")]
    ):
        kbuild = Path(rec["source_dir"]) / "Kbuild"
        assert f"obj-m := {rec['name']}.o" in kbuild.read_text(), kbuild


def test_a_module_others_depend_on_keeps_its_module_symvers():
    rec = record("symexport")
    assert rec["dependents"] == ["symuse"]
    assert settings(render(rec)) == [
        'PACKAGE_NAME="symexport"',
        f'PACKAGE_VERSION="{rec["version"]}"',
        'BUILT_MODULE_NAME[0]="symexport"',
        'DEST_MODULE_LOCATION[0]="/updates/dkms"',
        f'MAKE[0]="make -C ${{kernel_source_dir}} M={BUILD_DIR}"',
        f'CLEAN="make -C ${{kernel_source_dir}} M={BUILD_DIR} clean"',
        f'POST_BUILD="{KEEP_SYMVERS} '
        '${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/${kernelver}/${arch}/module"',
        'AUTOINSTALL="yes"',
    ]


def test_a_module_that_depends_on_another_builds_against_its_symbols():
    rec = record_of("symuse", [{"name": "symuse"}, {"name": "symexport"}])
    assert settings(render(rec)) == [
        'PACKAGE_NAME="symuse"',
        f'PACKAGE_VERSION="{rec["version"]}"',
        'BUILT_MODULE_NAME[0]="symuse"',
        'DEST_MODULE_LOCATION[0]="/updates/dkms"',
        'BUILD_DEPENDS=("symexport")',
        f'MAKE[0]="make -C ${{kernel_source_dir}} M={BUILD_DIR} KBUILD_EXTRA_SYMBOLS={SYMVERS}"',
        f'CLEAN="make -C ${{kernel_source_dir}} M={BUILD_DIR} clean"',
        'AUTOINSTALL="yes"',
    ]


def test_modules_no_one_depends_on_render_as_before():
    """No BUILD_DEPENDS, KBUILD_EXTRA_SYMBOLS or POST_BUILD: their packages are unchanged."""
    for rec in resolve(REPO / "modules", [{"name": "hello-5"}, {"name": "memory"}]):
        text = render(rec)
        assert not any(key in text for key in ("BUILD_DEPENDS", "KBUILD_EXTRA", "POST_BUILD"))


def record_of(name: str, entries: list[dict]) -> dict:
    return next(r for r in resolve(REPO / "modules", entries, var="test") if r["name"] == name)


DKMS_VARS = "kernel_source_dir=/lib/modules/K/build; dkms_tree=/var/lib/dkms; kernelver=K; arch=A; "


def _source(conf: Path, *expressions: str) -> list[str]:
    script = f"{DKMS_VARS}source {conf}; printf '%s\\n' {' '.join(expressions)}"
    out = subprocess.run(["bash", "-c", script], check=True, capture_output=True, text=True)
    assert out.stderr == ""
    return out.stdout.splitlines()


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash: apt-get install bash")
def test_dkms_reads_the_dependency_settings(tmp_path):
    conf = tmp_path / "dkms.conf"
    conf.write_text(render(record_of("symuse", [{"name": "symuse"}, {"name": "symexport"}])))
    assert _source(conf, '"${BUILD_DEPENDS[@]}"', '"${MAKE[0]}"', '"${POST_BUILD:-none}"') == [
        "symexport",
        "make -C /lib/modules/K/build M=/var/lib/dkms/symuse/1.0.0/build "
        "KBUILD_EXTRA_SYMBOLS=/var/lib/dkms/symexport/kernel-K-A/module/Module.symvers",
        "none",
    ]
    conf.write_text(render(record("symexport")))
    assert _source(conf, '"${#BUILD_DEPENDS[@]}"', '"$POST_BUILD"') == [
        "0",
        f"{KEEP_SYMVERS} /var/lib/dkms/symexport/1.0.0/K/A/module",
    ]


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash: apt-get install bash")
def test_several_dependencies_are_one_kbuild_extra_symbols_word(tmp_path):
    rec = record("hello-1")
    rec["manifest"] = {**rec["manifest"], "depends": ["one", "two"]}
    conf = tmp_path / "dkms.conf"
    conf.write_text(render(rec))
    assert 'BUILD_DEPENDS=("one" "two")' in conf.read_text()
    (make,) = _source(conf, '"${MAKE[0]}"')
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


def test_the_keep_symvers_script_is_the_roles_file():
    script = ROLE / "files" / KEEP_SYMVERS
    assert script.read_text().startswith("#!/bin/sh\n")
    assert os.access(script, os.X_OK)


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
    """dkms 3.0's add, build and install of symexport then symuse, as kmodlab_dkms runs
    them, in a scratch tree (--dkmstree, --sourcetree, --installtree; unsigned): symuse's
    build reads symexport's Module.symvers, which its POST_BUILD kept."""
    headers = _headers()
    kernel = (headers / "include/config/kernel.release").read_text().strip()
    arch = os.uname().machine
    src, tree, lib = tmp_path / "src", tmp_path / "dkms", tmp_path / "lib/modules"
    (lib / kernel).mkdir(parents=True)
    tree.mkdir()
    records = {
        r["name"]: r for r in resolve(REPO / "modules", [{"name": "symuse"}, {"name": "symexport"}])
    }
    for name, rec in records.items():
        folder = src / f"{name}-{rec['version']}"
        shutil.copytree(rec["source_dir"], folder, ignore=shutil.ignore_patterns("module.yml"))
        (folder / "dkms.conf").write_text(render(rec))
        if rec["dependents"]:
            shutil.copy2(ROLE / "files" / KEEP_SYMVERS, folder / KEEP_SYMVERS)
    # sign_file that does not exist: dkms neither signs nor makes a key in /var/lib/dkms
    env = {**os.environ, "LC_ALL": "C", "sign_file": str(tmp_path / "no-sign-file")}
    trees = ["--dkmstree", str(tree), "--sourcetree", str(src), "--installtree", str(lib)]

    def dkms(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DKMS, *args, *trees], env=env, capture_output=True, text=True, timeout=300
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
    # kmodlab_dkms's order: the dependency built and installed, then the dependent
    for name in ("symexport",):
        step("add", name)
        built = step("build", name)
        assert "kmodlab-keep-symvers: kept Module.symvers" in built.stdout, built.stdout
        step("install", name)
    kept = tree / f"symexport/kernel-{kernel}-{arch}/module/Module.symvers"
    assert "\tsymexport_count\t" in kept.read_text()
    step("build", "symuse")
    step("install", "symuse")
    log = (tree / f"symuse/1.0.0/{kernel}/{arch}/log/make.log").read_text()
    assert "undefined" not in log and "WARNING" not in log, log
    status = dkms("status").stdout
    assert f"symexport/1.0.0, {kernel}, {arch}: installed" in status, status
    assert f"symuse/1.0.0, {kernel}, {arch}: installed" in status, status
    ko = lib / kernel / "updates/dkms/symuse.ko"
    assert b"depends=symexport\0" in ko.read_bytes()
