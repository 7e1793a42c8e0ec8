"""The container builder (kmodlab.fleet): cache keys, build order, and real Docker builds
of hello-1 and the symexport/symuse pair for one kernel ABI, signed with a throwaway key.

The first run makes the builder image (debootstrap stage import, headers download: a
few minutes once); later runs reuse it. Without Docker the tests fail saying what to
install (they do not skip).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.kmodlab.lab.plugins.module_utils import modsig

from kmodlab import keys, selection
from kmodlab.fleet import builder, debpkg
from kmodlab.fleet import docker as docker_mod
from kmodlab.fleet.artifacts import read_compilations

ABI = "6.1.0-57-amd64"
REPO = Path(__file__).resolve().parents[2]
MODULES = REPO / "modules"


def records(*names: str, modules: Path = MODULES) -> list[dict[str, Any]]:
    return selection.resolve(modules, [{"name": n} for n in names])


# --- pure ------------------------------------------------------------------------------


def test_cache_key_changes_exactly_with_its_inputs() -> None:
    base = ("d" * 64, ABI, "sha256:img", "AA:BB", ("k1",))
    key = builder.cache_key(*base)
    assert builder.cache_key(*base) == key
    assert builder.cache_key(base[0], base[1], base[2], base[3], ["k1"]) == key
    changed = [
        ("e" * 64, ABI, "sha256:img", "AA:BB", ("k1",)),  # sources
        ("d" * 64, "6.1.0-50-amd64", "sha256:img", "AA:BB", ("k1",)),  # ABI
        ("d" * 64, ABI, "sha256:other", "AA:BB", ("k1",)),  # builder image
        ("d" * 64, ABI, "sha256:img", "CC:DD", ("k1",)),  # signing key
        ("d" * 64, ABI, "sha256:img", "AA:BB", ("k2",)),  # a dependency's build
    ]
    keys_ = {builder.cache_key(*args) for args in changed}
    assert key not in keys_ and len(keys_) == len(changed)


def test_package_digest_follows_the_package_files(tmp_path: Path) -> None:
    from kmodlab import package

    src = tmp_path / "modules"
    shutil.copytree(MODULES / "hello-1", src / "hello-1")
    first = builder.package_digest(package.render(records("hello-1", modules=src)[0]))
    assert first == builder.package_digest(package.render(records("hello-1", modules=src)[0]))
    (src / "hello-1/module.yml").write_text(
        (src / "hello-1/module.yml").read_text() + "\n# a comment outside the package\n"
    )
    assert first == builder.package_digest(package.render(records("hello-1", modules=src)[0]))
    c_file = src / "hello-1/hello-1.c"
    c_file.write_text(c_file.read_text() + "\n/* changed */\n")
    assert first != builder.package_digest(package.render(records("hello-1", modules=src)[0]))


def test_units_in_dependency_levels() -> None:
    units = builder._units(records("symuse", "hello-1", "symexport"))
    by_name = {u.name: u for u in units}
    assert builder.levels(by_name) == [["symexport", "hello-1"], ["symuse"]] or builder.levels(
        by_name
    ) == [["hello-1", "symexport"], ["symuse"]]
    make = by_name["symuse"].make
    assert make == (
        "make -C @KDIR@ M=/w/symuse KBUILD_EXTRA_SYMBOLS=/w/symexport/Module.symvers modules"
    )
    assert by_name["hello-1"].make == "make -C @KDIR@ M=/w/hello-1 modules"


def test_dependency_not_among_records_refused() -> None:
    only_user = [r for r in records("symuse", "symexport") if r["name"] == "symuse"]
    with pytest.raises(builder.BuildError, match=r"symuse depends on symexport.*select symexport"):
        builder._units(only_user)


def test_shipped_dkms_conf_make_line() -> None:
    conf = (
        'PACKAGE_NAME="x"\n'
        'MAKE[0]="make -C ${kernel_source_dir} '
        'M=${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build KVER=${kernelver}"\n'
    )
    assert builder.shipped_make("x", "1.0", conf) == "make -C @KDIR@ M=/w/x KVER=@ABI@"
    with pytest.raises(builder.BuildError, match="no MAKE"):
        builder.shipped_make("x", "1.0", 'PACKAGE_NAME="x"\n')
    with pytest.raises(builder.BuildError, match="does not set"):
        builder.shipped_make("x", "1.0", 'MAKE[0]="make -C ${kernel_source_dir} FOO=$bar"\n')


def test_bad_abi_refused_before_docker(throwaway_key: builder.KeyMaterial) -> None:
    with pytest.raises(debpkg.DebError, match="kernel ABI"):
        builder.build(records("hello-1"), ["bogus"], throwaway_key)
    with pytest.raises(builder.BuildError, match="at least one"):
        builder.build(records("hello-1"), [], throwaway_key)


# --- real builds -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def throwaway_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[builder.KeyMaterial]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KMODLAB_KEY_DIR", str(tmp_path_factory.mktemp("keys")))
        keys.create("fleet-test", bits=2048)
        yield builder.KeyMaterial.from_store("fleet-test")


@pytest.fixture(scope="module")
def docker_ready() -> None:
    for tool, package in (("docker", "docker.io"), ("dpkg-deb", "dpkg")):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: install it with `apt-get install {package}`")
    if shutil.which("apt-ftparchive") is None:
        pytest.fail("apt-ftparchive not found: install it with `apt-get install apt-utils`")
    try:
        docker_mod.ensure_daemon()
    except docker_mod.DockerError as exc:
        pytest.fail(f"the container builder needs a Docker daemon (run the tests as root): {exc}")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fleet") / "artifacts"


@pytest.fixture(scope="module")
def first(
    docker_ready: None, throwaway_key: builder.KeyMaterial, store: Path
) -> builder.BuildResult:
    return builder.build(
        records("hello-1", "symexport", "symuse"), [ABI], throwaway_key, store=store
    )


def _extract_ko(deb: Path, kmod: str, dest: Path) -> Path:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    return dest / debpkg.ko_path(kmod, ABI).lstrip("/")


def test_first_build(
    first: builder.BuildResult, throwaway_key: builder.KeyMaterial, store: Path, tmp_path: Path
) -> None:
    assert first.failures == []
    assert (first.compiled, first.cached) == (3, 0)
    descriptors = {d["module"]: d for d in first.descriptors[ABI]}
    assert list(descriptors) == ["hello-1", "symexport", "symuse"]
    assert descriptors["symuse"]["depends"] == ["kmodlab-symexport-modules-6.1.0-57-amd64"]
    n, e, serial = modsig.public_numbers_from_der(throwaway_key.cert_path.read_bytes())
    for name, d in descriptors.items():
        assert d["compiled"] is True
        assert d["package"] == debpkg.package_name(name, ABI)
        assert d["file"] == debpkg.deb_file(name, d["version"], ABI)
        deb = Path(d["path"])
        assert deb.parent == store / "pool" / ABI and deb.name == d["file"]
        assert debpkg.sha256_file(deb) == d["sha256"]
        ko = _extract_ko(deb, d["kmod"], tmp_path / name)
        # Signed with the throwaway key, as the kernel would check it.
        assert modsig.problem_for_file(str(ko), n, e, serial) is None
        _data, sig = modsig.read_file(str(ko))
        assert sig is not None
        assert sig.signer == throwaway_key.cert.common_name == d["signer"]
        assert sig.sig_key == throwaway_key.cert.sig_key == d["sig_key"]
        vermagic = subprocess.run(
            ["modinfo", "-F", "vermagic", str(ko)], capture_output=True, text=True, check=True
        ).stdout
        assert vermagic.startswith(f"{ABI} ")
    symuse = _extract_ko(Path(descriptors["symuse"]["path"]), "symuse", tmp_path / "u")
    depends = subprocess.run(
        ["modinfo", "-F", "depends", str(symuse)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert depends == "symexport"
    assert [(c["module"], c["abi"]) for c in read_compilations(store)] == [
        ("hello-1", ABI),
        ("symexport", ABI),
        ("symuse", ABI),
    ]
    packages = (store / "Packages").read_text()
    assert "Filename: pool/6.1.0-57-amd64/kmodlab-symuse-modules-6.1.0-57-amd64_1.0.0" in packages
    assert (store / "Packages.gz").is_file()
    assert set(first.timings) >= {"image", "compile", "sign", "package", "total"}


def test_key_never_in_the_store(
    first: builder.BuildResult, throwaway_key: builder.KeyMaterial, store: Path
) -> None:
    secret = throwaway_key.key_path.read_bytes().splitlines()[1]
    for path in store.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path


def test_second_build_compiles_nothing(
    first: builder.BuildResult, throwaway_key: builder.KeyMaterial, store: Path
) -> None:
    before = len(read_compilations(store))
    again = builder.build(
        records("hello-1", "symexport", "symuse"), [ABI], throwaway_key, store=store
    )
    assert (again.compiled, again.cached, again.failures) == (0, 3, [])
    assert len(read_compilations(store)) == before
    assert again.descriptors[ABI] == [{**d, "compiled": False} for d in first.descriptors[ABI]]


def test_failure_names_module_abi_and_log(
    first: builder.BuildResult, throwaway_key: builder.KeyMaterial, store: Path, tmp_path: Path
) -> None:
    modules = tmp_path / "modules"
    shutil.copytree(MODULES / "hello-1", modules / "hello-1")
    shutil.copytree(MODULES / "hello-2", modules / "hello-2")
    broken = modules / "hello-2" / "hello-2.c"
    broken.write_text(broken.read_text() + "\nthis is not C;\n")
    before = len(read_compilations(store))
    result = builder.build(
        records("hello-1", "hello-2", modules=modules), [ABI], throwaway_key, store=store
    )
    assert (result.compiled, result.cached) == (0, 1)  # hello-1: same package files
    [failure] = result.failures
    assert (failure.module, failure.abi) == ("hello-2", ABI)
    assert "hello-2" in failure.message and ABI in failure.message
    assert "error" in failure.log_tail
    assert len(read_compilations(store)) == before
