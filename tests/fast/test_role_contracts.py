"""Fast tier: every role under ``roles/`` keeps its contract (style guide, "argument_specs and
README").

For each role: ``defaults/main.yml`` is the list of public inputs, ``meta/argument_specs.yml``
describes exactly those (same names, defaults identical, a type and a description each,
``elements`` for lists, ``choices`` where given are lists), the names carry the role's prefix,
and the role's README mentions every one. Roles are found on disk, so a new role is checked
as soon as it exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES_DIR = REPO / "roles"
ROLES = sorted(p.name for p in ROLES_DIR.iterdir() if p.is_dir() and not p.name.startswith("."))

_MISSING = object()


def _load(path: Path):
    return yaml.safe_load(path.read_text()) if path.is_file() else _MISSING


def _defaults(role: str) -> dict:
    data = _load(ROLES_DIR / role / "defaults" / "main.yml")
    assert data is not _MISSING, f"roles/{role}/defaults/main.yml is missing"
    return data or {}


def _options(role: str) -> dict:
    data = _load(ROLES_DIR / role / "meta" / "argument_specs.yml")
    assert data is not _MISSING, f"roles/{role}/meta/argument_specs.yml is missing"
    try:
        return data["argument_specs"]["main"].get("options") or {}
    except (KeyError, TypeError):
        pytest.fail(f"roles/{role}/meta/argument_specs.yml has no argument_specs.main entry point")


def test_the_pipeline_roles_are_found():
    """The roles below are checked only if found: an empty list would check nothing."""
    assert {"kernel_headers", "dkms_module", "kmod_load", "kmod_verify"} <= set(ROLES), ROLES


@pytest.mark.parametrize("role", ROLES)
def test_defaults_and_argument_specs_name_the_same_options(role):
    defaults = set(_defaults(role))
    options = set(_options(role))
    assert not options - defaults, (
        f"roles/{role}: in meta/argument_specs.yml but not in defaults/main.yml: "
        f"{sorted(options - defaults)}"
    )
    assert not defaults - options, (
        f"roles/{role}: in defaults/main.yml but not in meta/argument_specs.yml: "
        f"{sorted(defaults - options)}"
    )


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_defaults_equal_the_defaults_file(role):
    defaults = _defaults(role)
    wrong = {}
    for name, spec in _options(role).items():
        if name not in defaults:
            continue
        if "default" not in spec:
            wrong[name] = ("no default in argument_specs", defaults[name])
        elif spec["default"] != defaults[name]:
            wrong[name] = (spec["default"], defaults[name])
    assert not wrong, f"roles/{role}: argument_specs default != defaults/main.yml value: {wrong}"


@pytest.mark.parametrize("role", ROLES)
def test_every_option_is_described_and_typed(role):
    problems = []
    for name, spec in _options(role).items():
        if not spec.get("description"):
            problems.append(f"{name}: no description")
        if not spec.get("type"):
            problems.append(f"{name}: no type")
        if spec.get("type") == "list" and not spec.get("elements"):
            problems.append(f"{name}: a list without elements")
        if "choices" in spec and not isinstance(spec["choices"], list):
            problems.append(f"{name}: choices is not a list")
    assert not problems, f"roles/{role}/meta/argument_specs.yml: {problems}"


@pytest.mark.parametrize("role", ROLES)
def test_public_names_carry_the_role_prefix(role):
    bad = [n for n in _defaults(role) if not n.startswith(f"{role}_")]
    assert not bad, f"roles/{role}: public variables must start with {role}_: {bad}"


@pytest.mark.parametrize("role", ROLES)
def test_readme_mentions_every_option(role):
    readme = ROLES_DIR / role / "README.md"
    assert readme.is_file(), f"roles/{role}/README.md is missing"
    text = readme.read_text()
    missing = [name for name in _options(role) if name not in text]
    assert not missing, f"roles/{role}/README.md does not mention {missing}"


@pytest.mark.parametrize("role", ROLES)
def test_meta_main_declares_no_dependencies(role):
    meta = _load(ROLES_DIR / role / "meta" / "main.yml")
    assert meta is not _MISSING, f"roles/{role}/meta/main.yml is missing"
    assert meta.get("dependencies") == [], f"roles/{role}/meta/main.yml: dependencies must be []"
    assert meta.get("galaxy_info", {}).get("platforms"), f"roles/{role}: galaxy_info.platforms"


SELECTION_ROLES = ("dkms_module", "kmod_load", "kmod_verify")


@pytest.mark.parametrize("role", SELECTION_ROLES)
def test_a_stage_role_takes_the_resolved_selection_not_layers(role):
    """The layers (kmodlab_modules and its group and host layers) exist once, at the play
    level; a stage role takes the records kmodlab.lab.selection resolved from them."""
    defaults = _defaults(role)
    assert f"{role}_selection" in defaults and defaults[f"{role}_selection"] is None
    layered = [n for n in defaults if n.endswith(("_modules", "_manifest_dirs"))]
    assert not layered, f"roles/{role}: selection layers belong to the play: {layered}"
    preflight = (ROLES_DIR / role / "tasks" / "preflight.yml").read_text()
    assert "kmodlab.lab.selection:" in preflight
    text = "".join(p.read_text() for p in (ROLES_DIR / role).rglob("*.yml"))
    assert "lists_mergeby" not in text, f"roles/{role} merges layers itself"


@pytest.mark.parametrize("role", ROLES)
def test_program_logic_lives_in_plugins_not_in_jinja(role):
    """No accumulator loops (namespace) and no file reading inside a template: such
    logic is a filter or action plugin with unit tests."""
    for path in (ROLES_DIR / role).rglob("*.yml"):
        text = path.read_text()
        assert "namespace(" not in text, f"{path.relative_to(REPO)}: a Jinja accumulator loop"
        assert "{%- for" not in text and "{% for" not in text, f"{path.relative_to(REPO)}: a loop"


# What a private key or a MOK password goes by in the roles (the password file's path is
# not secret: messages show it).
SECRET = re.compile(r"private_key|mok_password(?!_file)|signing\.key|__module_signing_key_file")


def _tasks(node):
    """Every task mapping of a task file, blocks included."""
    for task in node or []:
        if not isinstance(task, dict):
            continue
        yield task
        for key in ("block", "rescue", "always"):
            yield from _tasks(task.get(key))


def test_every_task_that_handles_key_material_has_no_log():
    """A private key or a MOK password passing through a task (its arguments, or what it
    registers) must never show in output: such a task needs no_log: true. Checked on
    every role's task files, so a new task cannot forget it."""
    offenders, seen = [], 0
    for path in sorted(ROLES_DIR.glob("*/tasks/*.yml")):
        for task in _tasks(yaml.safe_load(path.read_text())):
            body = {k: v for k, v in task.items() if k not in ("name", "when", "tags", "block")}
            if "block" in task:
                continue
            action = task.get("kmodlab.lab.signing_key")
            if isinstance(action, dict) and not action.get("mok_password"):
                # returns public facts and the key's path only (test_signing_key_action.py)
                continue
            text = yaml.safe_dump(body)
            if SECRET.search(text):
                seen += 1
                if task.get("no_log") is not True:
                    offenders.append(f"{path.relative_to(REPO)}: {task.get('name')}")
    assert seen >= 4, "the key and password tasks were not found: update SECRET"
    assert not offenders, f"tasks with key material and without no_log: true: {offenders}"
