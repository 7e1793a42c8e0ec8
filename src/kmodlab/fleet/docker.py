"""Docker for the container builder: the daemon (started here when it is not running),
``docker`` calls, and the builder images.

Containers never use Docker's bridge or any private-range address: the daemon is started
with ``--bridge=none`` and no iptables rules, every container runs with ``--network
none`` except the apt steps of an image build (``--network host``). No registry is used:
the base image is ``docker import`` of the guest images' debootstrap stage
(:func:`kmodlab.lab.image.base_stage_tar`); a builder image per kernel ABI adds that ABI's
headers package (which pulls the compiler the kernel was built with, and linux-kbuild
with sign-file) and ``make``, committed under a tag named after its recipe.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kmodlab.lab import image as image_mod
from kmodlab.lab.errors import LabError

Progress = Callable[[str], None]

#: Bump when the builder image recipe changes (a new tag; the old images are unused).
BUILDER_IMAGE_VERSION = 1
BUILDER_REPO = "kmodlab-builder"
BASE_REPO = "kmodlab-base"
#: What a builder image adds to the base, besides linux-headers-ABI.
BUILDER_PACKAGES = ("make",)
DAEMON_WAIT = 60.0
NO_HEADERS_EXIT = 42


class DockerError(LabError):
    """Docker is missing, not running, or a docker command failed; the message says why."""


class MissingABIError(DockerError):
    """apt of the release has no headers package for a kernel ABI."""


def state_dir() -> Path:
    """The dockerd state folder kmodlab keeps its pid file and log in:
    ``$XDG_STATE_HOME/kmodlab/dockerd`` (``~/.local/state/kmodlab/dockerd``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "kmodlab" / "dockerd"


def run(
    args: Sequence[str], *, timeout: float | None = None, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """``docker ARGS``, output captured as text; ``check``: raise DockerError on failure."""
    try:
        proc = subprocess.run(
            ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise DockerError("docker not found: install it with `apt-get install docker.io`") from None
    except subprocess.TimeoutExpired:
        raise DockerError(f"`docker {' '.join(args[:2])} ...` took over {timeout} s") from None
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise DockerError(
            f"`docker {' '.join(args[:2])} ...` failed (exit {proc.returncode}):\n{tail}"
        )
    return proc


def daemon_answers() -> bool:
    """Whether ``docker info`` answers (the CLI reaches a daemon)."""
    try:
        return run(["info", "--format", "{{.ServerVersion}}"], timeout=20).returncode == 0
    except DockerError:
        if shutil.which("docker") is None:
            raise
        return False


_daemon_lock = threading.Lock()


def ensure_daemon(progress: Progress = print) -> None:
    """Use the running Docker daemon, or start one (root): ``dockerd --bridge=none
    --iptables=false --ip6tables=false``, detached in its own session, pid file and log
    in :func:`state_dir`; wait until ``docker info`` answers."""
    with _daemon_lock:
        if shutil.which("docker") is None:
            raise DockerError("docker not found: install it with `apt-get install docker.io`")
        if daemon_answers():
            return
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise DockerError(
                "the Docker daemon is not running and dockerd is not installed: install it "
                "with `apt-get install docker.io`"
            )
        if os.geteuid() != 0:
            raise DockerError(
                "the Docker daemon is not running and starting it needs root: run as root, "
                "or start dockerd with --bridge=none --iptables=false --ip6tables=false"
            )
        folder = state_dir()
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / "dockerd.log"
        argv = [
            dockerd,
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            f"--pidfile={folder / 'dockerd.pid'}",
        ]
        progress(f"starting dockerd (log {log})")
        with log.open("ab") as out, open(os.devnull, "rb") as devnull:
            proc = subprocess.Popen(
                argv, stdin=devnull, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + DAEMON_WAIT
        while time.monotonic() < deadline:
            if daemon_answers():
                return
            if proc.poll() is not None:
                break
            time.sleep(0.5)
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
        raise DockerError(f"dockerd did not come up (see {log}):\n{tail}")


def image_id(tag: str) -> str | None:
    """The id of image ``tag``, or None when there is none."""
    proc = run(["image", "inspect", "--format", "{{.Id}}", tag])
    return proc.stdout.strip() if proc.returncode == 0 else None


@dataclass(frozen=True)
class BuilderImage:
    """A builder image of one kernel ABI: its tag and id (id changes with its content)."""

    abi: str
    tag: str
    image_id: str
    built: bool  # made by this call (False: reused)


_image_locks: dict[str, threading.Lock] = {}
_image_locks_guard = threading.Lock()


def _lock_for(tag: str) -> threading.Lock:
    with _image_locks_guard:
        return _image_locks.setdefault(tag, threading.Lock())


def base_image(release: str = "bookworm", progress: Progress = print) -> str:
    """The tag of the release's base image (``docker import`` of the debootstrap stage)."""
    recipe = image_mod.Recipe.for_profile("bare", release)
    tag = f"{BASE_REPO}:{release}-{recipe.base_digest()}"
    with _lock_for(tag):
        if image_id(tag) is None:
            tar = image_mod.base_stage_tar(release, progress)
            progress(f"docker import {tar.name} as {tag}")
            run(["import", str(tar), tag], check=True, timeout=1800)
    return tag


def builder_recipe(release: str, abi: str, base_tag: str) -> str:
    """The hash naming a builder image: base, release, packages, image recipe version."""
    blob = json.dumps(
        [
            base_tag,
            release,
            abi,
            BUILDER_PACKAGES,
            image_mod.apt_sources(release),
            BUILDER_IMAGE_VERSION,
        ]
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def builder_tag(release: str, abi: str, base_tag: str) -> str:
    return f"{BUILDER_REPO}:{release}-{abi}-{builder_recipe(release, abi, base_tag)}"


def _install_script(release: str, abi: str, sources: str) -> str:
    headers = f"linux-headers-{abi}"
    apt = "apt-get -y -q -o Dpkg::Use-Pty=0 --no-install-recommends"
    suites = f"{release}, {release}-updates, {release}-security"
    return (
        "set -eu\n"
        "export DEBIAN_FRONTEND=noninteractive LC_ALL=C\n"
        f"cat > /etc/apt/sources.list <<'KMODLAB_EOF'\n{sources}KMODLAB_EOF\n"
        "apt-get -q update\n"
        f"if ! apt-cache show --no-all-versions {headers} >/dev/null 2>&1; then\n"
        f'  echo "apt has no {headers} in {suites}" >&2\n'
        f"  exit {NO_HEADERS_EXIT}\n"
        "fi\n"
        f"{apt} install {headers} {' '.join(BUILDER_PACKAGES)}\n"
        f"test -x /lib/modules/{abi}/build/scripts/sign-file\n"
        "apt-get clean\n"
        "rm -rf /var/lib/apt/lists/*\n"
    )


def builder_image(abi: str, release: str = "bookworm", progress: Progress = print) -> BuilderImage:
    """The builder image of kernel ABI ``abi``: reused when its tag exists, else made from
    the base image (apt over the host network), committed, and tagged. Raises
    MissingABIError when apt has no ``linux-headers-ABI`` in the release's suites."""
    base = base_image(release, progress)
    tag = builder_tag(release, abi, base)
    with _lock_for(tag):
        existing = image_id(tag)
        if existing is not None:
            return BuilderImage(abi, tag, existing, built=False)
        progress(f"builder image {tag}: apt-get install linux-headers-{abi} ...")
        current = run(
            ["run", "--rm", "--network", "none", base, "cat", "/etc/apt/sources.list"]
        ).stdout
        sources = image_mod.apt_sources(release, current)
        name = f"kmodlab-image-{os.getpid()}-{abi}"
        run(["rm", "-f", name])
        proc = run(
            [
                "run",
                "--name",
                name,
                "--network",
                "host",
                base,
                "/bin/sh",
                "-c",
                _install_script(release, abi, sources),
            ],
            timeout=3600,
        )
        try:
            if proc.returncode == NO_HEADERS_EXIT:
                raise MissingABIError(
                    f"kernel ABI {abi}: apt has no linux-headers-{abi} in {release}, "
                    f"{release}-updates or {release}-security (Debian main): is the ABI "
                    f"spelled right (e.g. 6.1.0-57-amd64)? `apt-cache search "
                    f"^linux-headers-` on a {release} host lists them"
                )
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
                raise DockerError(
                    f"builder image for kernel ABI {abi} failed (exit {proc.returncode}):\n{tail}"
                )
            run(
                ["commit", "--change", "WORKDIR /w", "--change", 'CMD ["/bin/sh"]', name, tag],
                check=True,
                timeout=600,
            )
        finally:
            run(["rm", "-f", name])
        made = image_id(tag)
        if made is None:
            raise DockerError(f"docker commit left no image {tag}")
        return BuilderImage(abi, tag, made, built=True)
