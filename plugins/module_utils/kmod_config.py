# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The files that configure a kernel module at load and at boot, and what they say.

One rule for the kmod_load role (through the ``kmodlab.lab.kmod_load_files`` filter)
and the verify checks (``persistence``):

    state    persist  /etc/modprobe.d/NAME.conf   /etc/modules-load.d/NAME.conf
    present  true     options KMOD ARGS (params)  KMOD
    present  false    -                           -
    config   true     options KMOD ARGS (params)  KMOD
    config   false    options KMOD ARGS (params)  -
    absent   any      -                           -

Runs on the target and on the controller, so only the standard library is used.
"""

from __future__ import annotations

from typing import Any

from ansible_collections.kmodlab.lab.plugins.module_utils.params import (
    declarations,
    kernel_args,
    options_string,
)

MODPROBE_D = "/etc/modprobe.d"
MODULES_LOAD_D = "/etc/modules-load.d"
HEADER = "# Managed by kmodlab (kmod_load): "


def config_paths(
    record: dict[str, Any], modprobe_dir: str = MODPROBE_D, modules_load_dir: str = MODULES_LOAD_D
) -> tuple[str, str]:
    """``(/etc/modprobe.d/NAME.conf, /etc/modules-load.d/NAME.conf)`` of ``record``."""
    name = record["name"]
    return (f"{modprobe_dir}/{name}.conf", f"{modules_load_dir}/{name}.conf")


def wants_options(record: dict[str, Any]) -> bool:
    """Whether ``record`` must have its modprobe.d file: it has wanted parameters and is
    loaded at boot (persist) or only configured (state config)."""
    return (
        record.get("state") in ("present", "config")
        and bool(record.get("persist", True) or record.get("state") == "config")
        and bool(record.get("params"))
    )


def wants_boot(record: dict[str, Any]) -> bool:
    """Whether ``record`` must have its modules-load.d file (loaded at boot)."""
    return record.get("state") in ("present", "config") and bool(record.get("persist", True))


def wanted_files(
    record: dict[str, Any], modprobe_dir: str = MODPROBE_D, modules_load_dir: str = MODULES_LOAD_D
) -> dict[str, str | None]:
    """``{path: content}`` of the module's two files; None where the file must not exist.

    Raises params.ParamError when a wanted value cannot be written for the kernel.
    """
    name, kmod = record["name"], record["kmod"]
    modprobe, modules_load = config_paths(record, modprobe_dir, modules_load_dir)
    options = None
    if wants_options(record):
        args = options_string(declarations(record), record.get("params"))
        options = (
            f"{HEADER}parameters the kernel applies whenever {name} is loaded.\n"
            f"options {kmod} {args}\n"
        )
    boot = None
    if wants_boot(record):
        boot = f"{HEADER}{name} is loaded at boot by systemd-modules-load.\n{kmod}\n"
    return {modprobe: options, modules_load: boot}


def config_lines(text: str | None) -> list[str]:
    """The lines of a modprobe.d or modules-load.d file that are not blank or comments."""
    out = []
    for line in (text or "").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            out.append(line)
    return out


def kmod_name(name: str) -> str:
    """A module name as the kernel compares it (``-`` and ``_`` are the same)."""
    return name.replace("-", "_")


def options_of(text: str | None) -> list[tuple[str, dict[str, str]]]:
    """The ``options`` lines of a modprobe.d file: ``[(kmod, {param: text})]``."""
    out = []
    for line in config_lines(text):
        parts = line.split(None, 2)
        if parts[0] == "options":
            parts += [""] * (3 - len(parts))
            out.append((parts[1], kernel_args(parts[2])))
    return out
