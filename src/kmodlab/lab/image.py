"""Debian guest images: debootstrap, a signed UEFI boot chain, qcow2, cached by recipe hash.

The disk is assembled without mounting anything: the root filesystem is made with
``mkfs.ext4 -d`` from the chroot, the EFI system partition with mtools, and both are
written into a GPT disk made by sgdisk. A build happens in a private temporary folder and
its result is renamed into place only when complete, so an interrupted build never
leaves a half image under the final name and the previous good image stays in use.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from kmodlab.lab.errors import LabError, require_tools
from kmodlab.lab.paths import cache_dir

RECIPE_VERSION = 4
RELEASES = ("bookworm",)
PROFILES = ("lab", "bare")
GUEST_USER = "kmodlab"
SECTOR = 512
ESP_MIB = 64
ROOT_GIB = 8
# Kernel command line: serial console (logged per VM), modest log level.
CMDLINE = "console=ttyS0,115200n8 loglevel=4 systemd.show_status=auto"

# In every image: what a small Debian server has, plus what kmodlab's roles need to
# reach and manage it (python3, sudo, kmod, mokutil).
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "openssh-server",
    "python3",
    "python3-apt",
    "sudo",
    "kmod",
    "mokutil",
    "ca-certificates",
    "initramfs-tools",
    "zstd",
    "iproute2",
    "less",
)
# A Debian kernel ABI as in package names: linux-image-6.1.0-50-amd64.
KERNEL_ABI_RE = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+-[0-9]+-[a-z0-9]+$")
# Installed from all suites (security has the current kernel ABI), without recommends.
BOOT_PACKAGES = ("linux-image-amd64", "shim-signed", "grub-efi-amd64-signed")
# The lab profile also carries the build tool chain, because installing it inside an
# emulated guest takes minutes. The running kernel's headers are added by name.
LAB_PACKAGES = ("build-essential", "dkms")
# Timers and services a short-lived lab VM does not need at boot.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-networkd-wait-online.service",
    "dpkg-db-backup.timer",
    "systemd-tmpfiles-clean.timer",
)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides an image's content; its hash names the image."""

    release: str = "bookworm"
    profile: str = "lab"
    base_packages: tuple[str, ...] = BASE_PACKAGES
    boot_packages: tuple[str, ...] = BOOT_PACKAGES
    profile_packages: tuple[str, ...] = ()
    masked_units: tuple[str, ...] = MASKED_UNITS
    cmdline: str = CMDLINE
    esp_mib: int = ESP_MIB
    root_gib: int = ROOT_GIB
    version: int = RECIPE_VERSION
    guest_files: dict[str, str] = field(default_factory=dict)
    # A pinned kernel ABI (e.g. 6.1.0-50-amd64, an older one of the release), or "" for
    # the release's current kernel (linux-image-amd64 from all suites).
    kernel: str = ""

    @classmethod
    def for_profile(
        cls, profile: str = "lab", release: str = "bookworm", kernel: str | None = None
    ) -> Recipe:
        if release not in RELEASES:
            raise LabError(f"unknown release {release!r}: supported: {', '.join(RELEASES)}")
        if profile not in PROFILES:
            raise LabError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
        boot = BOOT_PACKAGES
        if kernel:
            if not KERNEL_ABI_RE.match(kernel):
                raise LabError(
                    f"kernel {kernel!r} is not a Debian kernel ABI such as 6.1.0-50-amd64 "
                    "(`apt-cache search ^linux-image-6` lists them)"
                )
            # The pinned kernel boots; the release's current one is installed as well, not
            # the boot default: a host on an older kernel with its upgrade waiting for a
            # reboot (installing a kernel inside an emulated guest takes over six minutes).
            boot = (f"linux-image-{kernel}", *boot)
        return cls(
            release=release,
            profile=profile,
            boot_packages=boot,
            profile_packages=LAB_PACKAGES if profile == "lab" else (),
            guest_files=guest_files(),
            kernel=kernel or "",
        )

    def digest(self) -> str:
        fields = asdict(self)
        if not self.kernel:
            del fields["kernel"]  # unpinned recipes hash as before pinning existed
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def base_digest(self) -> str:
        """Hash of the debootstrap stage alone (shared by profiles)."""
        blob = json.dumps([self.release, self.base_packages, self.version]).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def name(self) -> str:
        pinned = f"-{self.kernel}" if self.kernel else ""
        return f"{self.release}-{self.profile}{pinned}-{self.digest()}"


def guest_files() -> dict[str, str]:
    """The files put into the guest, by name (part of the recipe)."""
    folder = resources.files("kmodlab.lab") / "guest"
    return {f.name: f.read_text() for f in sorted(folder.iterdir(), key=lambda f: f.name)}


@dataclass(frozen=True)
class Image:
    """A built image in the cache and what is recorded beside it."""

    path: Path
    meta: dict[str, object]

    @property
    def kernel(self) -> str:
        return str(self.meta["kernel_release"])

    @property
    def vmlinuz(self) -> Path:
        return self.path.with_suffix(".vmlinuz")


def images_dir() -> Path:
    return cache_dir() / "images"


def image_path(recipe: Recipe) -> Path:
    return images_dir() / f"{recipe.name}.qcow2"


def find_image(recipe: Recipe) -> Image | None:
    path = image_path(recipe)
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        return Image(path, json.loads(meta_path.read_text()))
    return None


def require_image(profile: str, release: str = "bookworm", kernel: str | None = None) -> Image:
    recipe = Recipe.for_profile(profile, release, kernel)
    image = find_image(recipe)
    if image is None:
        pin = f" --kernel {kernel}" if kernel else ""
        raise LabError(
            f"no {release}/{profile}{' ' + kernel if kernel else ''} image built for the "
            f"current recipe: run `kmodlab image build --profile {profile}{pin}` (as root)"
        )
    return image


Progress = Callable[[str], None]


def _run(args: list[str], log: Path, **kwargs: object) -> None:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(args)}\n")
        out.flush()
        proc = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise LabError(f"`{' '.join(args[:3])} ...` failed (exit {proc.returncode}):\n{tail}")


def _chroot(root: Path, script: str, log: Path) -> None:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "DEBIAN_FRONTEND": "noninteractive",
        "LC_ALL": "C",
        "HOME": "/root",
    }
    _run(["chroot", str(root), "/bin/sh", "-euc", script], log, env=env)


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    images_dir().mkdir(parents=True, exist_ok=True)
    with (images_dir() / ".lock").open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LabError(
                f"another image build holds {images_dir() / '.lock'}; wait for it to finish"
            ) from None
        yield


def _clean_stale_builds() -> None:
    """Remove build folders of earlier builds whose process is gone."""
    for stale in (cache_dir() / "tmp").glob("build-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and Path(f"/proc/{pid}").exists() and int(pid) != os.getpid():
            continue
        shutil.rmtree(stale, ignore_errors=True)


def build(recipe: Recipe, force: bool = False, progress: Progress = print) -> Image:
    """Build the image for ``recipe`` unless the cache already has it (or ``force``)."""
    existing = find_image(recipe)
    if existing and not force:
        progress(f"cached: {existing.path}")
        return existing
    if os.geteuid() != 0:
        raise LabError(
            "building an image needs root (debootstrap and chroot): run "
            "`sudo kmodlab image build` or as root"
        )
    require_tools("debootstrap", "mkfs.ext4", "mkfs.vfat", "mcopy", "mmd", "sgdisk", "qemu-img")
    with _lock():
        _clean_stale_builds()
        tmp_root = cache_dir() / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"build-{recipe.name}-", dir=tmp_root))
        work = work.rename(work.with_name(f"{work.name}-{os.getpid()}"))
        try:
            return _build(recipe, work, progress)
        finally:
            shutil.rmtree(work, ignore_errors=True)


class _Stages:
    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.start = time.monotonic()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        self.progress(f"{name} ...")
        yield
        now = time.monotonic()
        self.progress(f"{name}: done in {now - t0:.0f} s (elapsed {now - self.start:.0f} s)")


def _build(recipe: Recipe, work: Path, progress: Progress) -> Image:
    stages = _Stages(progress)
    log = work / "build.log"
    root = work / "root"
    stage_tar = stage_tar_path(recipe)
    try:
        with stages.stage("debootstrap"):
            _debootstrap(recipe, root, stage_tar, log)
        with stages.stage("packages (kernel, signed shim and grub, profile)"):
            kernel = _install_packages(recipe, root, log)
        root_uuid, esp_uuid = str(uuid.uuid4()), uuid.uuid4().hex[:8].upper()
        with stages.stage("configure guest"):
            _configure(recipe, root, root_uuid, esp_uuid, log)
        with stages.stage("disk (ESP with signed boot chain, ext4 root, GPT)"):
            raw = _make_disk(recipe, root, work, root_uuid, esp_uuid, log)
        with stages.stage("qcow2"):
            final = image_path(recipe)
            final.parent.mkdir(parents=True, exist_ok=True)
            partial = work / "image.qcow2"
            _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(partial)], log)
            vmlinuz = work / "image.vmlinuz"
            shutil.copyfile(root / "boot" / f"vmlinuz-{kernel}", vmlinuz)
    except LabError as exc:
        raise LabError(
            f"image build failed; the previous image (if any) is untouched.\n{exc}"
        ) from None
    meta = {
        "name": recipe.name,
        "release": recipe.release,
        "profile": recipe.profile,
        "recipe_hash": recipe.digest(),
        "kernel_release": kernel,
        "kernel_pinned": recipe.kernel,
        "kernels_installed": sorted(p.name for p in (root / "lib/modules").iterdir()),
        "headers_package": f"linux-headers-{kernel}",
        "guest_user": GUEST_USER,
        "root_uuid": root_uuid,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_seconds": round(time.monotonic() - stages.start, 1),
        "packages": _package_list(root),
    }
    # Publish: everything beside the image first, the image itself last (atomic rename).
    shutil.move(vmlinuz, final.with_suffix(".vmlinuz.tmp"))
    os.replace(final.with_suffix(".vmlinuz.tmp"), final.with_suffix(".vmlinuz"))
    final.with_suffix(".json.tmp").write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(final.with_suffix(".json.tmp"), final.with_suffix(".json"))
    shutil.move(partial, final.with_suffix(".qcow2.tmp"))
    os.replace(final.with_suffix(".qcow2.tmp"), final)
    progress(f"image: {final} (kernel {kernel}, {meta['build_seconds']} s)")
    return Image(final, meta)


def stage_tar_path(recipe: Recipe) -> Path:
    """Where the debootstrap stage of ``recipe`` is cached (shared by its profiles)."""
    return cache_dir() / "stages" / f"{recipe.release}-base-{recipe.base_digest()}.tar"


def base_stage_tar(release: str = "bookworm", progress: Progress = print) -> Path:
    """The cached debootstrap stage tar of ``release`` (minbase with BASE_PACKAGES), made
    when missing (needs root and debootstrap). The container builder imports it."""
    recipe = Recipe.for_profile("bare", release)
    stage_tar = stage_tar_path(recipe)
    if stage_tar.is_file():
        return stage_tar
    if os.geteuid() != 0:
        raise LabError(
            f"making the {release} debootstrap stage ({stage_tar}) needs root: run as root"
        )
    require_tools("debootstrap", "tar")
    tmp_root = cache_dir() / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="stage-", dir=tmp_root))
    try:
        progress(f"debootstrap {release} (once; cached as {stage_tar}) ...")
        _debootstrap(recipe, work / "root", stage_tar, work / "debootstrap.log")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return stage_tar


def apt_sources(release: str, current: str = "") -> str:
    """The sources.list of a real Debian host: the mirror of ``current`` (debootstrap's
    sources.list text; deb.debian.org when it names none), with updates and security."""
    mirror = "http://deb.debian.org/debian"
    words = current.split()
    if len(words) >= 2 and words[0] == "deb":
        mirror = words[1]
    security = mirror.rstrip("/").rsplit("/", 1)[0] + "/debian-security"
    return (
        f"deb {mirror} {release} main\n"
        f"deb {mirror} {release}-updates main\n"
        f"deb {security} {release}-security main\n"
    )


def _debootstrap(recipe: Recipe, root: Path, stage_tar: Path, log: Path) -> None:
    root.mkdir()
    if stage_tar.is_file():
        _run(["tar", "-C", str(root), "--numeric-owner", "--xattrs", "-xpf", str(stage_tar)], log)
        return
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(recipe.base_packages)}",
            recipe.release,
            str(root),
        ],
        log,
    )
    stage_tar.parent.mkdir(parents=True, exist_ok=True)
    partial = stage_tar.with_suffix(".partial")
    _run(["tar", "-C", str(root), "--numeric-owner", "--xattrs", "-cpf", str(partial), "."], log)
    os.replace(partial, stage_tar)


def _sources(root: Path, release: str) -> str:
    """A real Debian host's sources: debootstrap's mirror, with updates and security."""
    return apt_sources(release, (root / "etc/apt/sources.list").read_text())


def _install_packages(recipe: Recipe, root: Path, log: Path) -> str:
    (root / "etc/apt/sources.list").write_text(_sources(root, recipe.release))
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    apt = "apt-get -y -q -o Dpkg::Use-Pty=0 --no-install-recommends"
    _chroot(root, f"apt-get -q update && {apt} install {' '.join(recipe.boot_packages)}", log)
    kernels = sorted(p.name for p in (root / "lib/modules").iterdir())
    if recipe.kernel:
        if recipe.kernel not in kernels or len(kernels) > 2:
            raise LabError(f"expected {recipe.kernel} and the current kernel, found {kernels}")
        kernel = recipe.kernel
        # The boot default (/vmlinuz, /initrd.img) back on the pinned kernel: the same call
        # a kernel package's postinst makes for the kernel it installs.
        _chroot(root, f"linux-update-symlinks install {kernel} /boot/vmlinuz-{kernel}", log)
    elif len(kernels) != 1:
        raise LabError(f"expected one kernel in the image, found {kernels}")
    else:
        kernel = kernels[0]
    if recipe.profile_packages:
        pkgs = " ".join((*recipe.profile_packages, f"linux-headers-{kernel}"))
        _chroot(root, f"{apt} install {pkgs}", log)
    _chroot(root, "apt-get clean", log)
    policy.unlink()
    return kernel


def _configure(recipe: Recipe, root: Path, root_uuid: str, esp_uuid: str, log: Path) -> None:
    files = recipe.guest_files
    (root / "etc/fstab").write_text(
        f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n"
        f"UUID={esp_uuid[:4]}-{esp_uuid[4:]} /boot/efi vfat umask=0077,nofail 0 2\n"
    )
    (root / "boot/efi").mkdir(parents=True, exist_ok=True)
    (root / "etc/hostname").write_text("kmodlab\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 kmodlab\n")
    (root / "etc/systemd/network/20-wired.network").write_text(files["20-wired.network"])
    sshd = root / "etc/ssh/sshd_config.d/kmodlab.conf"
    sshd.write_text(files["sshd-kmodlab.conf"])
    prov = root / "usr/local/sbin/kmodlab-provision"
    prov.write_text(files["kmodlab-provision"])
    prov.chmod(0o755)
    unit = root / "etc/systemd/system/kmodlab-provision.service"
    unit.write_text(files["kmodlab-provision.service"])
    grub = root / "boot/grub/grub.cfg"
    grub.parent.mkdir(parents=True, exist_ok=True)
    grub.write_text(
        files["grub.cfg"].replace("@ROOT_UUID@", root_uuid).replace("@CMDLINE@", recipe.cmdline)
    )
    sudoers = root / f"etc/sudoers.d/{GUEST_USER}"
    sudoers.write_text(f"{GUEST_USER} ALL=(ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)
    masked = " ".join(recipe.masked_units)
    _chroot(
        root,
        f"useradd --create-home --shell /bin/bash {GUEST_USER}\n"
        "systemctl enable systemd-networkd.service kmodlab-provision.service ssh.service\n"
        f"systemctl mask {masked}\n"
        "rm -f /etc/ssh/ssh_host_*\n"
        "rm -f /etc/resolv.conf\n"
        # QEMU's user-mode network answers DNS at its gateway's .3 (see qemu.py).
        "echo 'nameserver 100.64.7.3' > /etc/resolv.conf\n"
        "systemd-machine-id-setup >/dev/null\n"
        "echo 'kernel.printk = 4 4 1 7' > /etc/sysctl.d/10-kmodlab-console.conf\n",
        log,
    )


def _make_disk(
    recipe: Recipe, root: Path, work: Path, root_uuid: str, esp_uuid: str, log: Path
) -> Path:
    files = recipe.guest_files
    esp = work / "esp.img"
    _run(
        [
            "mkfs.vfat",
            "-F",
            "32",
            "-i",
            esp_uuid,
            "-n",
            "EFI",
            "-C",
            str(esp),
            str(recipe.esp_mib * 1024),
        ],
        log,
    )
    stub = work / "grub-esp.cfg"
    stub.write_text(files["grub-esp.cfg"].replace("@ROOT_UUID@", root_uuid))
    shim = root / "usr/lib/shim"
    grub = root / "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"
    mm = shim / "mmx64.efi.signed"
    copies = {
        "::/EFI/BOOT/BOOTX64.EFI": shim / "shimx64.efi.signed",
        "::/EFI/BOOT/grubx64.efi": grub,
        "::/EFI/BOOT/mmx64.efi": mm,
        "::/EFI/BOOT/grub.cfg": stub,
        "::/EFI/debian/shimx64.efi": shim / "shimx64.efi.signed",
        "::/EFI/debian/grubx64.efi": grub,
        "::/EFI/debian/mmx64.efi": mm,
        "::/EFI/debian/grub.cfg": stub,
    }
    _run(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT", "::/EFI/debian"], log)
    for dest, src in copies.items():
        if not src.is_file():
            missing = src.relative_to(root)
            raise LabError(f"{missing} missing from the image: is shim-signed installed?")
        _run(["mcopy", "-i", str(esp), str(src), dest], log)

    rootfs = work / "root.img"
    _run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "kmodlab-root",
            "-U",
            root_uuid,
            "-d",
            str(root),
            str(rootfs),
            f"{recipe.root_gib}G",
        ],
        log,
    )
    esp_start = 2048
    esp_sectors = recipe.esp_mib * 1024 * 1024 // SECTOR
    root_start = esp_start + esp_sectors
    root_sectors = rootfs.stat().st_size // SECTOR
    disk = work / "disk.raw"
    with disk.open("wb") as fh:
        fh.truncate((root_start + root_sectors + 2048) * SECTOR)
    # sgdisk -q was seen to write no table at all: keep it verbose, into the log.
    _run(
        [
            "sgdisk",
            "-o",
            f"-n1:{esp_start}:{esp_start + esp_sectors - 1}",
            "-t1:ef00",
            "-c1:EFI System",
            f"-n2:{root_start}:{root_start + root_sectors - 1}",
            "-t2:8304",
            "-c2:root",
            str(disk),
        ],
        log,
    )
    for part, start in ((esp, esp_start), (rootfs, root_start)):
        _run(
            [
                "dd",
                f"if={part}",
                f"of={disk}",
                "bs=4M",
                f"seek={start * SECTOR}",
                "oflag=seek_bytes",
                "conv=notrunc,sparse",
                "status=none",
            ],
            log,
        )
        part.unlink()
    return disk


def _package_list(root: Path) -> list[str]:
    status = (root / "var/lib/dpkg/status").read_text()
    names = [line.split(": ", 1)[1] for line in status.splitlines() if line.startswith("Package: ")]
    return sorted(names)
