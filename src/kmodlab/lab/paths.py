"""Where kmodlab keeps images (cache) and lab state: always outside the repository."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Image cache: ``$KMODLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/kmodlab``."""
    if env := os.environ.get("KMODLAB_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kmodlab"


def lab_dir(name: str | None = None) -> Path:
    """State of one lab (VMs, keys, inventory): ``$KMODLAB_LAB_DIR``, else XDG state."""
    if env := os.environ.get("KMODLAB_LAB_DIR"):
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "kmodlab" / "labs" / (name or "default")
