"""Fast tier: docs/catalog.md, the lab inventory and modules/ agree: every module has a
row and is selected, every row's module exists."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CATALOG = REPO / "docs/catalog.md"
LINK = re.compile(r"\[([a-z0-9_-]+)\]\(\.\./modules/([a-z0-9_-]+)\)")


def test_every_module_is_in_the_catalog_and_every_row_exists() -> None:
    text = CATALOG.read_text()
    links = LINK.findall(text)
    assert links, "no module links in docs/catalog.md"
    for label, folder in links:
        assert label == folder, f"[{label}] links to modules/{folder}"
        assert (REPO / "modules" / folder / "module.yml").is_file(), f"no modules/{folder}"
    modules = {p.parent.name for p in (REPO / "modules").glob("*/module.yml")}
    missing = sorted(modules - {folder for _label, folder in links})
    assert not missing, f"modules not in docs/catalog.md: {missing}"


def test_the_lab_inventory_selects_every_module_once_prebuilt() -> None:
    data = yaml.safe_load((REPO / "inventory/lab/group_vars/all.yml").read_text())
    names = [entry["name"] for entry in data["kmodlab_modules"]]
    modules = sorted(p.parent.name for p in (REPO / "modules").glob("*/module.yml"))
    assert sorted(names) == modules
    assert len(names) == len(set(names))
    assert data["kmodlab_delivery"] == "deb"
