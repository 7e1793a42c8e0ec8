"""Fixture manifests and the selection shared by the kmod_verify fast tests."""

from __future__ import annotations

from pathlib import Path

MODULES = Path(__file__).parent / "fixtures" / "kmod" / "modules"
SELECTION = [
    {"name": "hello-5"},
    {"name": "gadget"},
    {"name": "memory"},
    {"name": "user", "state": "absent"},
    {"name": "base", "state": "config"},
]
