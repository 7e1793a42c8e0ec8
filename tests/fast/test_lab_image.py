"""Image recipes: hashing, cache reuse, atomic publish, errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from kmodlab.lab import image
from kmodlab.lab.errors import LabError


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KMODLAB_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_recipe_hash_is_stable_and_profile_specific() -> None:
    lab1 = image.Recipe.for_profile("lab")
    lab2 = image.Recipe.for_profile("lab")
    bare = image.Recipe.for_profile("bare")
    assert lab1.digest() == lab2.digest()
    assert lab1.digest() != bare.digest()
    assert "build-essential" in lab1.profile_packages
    assert "dkms" in lab1.profile_packages
    assert bare.profile_packages == ()
    # Both profiles share the debootstrap stage.
    assert lab1.base_digest() == bare.base_digest()


def test_recipe_hash_changes_with_any_ingredient() -> None:
    base = image.Recipe.for_profile("lab")
    changed_files = dict(base.guest_files)
    changed_files["grub.cfg"] += "# changed\n"
    variants = [
        image.Recipe(**{**base.__dict__, "cmdline": base.cmdline + " quiet"}),
        image.Recipe(**{**base.__dict__, "guest_files": changed_files}),
        image.Recipe(**{**base.__dict__, "base_packages": (*base.base_packages, "vim")}),
    ]
    assert len({base.digest(), *(v.digest() for v in variants)}) == 4


def test_guest_files_are_part_of_recipe() -> None:
    files = image.Recipe.for_profile("lab").guest_files
    assert {"grub.cfg", "grub-esp.cfg", "kmodlab-provision", "20-wired.network"} <= set(files)
    assert "@ROOT_UUID@" in files["grub.cfg"]


@pytest.mark.parametrize(
    ("profile", "release", "message"),
    [("fat", "bookworm", "unknown profile 'fat'"), ("lab", "sid", "unknown release 'sid'")],
)
def test_unknown_profile_or_release(profile: str, release: str, message: str) -> None:
    with pytest.raises(LabError, match=message):
        image.Recipe.for_profile(profile, release)


def test_cached_image_is_reused_without_root(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = image.Recipe.for_profile("lab")
    path = image.image_path(recipe)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"qcow2")
    path.with_suffix(".json").write_text(json.dumps({"kernel_release": "6.1.0-99-amd64"}))
    monkeypatch.setattr(image.os, "geteuid", lambda: 1000)
    messages: list[str] = []
    built = image.build(recipe, progress=messages.append)
    assert built.path == path
    assert built.kernel == "6.1.0-99-amd64"
    assert messages == [f"cached: {path}"]


def test_half_image_is_not_an_image(cache: Path) -> None:
    """An image without its metadata (an interrupted publish) does not count."""
    recipe = image.Recipe.for_profile("lab")
    path = image.image_path(recipe)
    path.parent.mkdir(parents=True)
    path.with_suffix(".qcow2.tmp").write_bytes(b"partial")
    assert image.find_image(recipe) is None
    path.write_bytes(b"qcow2")
    assert image.find_image(recipe) is None  # no .json yet


def test_build_needs_root(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image.os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match="needs root"):
        image.build(image.Recipe.for_profile("bare"), force=True)


def test_missing_tool_names_the_package(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image.os, "geteuid", lambda: 0)
    monkeypatch.setenv("PATH", str(cache))  # nothing on PATH
    with pytest.raises(LabError, match=r"apt-get install debootstrap"):
        image.build(image.Recipe.for_profile("bare"), force=True)


def test_stale_build_dirs_are_cleaned(cache: Path) -> None:
    stale = cache / "tmp" / "build-x-999999999"
    stale.mkdir(parents=True)
    image._clean_stale_builds()
    assert not stale.exists()


def test_sources_add_updates_and_security(tmp_path: Path) -> None:
    (tmp_path / "etc/apt").mkdir(parents=True)
    (tmp_path / "etc/apt/sources.list").write_text(
        "deb http://deb.debian.org/debian bookworm main\n"
    )
    text = image._sources(tmp_path, "bookworm")
    assert "deb http://deb.debian.org/debian bookworm main" in text
    assert "deb http://deb.debian.org/debian bookworm-updates main" in text
    assert "deb http://deb.debian.org/debian-security bookworm-security main" in text


def test_require_image_says_how_to_build(cache: Path) -> None:
    with pytest.raises(LabError, match="kmodlab image build --profile bare"):
        image.require_image("bare")


def test_a_pinned_recipe_installs_that_kernel_and_is_named_after_it() -> None:
    pinned = image.Recipe.for_profile("bare", kernel="6.1.0-50-amd64")
    # It boots the pinned kernel; the release's current one is installed too (not booted).
    assert pinned.boot_packages[0] == "linux-image-6.1.0-50-amd64"
    assert "linux-image-amd64" in pinned.boot_packages
    assert pinned.name.startswith("bookworm-bare-6.1.0-50-amd64-")
    plain = image.Recipe.for_profile("bare")
    assert plain.digest() != pinned.digest()
    # An unpinned recipe hashes as before pinning existed: cached images stay current.
    fields = dataclasses.asdict(plain)
    del fields["kernel"]
    legacy = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    assert plain.digest() == legacy


@pytest.mark.parametrize("bad", ["6.1", "linux-image-6.1.0-50-amd64", "6.1.0-50-amd64 x", "../x"])
def test_a_pinned_kernel_must_be_an_abi(bad: str) -> None:
    with pytest.raises(LabError, match="not a Debian kernel ABI"):
        image.Recipe.for_profile("bare", kernel=bad)
