"""Fast tier: the repository is the ``kmodlab.lab`` collection, and ``ansible-test sanity``
passes on it.

The layout: galaxy.yml names ``kmodlab.lab``; every role is a directory under ``roles/``
with a name Ansible accepts; every plugin is a Python file directly under
``plugins/<plugin type>/`` (``plugins/module_utils/`` may have packages), named so that
``kmodlab.lab.<name>`` can address it, and importable from the collection path
scripts/install-deps links (``ansible_collections.kmodlab.lab``). No plugin directories
elsewhere (a role's ``library/``, ``filter_plugins/``, ...): those would not have a FQCN.

Sanity: ``scripts/sanity`` (ansible-test sanity on a copy of the repository, see the
script); its failure lists every sanity error, grouped by file.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from ansible.utils.collection_loader import AnsibleCollectionRef

REPO = Path(__file__).resolve().parents[2]
NAMESPACE, NAME = "kmodlab", "lab"

PLUGIN_TYPES = sorted(AnsibleCollectionRef.VALID_REF_TYPES - {"role", "playbook"})
# Directories that make Ansible load plugins from outside a collection's plugins/.
STRAY_PLUGIN_DIRS = {"library", "module_utils"} | {f"{t}_plugins" for t in PLUGIN_TYPES}
# Documentation next to plugins (a filter or test file may hold several plugins, each
# documented in its own <name>.yml).
DOC_SUFFIXES = {".yml", ".yaml"}
# Non-plugin files allowed directly in plugins/.
PLUGINS_ROOT_FILES = {"ruff.toml"}
ROLE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def repo_files(*paths: str) -> list[str]:
    """Tracked files and untracked files that are not ignored (what scripts/sanity copies)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard", "--", *paths],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted(f for f in out.split("\0") if f and (REPO / f).exists())


def test_galaxy_names_the_collection() -> None:
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    assert (galaxy["namespace"], galaxy["name"]) == (NAMESPACE, NAME)
    assert AnsibleCollectionRef.is_valid_collection_name(f"{NAMESPACE}.{NAME}")
    for key in ("version", "readme", "authors", "description", "license"):
        assert galaxy.get(key), f"galaxy.yml: {key} is required"
    assert (REPO / galaxy["readme"]).is_file(), f"galaxy.yml: readme {galaxy['readme']} missing"
    runtime = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())
    assert runtime.get("requires_ansible"), "meta/runtime.yml: requires_ansible is required"


def test_roles_are_collection_roles() -> None:
    entries = sorted(p for p in (REPO / "roles").iterdir() if not p.name.startswith("."))
    assert entries, "no roles under roles/"
    problems = []
    for entry in entries:
        rel = entry.relative_to(REPO)
        if not entry.is_dir():
            problems.append(f"{rel}: not a role directory")
            continue
        if not ROLE_NAME.match(entry.name):
            problems.append(f"{rel}: a collection role name is [a-z][a-z0-9_]*")
        if not (entry / "tasks" / "main.yml").is_file():
            problems.append(f"{rel}: no tasks/main.yml")
    assert not problems, "\n".join(problems)


def test_plugins_are_inside_the_collection_layout() -> None:
    files = repo_files("plugins")
    assert files, "no plugins under plugins/"
    problems = []
    modules = []
    for rel in files:
        parts = Path(rel).parts
        if len(parts) == 2:
            if parts[1] not in PLUGINS_ROOT_FILES:
                problems.append(f"{rel}: not inside plugins/<plugin type>/")
            continue
        kind, path = parts[1], Path(*parts[2:])
        if kind not in PLUGIN_TYPES:
            problems.append(f"{rel}: {kind!r} is no plugin type ({', '.join(PLUGIN_TYPES)})")
            continue
        if len(path.parts) > 1 and kind != "module_utils":
            problems.append(f"{rel}: {kind} plugins go directly under plugins/{kind}/")
            continue
        if path.suffix in DOC_SUFFIXES and kind in ("filter", "test", "modules"):
            continue
        if path.suffix != ".py":
            problems.append(f"{rel}: not a Python file")
            continue
        if not all(p.isidentifier() for p in (*path.parent.parts, path.stem)):
            problems.append(f"{rel}: not addressable as {NAMESPACE}.{NAME}.{path.stem}")
            continue
        modules.append(".".join(("plugins", kind, *path.parent.parts, path.stem)))
    assert not problems, "\n".join(problems)

    # The collection path scripts/install-deps links must reach these very files.
    unresolved = []
    for module in modules:
        fullname = f"ansible_collections.{NAMESPACE}.{NAME}.{module}"
        spec = importlib.util.find_spec(fullname)
        origin = Path(spec.origin).resolve() if spec and spec.origin else None
        expected = (REPO / (module.replace(".", "/") + ".py")).resolve()
        if origin != expected:
            unresolved.append(f"{fullname}: {origin or 'not found'} (expected {expected})")
    assert not unresolved, "run scripts/install-deps to link the collection:\n" + "\n".join(
        unresolved
    )


def test_no_plugin_directories_outside_plugins() -> None:
    stray = [
        rel
        for rel in repo_files()
        if not rel.startswith("plugins/") and STRAY_PLUGIN_DIRS & set(Path(rel).parts[:-1])
    ]
    assert not stray, "plugins outside plugins/ have no FQCN:\n" + "\n".join(stray)


def test_ansible_cfg_sets_no_plugin_paths() -> None:
    """Roles and plugins resolve through the collection only, not through ansible.cfg."""
    keys = {"library", "module_utils", "roles_path"} | {f"{t}_plugins" for t in PLUGIN_TYPES}
    cfg = (REPO / "ansible.cfg").read_text()
    found = [
        line.strip()
        for line in cfg.splitlines()
        if line.split("=", 1)[0].strip() in keys and "=" in line
    ]
    assert not found, f"ansible.cfg sets plugin paths: {found}"


SANITY_ERROR = re.compile(r"^ERROR: (?P<path>[^\s:]+):(?P<line>\d+):(?P<col>\d+): (?P<msg>.*)$")


def sanity_report(output: str) -> str:
    """The sanity errors grouped by file, then the tests that failed."""
    by_file: dict[str, list[str]] = defaultdict(list)
    other = []
    for line in output.splitlines():
        match = SANITY_ERROR.match(line)
        if match:
            by_file[match["path"]].append(f"  {match['line']}:{match['col']}: {match['msg']}")
        elif line.startswith(("ERROR:", "FATAL:", "scripts/sanity: ERROR")) and (
            "issue(s) which need" not in line
        ):
            other.append(line)
    lines = []
    for path in sorted(by_file):
        lines.append(f"{path} ({len(by_file[path])}):")
        lines.extend(by_file[path])
    failed_at = output.rfind("FATAL: The ")
    if failed_at >= 0:
        # the failed tests, then the script's own errors and time
        lines.append(output[failed_at:].strip())
    else:
        lines.extend(other)
    return "\n".join(lines)


def test_ansible_test_sanity_passes() -> None:
    """scripts/sanity (ansible-test sanity, Python 3.11) finds nothing.

    The first run builds ansible-test's virtualenvs from PyPI (about a minute); later
    runs reuse them.
    """
    start = time.monotonic()
    proc = subprocess.run(
        [str(REPO / "scripts" / "sanity")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
        timeout=1200,
    )
    took = time.monotonic() - start
    if proc.returncode != 0:
        report = sanity_report(proc.stdout) or proc.stdout[-6000:]
        pytest.fail(
            f"scripts/sanity failed (exit {proc.returncode}, {took:.0f} s):\n{report}",
            pytrace=False,
        )
