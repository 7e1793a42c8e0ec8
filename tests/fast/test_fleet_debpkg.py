"""kmodlab.fleet.debpkg: package names, control data, maintainer scripts, and a real
dpkg-deb build (no Docker)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kmodlab.fleet import debpkg

ABI = "6.1.0-57-amd64"


def spec(**over: object) -> debpkg.DebSpec:
    values: dict[str, object] = {
        "module": "symuse",
        "kmod": "symuse",
        "version": "1.2.0",
        "abi": ABI,
        "description": "a module that calls another's function",
        "signer": "kmodlab lab module signing key",
        "sig_key": "2B:FF:02",
        "depends": {"symexport": "1.0.0"},
    }
    values.update(over)
    return debpkg.DebSpec(**values)  # type: ignore[arg-type]


def test_names() -> None:
    assert debpkg.package_name("hello-5", ABI) == "kmodlab-hello-5-modules-6.1.0-57-amd64"
    assert debpkg.package_name("my_mod", ABI) == "kmodlab-my-mod-modules-6.1.0-57-amd64"
    assert (
        debpkg.deb_file("hello-5", "1.1.0", ABI)
        == "kmodlab-hello-5-modules-6.1.0-57-amd64_1.1.0_amd64.deb"
    )
    assert debpkg.install_dir(ABI) == "/lib/modules/6.1.0-57-amd64/updates/kmodlab"
    assert debpkg.ko_path("hello_5", ABI).endswith("/updates/kmodlab/hello_5.ko")
    assert debpkg.DEFER_DEPMOD_ENV == "KMODLAB_DEFER_DEPMOD"


@pytest.mark.parametrize("abi", ["", "6.1", "../x", "6.1.0-57 amd64", "linux-6.1"])
def test_bad_abi_refused(abi: str) -> None:
    with pytest.raises(debpkg.DebError, match="kernel ABI"):
        debpkg.check_abi(abi)


def test_bad_names_refused() -> None:
    with pytest.raises(debpkg.DebError, match="module name"):
        spec(module="Bad Name")
    with pytest.raises(debpkg.DebError, match="version"):
        spec(version="v1")


def test_control() -> None:
    text = debpkg.control(spec(), 12)
    fields = dict(line.split(": ", 1) for line in text.splitlines() if not line.startswith(" "))
    assert fields["Package"] == "kmodlab-symuse-modules-6.1.0-57-amd64"
    assert fields["Version"] == "1.2.0"
    assert fields["Architecture"] == "amd64"
    assert fields["Maintainer"] == "kmodlab <kmodlab@localhost>"
    assert fields["Section"] == "kernel"
    assert fields["Priority"] == "optional"
    assert fields["Installed-Size"] == "12"
    assert fields["Depends"] == (
        "linux-image-6.1.0-57-amd64 | linux-image-6.1.0-57-amd64-unsigned, "
        "kmodlab-symexport-modules-6.1.0-57-amd64 (= 1.2.0)".replace("1.2.0", "1.0.0")
    )
    assert fields["Description"] == "a module that calls another's function"
    extended = [line for line in text.splitlines() if line.startswith(" ")]
    assert extended == [
        " kmodlab build of symuse 1.2.0 for Linux 6.1.0-57-amd64, signed by "
        "kmodlab lab module signing key (2B:FF:02)."
    ]


def _run_script(script: str, arg: str, tmp_path: Path, env: dict[str, str]) -> str:
    """Run a maintainer script with a fake depmod on PATH; what depmod was called with."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    calls.write_text("")
    fake = bindir / "depmod"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    path = tmp_path / "script"
    path.write_text(script)
    path.chmod(0o755)
    subprocess.run(
        ["sh", str(path), arg],
        env={"PATH": f"{bindir}:/usr/bin:/bin", **env},
        check=True,
    )
    return calls.read_text()


def test_maintainer_scripts(tmp_path: Path) -> None:
    # The kernel of this ABI is not on this machine: no depmod whatever the action.
    s = spec(abi="0.0.1-1-kmodlabtest")
    for script in (debpkg.postinst(s), debpkg.postrm(s)):
        assert script.startswith("#!/bin/sh\n")
        assert "set -e\n" in script
        assert "depmod -a 0.0.1-1-kmodlabtest\n" in script
        assert "${KMODLAB_DEFER_DEPMOD:-}" in script
        assert "/lib/modules/0.0.1-1-kmodlabtest/modules.order" in script
        assert "depmod -a\n" not in script
    assert _run_script(debpkg.postinst(s), "configure", tmp_path, {}) == ""
    # With the kernel present (its modules.order, under a scratch root here): configure
    # and remove/purge run depmod for that ABI only.
    abi = "0.0.2-1-kmodlabtest"
    order = tmp_path / "root/lib/modules" / abi / "modules.order"
    order.parent.mkdir(parents=True)
    order.write_text("")

    def rooted(script: str) -> str:
        return script.replace("[ -e /lib/modules/", f"[ -e {tmp_path}/root/lib/modules/")

    s = spec(abi=abi)
    abis = [abi]
    post = rooted(debpkg.postinst(s))
    assert _run_script(post, "configure", tmp_path, {}) == f"-a {abis[0]}\n"
    assert _run_script(post, "abort-upgrade", tmp_path, {}) == ""
    deferred = {"KMODLAB_DEFER_DEPMOD": "1"}
    assert _run_script(post, "configure", tmp_path, deferred) == ""
    rm = rooted(debpkg.postrm(s))
    assert _run_script(rm, "remove", tmp_path, {}) == f"-a {abis[0]}\n"
    assert _run_script(rm, "purge", tmp_path, {}) == f"-a {abis[0]}\n"
    assert _run_script(rm, "upgrade", tmp_path, {}) == ""
    assert _run_script(rm, "purge", tmp_path, deferred) == ""
    for script in (debpkg.postinst(s), debpkg.postrm(s)):
        if shutil.which("checkbashisms"):
            subprocess.run(["checkbashisms", "-"], input=script, text=True, check=True)
        subprocess.run(["dash", "-n"], input=script, text=True, check=True)


def _dpkg_deb(*args: str) -> str:
    if shutil.which("dpkg-deb") is None:
        pytest.fail("dpkg-deb not found: install it with `apt-get install dpkg`")
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True).stdout


def test_build_deb(tmp_path: Path) -> None:
    ko = tmp_path / "in.ko"
    ko.write_bytes(b"\x7fELF not really a module" * 100)
    out = tmp_path / "pool"
    deb = debpkg.build_deb(spec(), ko, out, tmp_path / "w1")
    assert deb == out / "kmodlab-symuse-modules-6.1.0-57-amd64_1.2.0_amd64.deb"
    info = _dpkg_deb("-I", str(deb))
    assert "Package: kmodlab-symuse-modules-6.1.0-57-amd64" in info
    assert "kmodlab-symexport-modules-6.1.0-57-amd64 (= 1.0.0)" in info
    assert "postinst" in info and "postrm" in info
    assert _dpkg_deb("-f", str(deb), "Version").strip() == "1.2.0"
    listing = _dpkg_deb("-c", str(deb)).splitlines()
    files = {line.split()[-1]: line.split()[:2] for line in listing}
    ko_entry = "./lib/modules/6.1.0-57-amd64/updates/kmodlab/symuse.ko"
    assert files[ko_entry] == ["-rw-r--r--", "root/root"]
    assert [f for f in files if not f.endswith("/")] == [ko_entry]
    extracted = tmp_path / "x"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(extracted)], check=True)
    assert (extracted / ko_entry).read_bytes() == ko.read_bytes()
    subprocess.run(["dpkg-deb", "-e", str(deb), str(tmp_path / "ctl")], check=True)
    assert (tmp_path / "ctl/postinst").read_text() == debpkg.postinst(spec())
    assert (tmp_path / "ctl/postrm").read_text() == debpkg.postrm(spec())
    # Reproducible: the same .ko gives the same .deb.
    first = debpkg.sha256_file(deb)
    again = debpkg.build_deb(spec(), ko, tmp_path / "pool2", tmp_path / "w2")
    assert debpkg.sha256_file(again) == first
