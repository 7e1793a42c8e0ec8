"""Fast tier: kmodlab.package, the DKMS package of a module (its file set), and the
kmodlab.lab.dkms_packages lookup the dkms_module role renders its packages with.

The rendered dkms.conf itself is tested in test_dkms_module_template.py.
"""

from __future__ import annotations

import importlib
import shutil
import stat
from pathlib import Path

import pytest
from ansible.errors import AnsibleLookupError
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import lookup_loader
from ansible.template import Templar, trust_as_template

from kmodlab.package import (
    KEEP_SYMVERS,
    Package,
    PackageError,
    keep_symvers_script,
    packages_for,
    read_dkms_conf,
    render,
    write,
)
from kmodlab.selection import resolve

REPO = Path(__file__).resolve().parents[2]
PAIR = [{"name": "symuse"}, {"name": "symexport"}]


def records(entries: list[dict]) -> list[dict]:
    return resolve(REPO / "modules", entries, var="test")


def record(name: str, entries: list[dict] | None = None) -> dict:
    return next(r for r in records(entries or [{"name": name}]) if r["name"] == name)


def copied(rec: dict, tmp_path: Path) -> dict:
    """``rec`` with its sources in a scratch copy of its folder, to change them."""
    folder = tmp_path / rec["name"]
    shutil.copytree(rec["source_dir"], folder)
    return {**rec, "source_dir": str(folder)}


# -- the file set ----------------------------------------------------------------------------


def test_the_package_is_the_sources_the_kbuild_dkms_conf_and_the_script():
    rec = record("startstop")
    package = render(rec)
    assert isinstance(package, Package)
    assert (package.name, package.version, package.folder) == (
        "startstop",
        rec["version"],
        f"startstop-{rec['version']}",
    )
    assert list(package.files) == [*rec["manifest"]["sources"], "Kbuild", "dkms.conf", KEEP_SYMVERS]
    folder = Path(rec["source_dir"])
    for name in [*rec["manifest"]["sources"], "Kbuild"]:
        assert package.files[name] == (folder / name).read_text(), name
    assert "module.yml" not in package.files
    assert package.executables == (KEEP_SYMVERS,)
    assert package.files[KEEP_SYMVERS] == keep_symvers_script()
    assert package.depends == ()


def test_a_package_is_frozen():
    package = render(record("hello-1"))
    with pytest.raises(AttributeError):
        package.version = "9"  # type: ignore[misc]


def test_a_header_listed_in_sources_and_the_depends_come_along():
    export = render(record("symexport"))
    assert "symexport.h" in export.files
    use = render(record("symuse", PAIR))
    assert use.depends == ("symexport",)


def test_a_makefile_beside_the_manifest_is_shipped_too(tmp_path):
    rec = copied(record("hello-1"), tmp_path)
    (Path(rec["source_dir"]) / "Makefile").write_text("obj-m := hello-1.o\n")
    (Path(rec["source_dir"]) / "Kbuild").unlink()
    package = render(rec)
    assert package.files["Makefile"] == "obj-m := hello-1.o\n"
    assert "Kbuild" not in package.files


def test_sources_are_kept_byte_for_byte(tmp_path):
    rec = copied(record("hello-1"), tmp_path)
    source = Path(rec["source_dir"]) / rec["manifest"]["sources"][0]
    source.write_bytes(b"/* crlf */\r\nint x;\r\n/* no newline at the end */")
    text = render(rec).files[source.name]
    assert text == "/* crlf */\r\nint x;\r\n/* no newline at the end */"


def test_a_module_shipping_its_own_dkms_conf_keeps_it(tmp_path):
    rec = copied(record("hello-1"), tmp_path)
    own = 'PACKAGE_NAME="hello-1"\n# my own\n'
    (Path(rec["source_dir"]) / "dkms.conf").write_text(own)
    rec["manifest"] = {**rec["manifest"], "sources": [*rec["manifest"]["sources"], "dkms.conf"]}
    package = render(rec)
    assert package.files["dkms.conf"] == own
    assert KEEP_SYMVERS not in package.files
    assert package.executables == ()


def test_a_module_without_kbuild_or_makefile_is_refused_with_what_to_add(tmp_path):
    rec = copied(record("hello-1"), tmp_path)
    (Path(rec["source_dir"]) / "Kbuild").unlink()
    with pytest.raises(PackageError) as err:
        render(rec)
    message = str(err.value)
    assert "module hello-1" in message
    assert "no Kbuild or Makefile" in message
    assert 'a Kbuild with "obj-m := hello-1.o"' in message


def test_a_missing_source_names_the_module_and_the_file(tmp_path):
    rec = copied(record("hello-1"), tmp_path)
    (Path(rec["source_dir"]) / "hello-1.c").unlink()
    with pytest.raises(PackageError, match=r"module hello-1: source hello-1\.c does not exist"):
        render(rec)


@pytest.mark.parametrize(
    "where",
    ["/lib/modules", "updates", "/updatesx", "/updates/d kms", '/extra/"x', "/extra/$x", ""],
)
def test_a_bad_dest_location_is_refused(where):
    with pytest.raises(PackageError, match="must start with /kernel, /updates or /extra"):
        render(record("hello-1"), dest_location=where)
    with pytest.raises(PackageError, match="must start with /kernel, /updates or /extra"):
        packages_for([], dest_location=where)


@pytest.mark.parametrize(
    "where", ["/kernel/drivers/misc", "/updates", "/updates/dkms", "/extra", "/extra/"]
)
def test_dest_locations_dkms_accepts(where):
    assert (
        f'DEST_MODULE_LOCATION[0]="{where}"'
        in render(record("hello-1"), dest_location=where).files["dkms.conf"]
    )


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"name": "Bad Name"}, "is not a module name"),
        ({"version": "1.0 ; rm"}, "is not a DKMS version"),
        ({"source_dir": "/nonexistent/kmodlab"}, "is not a folder"),
    ],
)
def test_broken_records_are_refused(change, match):
    with pytest.raises(PackageError, match=match):
        render({**record("hello-1"), **change})


def test_unsafe_source_paths_are_refused():
    rec = record("hello-1")
    rec["manifest"] = {**rec["manifest"], "sources": ["../hello-2/hello-2.c"]}
    with pytest.raises(PackageError, match="not a path inside the package folder"):
        render(rec)


# -- write -----------------------------------------------------------------------------------


def test_write_makes_the_tree_dkms_wants(tmp_path):
    package = render(record("symuse", PAIR))
    folder = write(package, tmp_path / "src")
    assert folder == tmp_path / "src" / f"symuse-{package.version}"
    assert sorted(p.name for p in folder.iterdir()) == sorted(package.files)
    for name, text in package.files.items():
        path = folder / name
        assert path.read_text() == text
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if name == KEEP_SYMVERS else 0o644), (name, oct(mode))


def test_write_overwrites_the_package_files_and_fixes_their_modes(tmp_path):
    package = render(record("hello-1"))
    folder = tmp_path / package.folder
    folder.mkdir()
    (folder / "dkms.conf").write_text("stale")
    (folder / "dkms.conf").chmod(0o600)
    (folder / KEEP_SYMVERS).write_text("stale")
    (folder / KEEP_SYMVERS).chmod(0o600)
    write(package, tmp_path)
    assert (folder / "dkms.conf").read_text() == package.files["dkms.conf"]
    assert stat.S_IMODE((folder / "dkms.conf").stat().st_mode) == 0o644
    assert stat.S_IMODE((folder / KEEP_SYMVERS).stat().st_mode) == 0o755


def test_write_makes_sub_folders_and_refuses_paths_outside(tmp_path):
    package = Package("m", "1", {"src/a.c": "a\n", "Kbuild": "obj-m := m.o\n"})
    assert (write(package, tmp_path) / "src/a.c").read_text() == "a\n"
    with pytest.raises(PackageError, match="not a path inside"):
        write(Package("m", "1", {"../x": "x"}), tmp_path)
    with pytest.raises(PackageError, match="executables not among its files"):
        write(Package("m", "1", {"a": "a"}, ("b",)), tmp_path)


# -- packages_for ----------------------------------------------------------------------------


def test_packages_for_gives_the_dkms_modules_packages_option():
    recs = records([*PAIR, {"name": "hello-1", "state": "absent"}, {"name": "memory"}])
    recs[-1]["state"] = "config"
    out = packages_for(recs, dest_location="/extra", autoinstall=False)
    assert [p["name"] for p in out] == [r["name"] for r in recs]  # order kept
    by_name = {p["name"]: p for p in out}
    assert by_name["hello-1"] == {"name": "hello-1", "version": "1.0.0", "state": "absent"}
    use = by_name["symuse"]
    assert set(use) == {"name", "version", "state", "files", "executables", "depends"}
    assert use["state"] == "present"
    assert use["depends"] == ["symexport"]
    assert use["executables"] == [KEEP_SYMVERS]
    assert 'DEST_MODULE_LOCATION[0]="/extra"' in use["files"]["dkms.conf"]
    assert 'AUTOINSTALL="no"' in use["files"]["dkms.conf"]
    assert by_name["memory"]["state"] == "present"  # config builds like present
    assert (
        by_name["symexport"]
        == render(
            next(r for r in recs if r["name"] == "symexport"),
            dest_location="/extra",
            autoinstall=False,
        ).spec()
    )


def test_packages_for_does_not_read_dependents_nor_an_absent_modules_sources():
    recs = records([*PAIR])
    for rec in recs:
        rec.pop("dependents", None)
    assert all(p["executables"] == [KEEP_SYMVERS] for p in packages_for(recs))
    gone = {**record("hello-1"), "state": "absent", "source_dir": "/nonexistent"}
    assert packages_for([gone]) == [{"name": "hello-1", "version": "1.0.0", "state": "absent"}]


def test_packages_for_reports_every_broken_module_at_once(tmp_path):
    one = copied(record("hello-1"), tmp_path)
    two = copied(record("hello-2"), tmp_path)
    for rec in (one, two):
        (Path(rec["source_dir"]) / "Kbuild").unlink()
    with pytest.raises(PackageError) as err:
        packages_for([one, record("memory"), two, {**record("hello-3"), "state": "gone"}])
    lines = str(err.value).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("module hello-1: no Kbuild or Makefile")
    assert lines[1].startswith("module hello-2: no Kbuild or Makefile")
    assert "state 'gone' is not one of present, config, absent" in lines[2]


# -- the lookup ------------------------------------------------------------------------------


def lookup_plugin():
    loader = DataLoader()
    plugin = lookup_loader.get("kmodlab.lab.dkms_packages", loader=loader, templar=Templar(loader))
    assert plugin is not None
    return plugin


def test_the_lookup_as_the_role_calls_it_in_a_template():
    recs = records([*PAIR, {"name": "hello-1", "state": "absent"}])
    templar = Templar(loader=DataLoader(), variables={"recs": recs, "where": "/extra"})
    got = templar.template(
        trust_as_template(
            "{{ lookup('kmodlab.lab.dkms_packages', recs, dest_location=where, "
            "autoinstall=false, wantlist=True) }}"
        )
    )
    assert got == packages_for(recs, dest_location="/extra", autoinstall=False)
    one = templar.template(trust_as_template("{{ query('kmodlab.lab.dkms_packages', recs[1:2]) }}"))
    assert one == packages_for(recs[1:2])  # a list of one, through query


def test_the_lookup_returns_packages_for_its_records():
    recs = records([*PAIR, {"name": "hello-1", "state": "absent"}])
    got = lookup_plugin().run([recs], {}, dest_location="/extra", autoinstall=False)
    assert got == packages_for(recs, dest_location="/extra", autoinstall=False)


def test_the_lookup_defaults_are_the_roles():
    recs = records([{"name": "hello-5"}])
    (got,) = lookup_plugin().run([recs], {})
    assert got == packages_for(recs)[0]
    assert 'DEST_MODULE_LOCATION[0]="/updates/dkms"' in got["files"]["dkms.conf"]
    assert 'AUTOINSTALL="yes"' in got["files"]["dkms.conf"]


def test_the_lookup_fails_with_the_package_error(tmp_path):
    rec = copied(record("hello-1"), tmp_path)
    (Path(rec["source_dir"]) / "Kbuild").unlink()
    with pytest.raises(AnsibleLookupError, match=r'a Kbuild with "obj-m := hello-1\.o"'):
        lookup_plugin().run([[rec]], {})
    with pytest.raises(AnsibleLookupError, match="must start with /kernel"):
        lookup_plugin().run([[record("hello-1")]], {}, dest_location="/lib")


def test_the_lookup_says_when_kmodlab_is_not_importable(monkeypatch):
    plugin = importlib.import_module("ansible_collections.kmodlab.lab.plugins.lookup.dkms_packages")
    monkeypatch.setattr(plugin, "_IMPORT_ERROR", ImportError("No module named 'kmodlab'"))
    with pytest.raises(AnsibleLookupError, match="kmodlab Python package is not importable"):
        plugin.LookupModule().run([[]], {})


def test_the_lookup_documents_its_options():
    import yaml

    plugin = importlib.import_module("ansible_collections.kmodlab.lab.plugins.lookup.dkms_packages")
    doc = yaml.safe_load(plugin.DOCUMENTATION)
    assert doc["name"] == "dkms_packages"
    assert set(doc["options"]) == {"_terms", "dest_location", "autoinstall"}
    assert doc["options"]["dest_location"]["default"] == "/updates/dkms"
    assert doc["options"]["autoinstall"]["default"] is True
    assert yaml.safe_load(plugin.EXAMPLES)
    assert "_list" in yaml.safe_load(plugin.RETURN)


def test_read_dkms_conf_takes_assignments_as_the_shell_unquotes_them():
    text = (
        'PACKAGE_NAME="vendor-widgets"\n'
        "PACKAGE_VERSION=2.3.1  # the release\n"
        "BUILT_MODULE_NAME[1]='beta'\n"
        'MAKE[0]="make -C ${kernel_source_dir} M=${dkms_tree}/x KVER=$kernelver"\n'
        "CLEAN=make clean\n"
        "echo not an assignment\n"
    )
    assert read_dkms_conf(text) == {
        "PACKAGE_NAME": "vendor-widgets",
        "PACKAGE_VERSION": "2.3.1",
        "BUILT_MODULE_NAME[1]": "beta",
        "MAKE[0]": "make -C ${kernel_source_dir} M=${dkms_tree}/x KVER=$kernelver",
    }
