"""The artifact store of the container builder (on the controller)::

    artifacts/                       kmodlab.lab.paths.cache_dir() / "artifacts"
      pool/ABI/*.deb                 the packages, one per module and kernel ABI
      Packages, Packages.gz          apt index of pool/ (apt-ftparchive packages)
      index/CACHE_KEY.json           the descriptor of the package built for that key
      index/CACHE_KEY.symvers        the build's Module.symvers (for dependent modules)
      compilations.jsonl             one line per compilation: module, version, abi,
                                     cache_key, at
      .lock                          one build at a time

Nothing here ever holds a private key.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kmodlab.fleet.debpkg import sha256_file
from kmodlab.lab.errors import LabError
from kmodlab.lab.paths import cache_dir

COMPILATIONS = "compilations.jsonl"
LOCK = ".lock"


class StoreError(LabError):
    """The artifact store cannot be used; the message says why."""


def default_store() -> Path:
    """``$KMODLAB_ARTIFACT_DIR``, else ``$KMODLAB_CACHE_DIR/artifacts``, else
    ``~/.cache/kmodlab/artifacts``."""
    if env := os.environ.get("KMODLAB_ARTIFACT_DIR"):
        return Path(env)
    return cache_dir() / "artifacts"


class Store:
    """The artifact store at ``root`` (see the module docstring)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_store()
        self._append_lock = threading.Lock()

    @property
    def pool(self) -> Path:
        return self.root / "pool"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    def pool_dir(self, abi: str) -> Path:
        return self.pool / abi

    @contextlib.contextmanager
    def locked(self, progress: Callable[[str], None] = print) -> Iterator[None]:
        """Hold the store's lock (wait for another build to finish)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / LOCK).open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                progress(f"another build holds {self.root / LOCK}: waiting for it")
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    # --- cache index ------------------------------------------------------------------

    def cached(self, cache_key: str) -> dict[str, Any] | None:
        """The descriptor stored for ``cache_key`` when its .deb is still there, intact."""
        entry = self.index_dir / f"{cache_key}.json"
        try:
            descriptor = json.loads(entry.read_text())
        except (OSError, ValueError):
            return None
        deb = Path(str(descriptor.get("path", "")))
        if not deb.is_file() or sha256_file(deb) != descriptor.get("sha256"):
            return None
        if not (self.index_dir / f"{cache_key}.symvers").is_file():
            return None
        return {**descriptor, "compiled": False}

    def symvers(self, cache_key: str) -> Path:
        return self.index_dir / f"{cache_key}.symvers"

    def remember(self, descriptor: dict[str, Any], symvers: Path) -> None:
        """Record ``descriptor`` (and the build's Module.symvers) under its cache key."""
        self.index_dir.mkdir(parents=True, exist_ok=True)
        key = descriptor["cache_key"]
        partial = self.index_dir / f".{key}.symvers.partial"
        shutil.copyfile(symvers, partial)
        os.replace(partial, self.symvers(key))
        stored = {k: v for k, v in descriptor.items() if k != "compiled"}
        partial = self.index_dir / f".{key}.json.partial"
        partial.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
        os.replace(partial, self.index_dir / f"{key}.json")

    # --- compilations -----------------------------------------------------------------

    def record_compilation(self, module: str, version: str, abi: str, cache_key: str) -> None:
        """Append one line to compilations.jsonl."""
        line = {
            "module": module,
            "version": version,
            "abi": abi,
            "cache_key": cache_key,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self.root.mkdir(parents=True, exist_ok=True)
        with self._append_lock, (self.root / COMPILATIONS).open("a") as handle:
            handle.write(json.dumps(line, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    # --- apt index --------------------------------------------------------------------

    def write_apt_index(self) -> Path:
        """Write ``Packages`` and ``Packages.gz`` of the whole pool (apt-ftparchive)."""
        if shutil.which("apt-ftparchive") is None:
            raise StoreError(
                "apt-ftparchive not found: install it with `apt-get install apt-utils`"
            )
        self.pool.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["apt-ftparchive", "packages", "pool"],
            cwd=self.root,
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0:
            raise StoreError(
                f"apt-ftparchive packages failed: {proc.stderr.decode(errors='replace').strip()}"
            )
        packages = self.root / "Packages"
        partial = self.root / ".Packages.partial"
        partial.write_bytes(proc.stdout)
        os.replace(partial, packages)
        gz = subprocess.run(["gzip", "-9nc", str(packages)], capture_output=True, check=True)
        partial.write_bytes(gz.stdout)
        os.replace(partial, self.root / "Packages.gz")
        return packages


def read_compilations(store: Path | None = None) -> list[dict[str, Any]]:
    """The compilations recorded in ``store`` (default store), oldest first: one dict per
    compiled module and ABI (module, version, abi, cache_key, at)."""
    path = (Path(store) if store is not None else default_store()) / COMPILATIONS
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


__all__ = ["COMPILATIONS", "Store", "StoreError", "default_store", "read_compilations"]
