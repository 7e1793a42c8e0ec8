"""Module selection: inventory entries joined with manifests, errors naming the field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from kmodlab.manifest import ManifestError
from kmodlab.selection import (
    SelectionError,
    merge_layers,
    resolve,
    resolve_delivery,
    resolve_layers,
)

MODULES = Path(__file__).resolve().parents[2] / "modules"


def test_lab_params_with_overrides_and_defaults() -> None:
    (rec,) = resolve(MODULES, [{"name": "hello-5", "params": {"myint": 7}}])
    assert rec["kmod"] == "hello_5"
    assert rec["params"]["myint"] == 7
    assert rec["params"]["mystring"] == "hello-lab"  # the manifest's lab value
    assert rec["state"] == "present" and rec["persist"] is True
    assert rec["manifest"]["name"] == "hello-5"


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"name": "nope"}], "kmodlab_modules[0].name: unknown module 'nope'"),
        (
            [{"name": "hello-5", "params": {"mylong": "hello"}}],
            "parameter mylong of hello-5: 'hello' is not an integer",
        ),
        ([{"name": "hello-5", "params": {"nosuch": 1}}], "has no parameter 'nosuch'"),
        ([{"name": "memory", "state": "gone"}], "'gone' is not one of present, absent, config"),
        ([{"name": "memory"}, {"name": "memory"}], "selected twice"),
        ([{"name": "memory", "extra": 1}], "unknown key(s) extra"),
        (["memory"], "each entry is a mapping"),
    ],
)
def test_bad_entries(entries: list, message: str) -> None:
    with pytest.raises(SelectionError) as exc:
        resolve(MODULES, entries)
    assert message in str(exc.value)


def test_broken_manifest_names_file_and_field(tmp_path: Path) -> None:
    shutil.copytree(MODULES, tmp_path / "modules")
    path = tmp_path / "modules/hello-1/module.yml"
    data = yaml.safe_load(path.read_text())
    del data["license"]
    data["version"] = 3
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ManifestError) as exc:
        resolve(tmp_path / "modules", [{"name": "hello-1"}])
    text = str(exc.value)
    assert str(path) in text
    assert "field license" in text and "field version" in text


def test_dependencies_first_and_must_be_selected(tmp_path: Path) -> None:
    shutil.copytree(MODULES, tmp_path / "modules")
    path = tmp_path / "modules/hello-2/module.yml"
    data = yaml.safe_load(path.read_text())
    data["depends"] = ["startstop"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SelectionError, match=r"depends on 'startstop' \(.*select 'startstop' too"):
        resolve(tmp_path / "modules", [{"name": "hello-2"}])
    order = [
        r["name"]
        for r in resolve(tmp_path / "modules", [{"name": "hello-2"}, {"name": "startstop"}])
    ]
    assert order.index("startstop") < order.index("hello-2")


def test_the_symbol_pair_comes_exporter_first() -> None:
    records = resolve(MODULES, [{"name": "symuse"}, {"name": "symexport"}])
    assert [r["name"] for r in records] == ["symexport", "symuse"]
    by_name = {r["name"]: r for r in records}
    assert by_name["symuse"]["manifest"]["depends"] == ["symexport"]


def test_only_the_selected_manifests_and_their_dependencies_are_read(tmp_path: Path) -> None:
    shutil.copytree(MODULES, tmp_path / "modules")
    (tmp_path / "modules/hello-1/module.yml").write_text("name: [broken\n")
    (tmp_path / "modules/chardev/module.yml").write_text("depends: nothing\n")
    records = resolve(tmp_path / "modules", [{"name": "symuse"}, {"name": "symexport"}])
    assert [r["name"] for r in records] == ["symexport", "symuse"]
    with pytest.raises(ManifestError) as exc:
        resolve(tmp_path / "modules", [{"name": "hello-1"}])
    assert "hello-1/module.yml" in str(exc.value)


def test_an_unknown_dependency_names_the_manifest_that_needs_it(tmp_path: Path) -> None:
    shutil.copytree(MODULES, tmp_path / "modules")
    shutil.rmtree(tmp_path / "modules/symexport")
    with pytest.raises(ManifestError) as exc:
        resolve(tmp_path / "modules", [{"name": "symuse"}])
    assert "symuse/module.yml: field depends: unknown module 'symexport'" in str(exc.value)


def test_layers_merge_by_name_later_wins_params_key_by_key() -> None:
    merged = merge_layers(
        [
            ("kmodlab_modules", [{"name": "hello-5", "params": {"myint": 1, "mylong": 2}}]),
            ("kmodlab_group_modules", [{"name": "memory"}, {"name": "hello-5", "persist": False}]),
            ("kmodlab_host_modules", [{"name": "hello-5", "params": {"myint": 9}}]),
        ]
    )
    assert merged == [
        {"name": "hello-5", "params": {"myint": 9, "mylong": 2}, "persist": False},
        {"name": "memory"},
    ]


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ("hello-5", "kmodlab_group_modules must be a list of mappings"),
        ({"name": "hello-5"}, "kmodlab_group_modules must be a list of mappings"),
        (["hello-5"], "kmodlab_group_modules[0]: each entry is a mapping with at least a name"),
        ([{"params": {}}], "kmodlab_group_modules[0]: each entry is a mapping"),
        ([{"name": "a"}, {"name": "a"}], "kmodlab_group_modules[1].name: module 'a' is selected"),
    ],
)
def test_a_bad_layer_is_named(layer: object, message: str) -> None:
    with pytest.raises(SelectionError) as exc:
        merge_layers([("kmodlab_modules", []), ("kmodlab_group_modules", layer)])
    assert message in str(exc.value)


def test_resolved_layers_name_the_merged_variables_in_errors() -> None:
    with pytest.raises(SelectionError) as exc:
        resolve_layers(
            MODULES, [("kmodlab_modules", [{"name": "nope"}]), ("kmodlab_host_modules", [])]
        )
    assert "kmodlab_modules (merged with kmodlab_host_modules)[0].name: unknown" in str(exc.value)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            [{"name": "symuse"}],
            "kmodlab_modules: module 'symuse' depends on 'symexport' (it is built against "
            "'symexport''s exported symbols and loads after it), but select 'symexport' too",
        ),
        (
            [{"name": "symuse"}, {"name": "symexport", "state": "absent"}],
            "but it is selected with state absent: make 'symuse' absent too, or 'symexport' "
            "present",
        ),
        (
            [{"name": "symuse", "state": "config"}, {"name": "symexport", "state": "absent"}],
            "module 'symuse' depends on 'symexport'",
        ),
    ],
)
def test_a_dependent_needs_its_dependency_selected(entries: list, message: str) -> None:
    with pytest.raises(SelectionError) as exc:
        resolve(MODULES, entries)
    assert message in str(exc.value)


@pytest.mark.parametrize(
    "entries",
    [
        [{"name": "symuse", "state": "absent"}, {"name": "symexport", "state": "absent"}],
        [{"name": "symuse", "state": "absent"}, {"name": "symexport"}],
        [{"name": "symuse", "state": "absent"}],
        [{"name": "symexport"}],
    ],
)
def test_a_dependent_may_go_without_its_dependency(entries: list) -> None:
    records = resolve(MODULES, entries)
    names = [r["name"] for r in records]
    assert names == sorted(names, key=["symexport", "symuse"].index)


@pytest.mark.parametrize(
    ("value", "delivery"), [(None, "dkms"), ("", "dkms"), ("dkms", "dkms"), ("deb", "deb")]
)
def test_delivery_defaults_to_dkms(value: object, delivery: str) -> None:
    assert resolve_delivery(value) == delivery


@pytest.mark.parametrize("value", ["prebuilt", "DKMS", 1, ["deb"]])
def test_a_bad_delivery_says_which_exist(value: object) -> None:
    with pytest.raises(SelectionError) as err:
        resolve_delivery(value)
    message = str(err.value)
    assert message.startswith(f"kmodlab_delivery: {value!r} is not a delivery; use dkms")
    assert "or deb (built in the container builder" in message
