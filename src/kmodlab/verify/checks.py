"""The checks of the verify suite: pure functions of (record, observation, kernel).

Each returns a list of problems, empty when the host is as the manifest and the
wanted parameters say. A problem that starts with ``NOT_OBSERVABLE`` says that a fact
cannot be seen on the host at all (e.g. a perm-0 parameter's value): when every
problem of a check is such, the suite reports the check as "not observable", neither
passed nor failed. Nothing here is written for one module: every expectation
comes from the resolved record (state, wanted params, persist) and its manifest.

The facts are read with the collection's module_utils, the parsers the kmod_load role
and its probe use: parameter values as sysfs shows them and the kernel splits them
(``params``), the major a device must have (``params.wanted_major``: a major parameter
of 0 fixes none), ``/proc/devices`` (``proc_devices``), the kernel log
(``kernel_log``), which configuration files a module has and what they say
(``kmod_config``), ``modinfo`` output and a module's signature in it (``modinfo``).
The tests of those parsers pin their results to the kernel's behaviour.

The signing checks (``signature``, ``taint``, and a part of ``host``) take the
expectation's ``signing`` mapping (``kmodlab.verify.expectations``): the signer, key
identifier and certificate fingerprint the modules must be signed with, and whether the
host's kernel trusts that certificate.

How a module is built and installed depends on the host's delivery: DKMS on the host
(``dkms_built``, ``dkms_installed``, ``dkms_removed``) or a Debian package built off
the host (``package_built``, ``package_installed``, ``package_removed``, read with
``dpkg_status``); ``module_file`` takes the delivery to know where the .ko must be.
"""

from __future__ import annotations

import base64
import errno
import os
import re
from typing import Any

from ansible_collections.kmodlab.lab.plugins.module_utils.files import show_mode
from ansible_collections.kmodlab.lab.plugins.module_utils.kernel_log import (
    logged_value,
    mention_regex,
)
from ansible_collections.kmodlab.lab.plugins.module_utils.kmod_config import (
    config_lines,
    config_paths,
    kmod_name,
    options_of,
    wanted_files,
)
from ansible_collections.kmodlab.lab.plugins.module_utils.modinfo import (
    normal_key,
    parse,
)
from ansible_collections.kmodlab.lab.plugins.module_utils.modinfo import (
    signature as modinfo_signature,
)
from ansible_collections.kmodlab.lab.plugins.module_utils.params import (
    ParamError,
    declarations,
    dynamic_major,
    strip_newline,
    sysfs_value,
    visible,
    wanted_major,
)
from ansible_collections.kmodlab.lab.plugins.module_utils.proc_devices import (
    PROC_DEVICES,
    majors_of,
    parse_proc_devices,
)
from ansible_collections.kmodlab.lab.plugins.module_utils.secure_boot import (
    EFI_GLOBAL_GUID,
    efivar_path,
)

from kmodlab.fleet.names import install_dir, package_name
from kmodlab.verify.observe import (
    DKMS_TREE,
    SOURCE_ROOT,
    Observation,
    build_id_path,
    dkms_package,
    host_package,
    installed_files,
    module_dir,
    param_path,
    sys_module,
    taint_path,
)

KERNEL_LINES = 20
# A problem starting with exactly this is a fact the host cannot show, not a failure.
NOT_OBSERVABLE = "not observable: "


def kernel_context(record: dict[str, Any], obs: Observation) -> list[str]:
    """The last kernel lines that name the module."""
    regex = mention_regex(record)
    return [line for line in obs.kernel_log if regex.search(line)][-KERNEL_LINES:]


# ------------------------------------------------------------------ host


def host(
    expectation_kernel: str, obs: Observation, signing: dict[str, Any] | None = None
) -> list[str]:
    problems = []
    uname = obs.command("uname")
    running = uname["stdout"].strip()
    if uname["rc"] != 0:
        problems.append(f"uname -r failed: {uname['stderr'].strip()}")
    elif running != expectation_kernel:
        problems.append(
            f"the host runs kernel {running}, the expectation was rendered for "
            f"{expectation_kernel}: run the playbook again for the running kernel"
        )
    if obs.euid != 0:
        problems.append(
            f"the checks ran as uid {obs.euid}, not root: give passwordless sudo, "
            "ansible_become in the inventory, or pytest --sudo"
        )
    if obs.kernel_log_source == "none":
        problems.append("the kernel log could not be read (/dev/kmsg, dmesg, journalctl -k)")
    if signing and signing["trusted"]:
        problems.extend(_secure_boot_unknown(obs, signing))
    return problems


def _secure_boot_unknown(obs: Observation, signing: dict[str, Any]) -> list[str]:
    """Why the Secure Boot state of a host whose kernel should trust the signing
    certificate cannot be told, if it cannot: collecting it failed, or the host booted
    through UEFI and its SecureBoot variable cannot be read."""
    state = obs.secure_boot
    trusted = f"the kernel should trust the signing certificate (SHA-256 {signing['fingerprint']})"
    if state.get("error"):
        return [f"{trusted}, but the Secure Boot state cannot be read: {state['error']}"]
    if state.get("efi") and state.get("secure_boot") is None:
        return [
            f"{trusted}, but the Secure Boot state of this EFI host cannot be read "
            f"({efivar_path('SecureBoot', EFI_GLOBAL_GUID)} is missing or unreadable: is "
            "efivarfs mounted?)"
        ]
    return []


# ------------------------------------------------------------------ DKMS and files


def _dkms(
    record: dict[str, Any], obs: Observation, kernel: str, statuses: tuple[str, ...]
) -> list[str]:
    tree = obs.dkms
    if "error" in tree:
        return [f"the DKMS tree could not be read: {tree['error']}"]
    package = dkms_package(record)
    entries = [e for e in tree.get("entries", []) if e["name"] == package]
    mine = [e for e in entries if e["version"] == record["version"]]
    wanted = [e for e in mine if e["kernel"] == kernel and e["status"] in statuses]
    if wanted and not any(e["diff"] or e["missing"] for e in wanted):
        return []
    seen = "; ".join(e["line"] for e in mine)
    others = "; ".join(e["line"] for e in entries if e not in mine)
    return [
        f"DKMS shows {package}/{record['version']} not "
        f"{' or '.join(statuses)} for kernel {kernel} (it shows: {seen or 'nothing'}"
        + (f"; other versions: {others}" if others else "")
        + ")"
    ]


def dkms_built(record: dict[str, Any], obs: Observation, kernel: str) -> list[str]:
    return _dkms(record, obs, kernel, ("built", "installed"))


def dkms_installed(record: dict[str, Any], obs: Observation, kernel: str) -> list[str]:
    return _dkms(record, obs, kernel, ("installed",))


def modinfo_fields(obs: Observation, record: dict[str, Any]) -> dict[str, list[str]]:
    """The module's modinfo fields (module_utils/modinfo.py), ``{key: [values]}``; when
    modinfo shows several modules, their values one after the other."""
    fields: dict[str, list[str]] = {}
    for block in parse(obs.command(f"modinfo:{record['name']}")["stdout"]):
        for key, values in block.items():
            fields.setdefault(key, []).extend(values)
    return fields


def module_signature(record: dict[str, Any], obs: Observation) -> dict[str, str | None]:
    """The installed module file's signature as modinfo shows it: signer, sig_key
    (``1A:2B:...``), sig_hashalgo, sig_id; all None when it is unsigned."""
    blocks = parse(obs.command(f"modinfo:{record['name']}")["stdout"])
    return modinfo_signature(blocks[0] if blocks else {})


def module_file(
    record: dict[str, Any], obs: Observation, kernel: str, delivery: str = "dkms"
) -> list[str]:
    """modinfo finds the module where its delivery installs it: DKMS's folder (any of
    its names and compressions), or exactly the package's ``updates/kmodlab/KMOD.ko``;
    its vermagic is the running kernel's."""
    res = obs.command(f"modinfo:{record['name']}")
    if res["rc"] != 0:
        return [f"modinfo -k {kernel} {record['kmod']} failed: {res['stderr'].strip()}"]
    fields = modinfo_fields(obs, record)
    problems = []
    folder = re.escape(module_dir(kernel, delivery))
    if delivery == "deb":
        where = rf"^(/usr)?{folder}/{re.escape(record['kmod'])}\.ko$"
        installer = f"where the package {host_package(record, kernel)} installs it"
        wanted = f"{module_dir(kernel, delivery)}/{record['kmod']}.ko"
    else:
        names = "|".join(re.escape(n) for n in sorted({record["name"], record["kmod"]}))
        where = rf"^(/usr)?{folder}/(?:{names})\.ko(\.(xz|gz|zst))?$"
        installer = "where DKMS installs it"
        wanted = f"under {module_dir(kernel, delivery)}/"
    filename = (fields.get("filename") or [""])[0]
    if not re.match(where, filename):
        problems.append(f"modinfo filename is {filename or 'missing'}, not {wanted} ({installer})")
    vermagic = (fields.get("vermagic") or [""])[0]
    if vermagic.split(" ", 1)[0] != kernel:
        problems.append(f"vermagic {vermagic!r} does not start with the running kernel {kernel}")
    return problems


def modinfo(record: dict[str, Any], obs: Observation, kernel: str) -> list[str]:
    res = obs.command(f"modinfo:{record['name']}")
    if res["rc"] != 0:
        return [f"modinfo -k {kernel} {record['kmod']} failed: {res['stderr'].strip()}"]
    fields = modinfo_fields(obs, record)
    problems = []
    for field, pattern in sorted(
        (record["manifest"].get("expect", {}).get("modinfo") or {}).items()
    ):
        values = fields.get(field)
        if not values:
            problems.append(f"modinfo has no {field} (manifest expects /{pattern}/)")
        elif not any(re.search(pattern, v) for v in values):
            problems.append(f"modinfo {field} is {values!r}, not matching /{pattern}/")
    version = fields.get("version")
    if version and version[0] != record["version"]:
        problems.append(f"modinfo version is {version[0]}, the manifest says {record['version']}")
    return problems


def _expected_signature(signing: dict[str, Any]) -> str:
    return (
        f"expected a signature by {signing['signer']!r} with key id "
        f"{normal_key(signing['sig_key'])} (certificate SHA-256 {signing['fingerprint']})"
    )


def signature(
    record: dict[str, Any], obs: Observation, kernel: str, signing: dict[str, Any]
) -> list[str]:
    """The installed module file carries a PKCS#7 signature (modinfo ``sig_id``) by the
    expected signer with the expected key identifier (``signing``: signer, sig_key,
    fingerprint)."""
    res = obs.command(f"modinfo:{record['name']}")
    if res["rc"] != 0:
        return [f"modinfo -k {kernel} {record['kmod']} failed: {res['stderr'].strip()}"]
    found = module_signature(record, obs)
    filename = (modinfo_fields(obs, record).get("filename") or ["the installed file"])[0]
    module = f"module {record['kmod']} ({filename})"
    expected = _expected_signature(signing)
    if not any(found.values()):
        return [f"{module} is unsigned, {expected}"]
    problems = []
    if found["sig_id"] != "PKCS#7" or not found["signer"] or not found["sig_key"]:
        problems.append(
            f"{module} has an incomplete signature (sig_id {found['sig_id'] or 'none'}, "
            f"signer {found['signer'] or 'none'}, key id {found['sig_key'] or 'none'}; "
            f"a PKCS#7 one with both is needed), {expected}"
        )
    elif found["signer"] != signing["signer"] or found["sig_key"] != normal_key(signing["sig_key"]):
        problems.append(
            f"{module} is signed by {found['signer']!r} with key id {found['sig_key']}, {expected}"
        )
    return problems


def taint(
    record: dict[str, Any], obs: Observation, kernel: str, signing: dict[str, Any]
) -> list[str]:
    """A loaded module does not carry taint E (unsigned or not verified) on a host
    whose kernel trusts the signing certificate (``signing["trusted"]``)."""
    problems = _not_loaded(record, obs)
    if problems:
        return problems
    path = taint_path(record)
    text = obs.text(path)
    if text is None:
        return [f"{path}: cannot read ({obs.read_error(path)})"]
    flags = text.strip()
    if "E" in flags:
        return [
            f"module {record['kmod']} carries taint E: the kernel could not verify its "
            f"signature (taint {flags}; the kernel should trust the certificate SHA-256 "
            f"{signing['fingerprint']} of {signing['signer']!r}): reload it once the "
            "file is signed with it"
        ]
    return []


def persistence(record: dict[str, Any], obs: Observation, kernel: str) -> list[str]:
    """The module's modprobe.d and modules-load.d files exist as kmod_load writes them
    (kmod_config.wanted_files) and say the same, comments and quoting aside."""
    problems = []
    modprobe, modules_load = config_paths(record)
    try:
        wanted = wanted_files(record)
    except ParamError as exc:
        return [f"the wanted parameters cannot be written for the kernel: {exc}"]
    for path, content in wanted.items():
        exists = obs.exists(path)
        if content is None:
            if exists:
                why = "it is absent" if record["state"] == "absent" else "persist is false"
                if path == modprobe and record["state"] != "absent" and not record["params"]:
                    why = "it has no parameters"
                problems.append(f"{path} exists but should not ({why})")
            continue
        if not exists:
            problems.append(
                f"{path} is missing (state {record['state']}, persist {record['persist']})"
            )
            continue
        text = obs.text(path)
        if text is None:
            problems.append(f"{path} cannot be read: {obs.read_error(path)}")
            continue
        lines = config_lines(text)
        if path == modules_load:
            names = [kmod_name(line) for line in lines]
            if names not in ([kmod_name(n) for n in config_lines(content)], [record["name"]]):
                problems.append(f"{path} should name only {record['kmod']}, it has {lines}")
            continue
        ((kmod, want),) = options_of(content)
        options = options_of(text)
        if len(options) != 1 or len(lines) != 1:
            problems.append(f"{path} should hold one options line, it has {lines}")
            continue
        ((have_kmod, have),) = options
        if kmod_name(have_kmod) != kmod:
            problems.append(f"{path} sets options for {have_kmod}, not {kmod}")
        if have != want:
            problems.append(f"{path} options are {have}, wanted {want}")
    return problems


# ------------------------------------------------------------------ loaded module


def loaded(record: dict[str, Any], obs: Observation, kernel: str) -> list[str]:
    base = sys_module(record)
    state = obs.text(f"{base}/initstate")
    if state is None:
        return [f"{record['kmod']} is not loaded ({base}/initstate does not exist)"]
    problems = []
    if state.strip() != "live":
        problems.append(f"{record['kmod']} is {state.strip()!r}, not live")
    return problems + same_build(record, obs)


def same_build(record: dict[str, Any], obs: Observation) -> list[str]:
    """Whether the loaded module is the installed .ko: by srcversion when both have one,
    else by the GNU build ID (``/sys/module/KMOD/notes/.note.gnu.build-id``).

    modpost adds a srcversion only when the module sets MODULE_VERSION or the kernel
    has CONFIG_MODULE_SRCVERSION_ALL=y (Debian 12's 6.1 kernels do not), and the sysfs
    file exists only when it did: our lab modules have neither side. A srcversion on
    one side only means two different builds.
    """
    kmod = record["kmod"]
    live_src = (obs.text(f"{sys_module(record)}/srcversion") or "").strip()
    disk_src = (modinfo_fields(obs, record).get("srcversion") or [""])[0]
    if live_src and disk_src:
        if live_src == disk_src:
            return []
        return [
            f"the loaded {kmod} (srcversion {live_src}) is not the installed one "
            f"({disk_src}): reload it"
        ]
    if live_src or disk_src:
        return [
            f"the loaded {kmod} has srcversion {live_src or 'none'}, the installed file "
            f"{disk_src or 'none'}: they are different builds, reload it"
        ]
    filename = (modinfo_fields(obs, record).get("filename") or [""])[0]
    if filename.startswith("/usr/lib/"):
        filename = filename[len("/usr") :]
    live_id, live_error = obs.build_id(build_id_path(record))
    disk_id, disk_error = obs.build_id(filename) if filename else (None, "modinfo names no file")
    if live_id and disk_id:
        if live_id == disk_id:
            return []
        return [
            f"the loaded {kmod} (build ID {live_id}) is not the installed {filename} "
            f"(build ID {disk_id}): reload it"
        ]
    missing = "; ".join(
        f"{what}: {error}"
        for what, value, error in (
            (build_id_path(record), live_id, live_error),
            (filename or "the installed file", disk_id, disk_error),
        )
        if not value
    )
    return [
        f"{NOT_OBSERVABLE}whether the loaded {kmod} is the installed build: neither has a "
        f"srcversion (no MODULE_VERSION, CONFIG_MODULE_SRCVERSION_ALL off) and the build "
        f"ID cannot be read ({missing})"
    ]


def not_loaded(record: dict[str, Any], obs: Observation, kernel: str) -> list[str]:
    base = sys_module(record)
    if obs.exists(f"{base}/initstate"):
        return [f"{record['kmod']} is loaded but its state is absent"]
    return []


def _gone(obs: Observation, path: str) -> str | None:
    """None when ``path`` was observed not to exist, else what is wrong."""
    entry = obs.data.get("stat", {}).get(path)
    if entry is None:
        return f"{path} was not observed"
    if entry.get("exists"):
        return f"{path} exists"
    if entry.get("error") not in ("No such file or directory", "Not a directory"):
        return f"cannot tell whether {path} exists: {entry.get('error')}"
    return None


def dkms_removed(record: dict[str, Any], obs: Observation, kernel: str) -> list[str]:
    """An absent module's package is gone from DKMS: no entry and no folder in the DKMS
    tree, no installed .ko for the running kernel, no sources of its version."""
    name = dkms_package(record)
    problems = []
    tree = obs.dkms
    if "error" in tree:
        problems.append(f"the DKMS tree could not be read: {tree['error']}")
    else:
        lines = [e["line"] for e in tree.get("entries", []) if e["name"] == name]
        if lines:
            problems.append(f"DKMS still has {name}: {'; '.join(lines)}")
    why = {
        f"{DKMS_TREE}/{name}": "dkms remove deletes it with the last version",
        f"{SOURCE_ROOT}/{name}-{record['version']}": "dkms_module deletes the sources",
    }
    for path in [*why, *installed_files(record, kernel)]:
        problem = _gone(obs, path)
        if problem:
            problems.append(f"{problem} ({why.get(path, 'dkms uninstall deletes it')})")
    return problems


# ------------------------------------------------------------------ packages (deb)


def _package_entry(
    record: dict[str, Any], obs: Observation, kernel: str
) -> tuple[str, dict[str, Any] | None, list[str]]:
    """(package, its dpkg-query entry or None, problems reading the list)."""
    package = host_package(record, kernel)
    found = obs.packages
    if "error" in found:
        return package, None, [f"dpkg-query could not list the kmodlab packages: {found['error']}"]
    return package, found["packages"].get(package), []


def package_installed(record: dict[str, Any], obs: Observation, kernel: str) -> list[str]:
    """dpkg shows the running kernel's package of the module installed ("ii", or held
    there: "hi"), at the record's version."""
    package, entry, problems = _package_entry(record, obs, kernel)
    if problems:
        return problems
    wanted = f"{record['name']} {record['version']} for kernel {kernel}"
    if entry is None:
        return [f"dpkg knows no package {package}: {wanted} is not installed"]
    if not entry["installed"]:
        problems.append(
            f"{package} is {entry['text']}, not installed (ii, install ok installed): "
            f"{wanted} is not in place"
        )
    if entry["version"] != record["version"]:
        problems.append(
            f"{package} is at version {entry['version']}, the manifest says {record['version']}"
        )
    return problems


def package_built(record: dict[str, Any], obs: Observation, kernel: str) -> list[str]:
    """What "built" means for a module built off the host: the host holds the build the
    package shipped. The running kernel's package lists ``updates/kmodlab/KMOD.ko``
    (``dpkg -L``), modinfo resolves the module to a file of that package, and the file
    on disk is the one the package shipped (``dpkg --verify``: present, same MD5)."""
    package = host_package(record, kernel)
    ko = f"{install_dir(kernel)}/{record['kmod']}.ko"
    files, error = obs.package_files(package)
    if files is None:
        return [f"{error} ({record['name']} is not installed from a package for {kernel})"]
    problems = []
    if ko not in files:
        shipped = [f for f in files if f.endswith((".ko", ".ko.xz", ".ko.gz", ".ko.zst"))]
        problems.append(
            f"{package} does not ship {ko} (it ships {', '.join(shipped) or 'no module'}): "
            "it was not built as kmodlab builds packages"
        )
    res = obs.command(f"modinfo:{record['name']}")
    filename = (modinfo_fields(obs, record).get("filename") or [""])[0]
    if filename.startswith("/usr/lib/"):
        filename = filename[len("/usr") :]
    if res["rc"] != 0:
        problems.append(f"modinfo -k {kernel} {record['kmod']} failed: {res['stderr'].strip()}")
    elif filename not in files:
        problems.append(
            f"modinfo resolves {record['kmod']} to {filename or 'no file'}, which {package} "
            "does not ship: another copy shadows the package's (run depmod, remove the other)"
        )
    changed, error = obs.package_verify(package)
    if changed is None:
        problems.append(str(error))
    else:
        for item in changed:
            if item["missing"]:
                problems.append(f"{item['path']} of {package} is missing ({item['line'].strip()})")
            elif item["digest"] or item["mode"]:
                problems.append(
                    f"{item['path']} is not the file {package} shipped (dpkg --verify: "
                    f"{item['line'].strip()}): reinstall the package"
                )
    return problems


def _module_packages(record: dict[str, Any], packages: dict[str, Any]) -> list[dict[str, Any]]:
    """dpkg-query entries of the module's packages for any kernel ABI."""
    head, tail = package_name(record["name"], "\0").split("\0")
    found = []
    for name, entry in sorted(packages.items()):
        abi = name[len(head) : len(name) - len(tail)] if name.startswith(head) else ""
        # a kernel release starts with a digit; "-modules-" in it is another module's
        if abi[:1].isdigit() and "-modules-" not in abi:
            found.append(entry)
    return found


def package_removed(record: dict[str, Any], obs: Observation, kernel: str) -> list[str]:
    """An absent module's packages are gone: dpkg shows none of them (for any kernel)
    in a state other than not-installed or config-files, and no .ko of it is left in
    the running kernel's package folder (``updates/kmodlab``)."""
    problems = []
    found = obs.packages
    if "error" in found:
        problems.append(f"dpkg-query could not list the kmodlab packages: {found['error']}")
    else:
        for entry in _module_packages(record, found["packages"]):
            if not entry["gone"]:
                problems.append(
                    f"{entry['package']} {entry['version']} is still {entry['text']}: "
                    f"remove it (apt-get purge {entry['package']})"
                )
    for path in installed_files(record, kernel, "deb"):
        problem = _gone(obs, path)
        if problem:
            problems.append(f"{problem} (removing the package deletes it)")
    return problems


def rollout_state(obs: Observation) -> dict[str, Any] | None:
    """What the host's rollout state fact (``observe.ROLLOUT_FACT``) says was rolled
    out: ``{"good": {MODULE: {version, signer, when}}, "pending": [MODULE, ...]}``, as
    the collector extracts it; None without the fact (or on a DKMS host); ``{"error"}``
    when it cannot be read or is not the fact's JSON."""
    found = obs.data.get("rollout")
    if not isinstance(found, dict) or found.get("found") is False:
        return None
    if "error" in found:
        return {"error": str(found["error"])}
    return {"good": found.get("good") or {}, "pending": found.get("pending") or []}


def _not_loaded(record: dict[str, Any], obs: Observation) -> list[str]:
    if obs.exists(f"{sys_module(record)}/initstate"):
        return []
    return [f"{record['kmod']} is not loaded, so this cannot be checked"]


def checked_params(record: dict[str, Any]) -> list[str]:
    """Wanted parameters whose live value sysfs shows (a dynamic major excluded)."""
    decls = declarations(record)
    return [
        name
        for name, value in sorted(record["params"].items())
        if visible(decls[name]) and not dynamic_major(record, name, sysfs_value(decls[name], value))
    ]


def params(record: dict[str, Any], obs: Observation, kernel: str) -> list[str]:
    problems = _not_loaded(record, obs)
    if problems:
        return problems
    decls = declarations(record)
    for name, value in sorted(record["params"].items()):
        decl = decls[name]
        if not visible(decl):
            problems.extend(hidden_param(record, obs, decl, value))
            continue
        want = sysfs_value(decl, value)
        if dynamic_major(record, name, want):
            continue
        path = param_path(record, name)
        text = obs.text(path)
        if text is None:
            problems.append(f"{path}: cannot read ({obs.read_error(path)}), wanted {want!r}")
            continue
        live = strip_newline(text)
        if live != want:
            problems.append(f"{name} is {live!r}, wanted {want!r}")
    return problems


def hidden_param(
    record: dict[str, Any], obs: Observation, decl: dict[str, Any], value: Any
) -> list[str]:
    """A wanted parameter sysfs does not show (perm 0000): its value is only in the
    module's own message, found with the manifest's ``log`` regex since its last load
    (the parser kmod_load uses, so that both read the message alike)."""
    name = decl["name"]
    want = sysfs_value(decl, value)
    if not decl.get("log"):
        return [
            f"{NOT_OBSERVABLE}{name} has perm 0000, so no file in sysfs, and the manifest "
            f"gives no log regex to read it from the module's messages (wanted {want!r})"
        ]
    if obs.kernel_log_source == "none":
        return [f"{NOT_OBSERVABLE}{name}: the kernel log could not be read (wanted {want!r})"]
    unload = record["manifest"]["expect"].get("dmesg", {}).get("unload") or []
    seen = logged_value(decl, obs.kernel_log, unload)
    if seen is None:
        return [
            f"{name} (perm 0000): no kernel message since the last load matches "
            f"/{decl['log']}/ (wanted {want!r})"
        ]
    if seen["text"] != want:
        return [
            f"{name} is {seen['text']!r} by the module's message {seen['line']!r}, wanted {want!r}"
        ]
    return []


def param_files(record: dict[str, Any], obs: Observation, kernel: str) -> list[str]:
    problems = _not_loaded(record, obs)
    if problems:
        return problems
    decls = declarations(record)
    pdir = f"{sys_module(record)}/parameters"
    present = set(obs.listing(pdir) or [])
    for name, decl in sorted(decls.items()):
        path = param_path(record, name)
        if not visible(decl):
            if name in present:
                problems.append(f"{path} exists, but perm 0000 should keep it out of sysfs")
            continue
        if name not in present:
            problems.append(f"{path} is missing (perm {decl['perm']})")
            continue
        mode = obs.stat(path).get("mode")
        if mode != int(decl["perm"], 8):
            problems.append(f"{path} has mode {show_mode(mode)}, declared {decl['perm']}")
    for name in sorted(present - set(decls)):
        problems.append(f"{pdir}/{name} is not declared in the manifest")
    return problems


def proc_device_checks(record: dict[str, Any], obs: Observation, kernel: str) -> list[str]:
    problems = []
    table = parse_proc_devices(obs.text(PROC_DEVICES))
    for dev in record["manifest"]["expect"].get("proc_devices") or []:
        kind = dev.get("kind", "char")
        majors = majors_of(table, dev["name"], kind)
        want = wanted_major(record, dev)
        if not majors:
            problems.append(f"/proc/devices has no {kind} device {dev['name']!r}")
        elif want is not None and want not in majors:
            problems.append(
                f"/proc/devices has {kind} {dev['name']!r} on major {majors}, expected {want}"
            )
    return problems


def dev_nodes(record: dict[str, Any], obs: Observation, kernel: str) -> list[str]:
    problems = []
    expect = record["manifest"]["expect"]
    devices = {d["name"]: d for d in expect.get("proc_devices") or []}
    table = parse_proc_devices(obs.text(PROC_DEVICES))
    for node in expect.get("dev_nodes") or []:
        st = obs.stat(node["path"])
        if not st.get("exists"):
            problems.append(f"{node['path']} does not exist")
            continue
        if st.get("type") != node.get("type", "char"):
            problems.append(
                f"{node['path']} is a {st.get('type')}, not a {node.get('type', 'char')} device"
            )
            continue
        dev = devices[node["device"]]
        majors = majors_of(table, dev["name"], dev.get("kind", "char"))
        if st.get("major") not in majors:
            problems.append(
                f"{node['path']} has major {st.get('major')}, /proc/devices gives "
                f"{dev['name']!r} major {majors or 'none'}"
            )
        if st.get("minor") != node.get("minor", 0):
            problems.append(
                f"{node['path']} has minor {st.get('minor')}, expected {node.get('minor', 0)}"
            )
        if node.get("mode") and st.get("mode") != int(node["mode"], 8):
            problems.append(
                f"{node['path']} has mode {show_mode(st.get('mode'))}, expected {node['mode']}"
            )
    return problems


def _path_checks(checks: list[dict[str, Any]], obs: Observation) -> list[str]:
    problems = []
    for check in checks:
        path = check["path"]
        st = obs.stat(path)
        kind = check.get("kind", "file")
        if not st.get("exists"):
            problems.append(f"{path} does not exist")
            continue
        if st.get("type") != kind:
            problems.append(f"{path} is a {st.get('type')}, expected a {kind}")
            continue
        if check.get("mode") and st.get("mode") != int(check["mode"], 8):
            mode = show_mode(st.get("mode"))
            problems.append(f"{path} has mode {mode}, expected {check['mode']}")
        if check.get("content") is not None and kind == "file":
            text = obs.text(path)
            if text is None:
                problems.append(f"{path} cannot be read: {obs.read_error(path)}")
            elif not re.search(check["content"], text, re.MULTILINE):
                problems.append(
                    f"{path} content {text[:200]!r} does not match /{check['content']}/"
                )
    return problems


def sysfs(record: dict[str, Any], obs: Observation, kernel: str) -> list[str]:
    return _path_checks(record["manifest"]["expect"].get("sysfs") or [], obs)


def procfs(record: dict[str, Any], obs: Observation, kernel: str) -> list[str]:
    return _path_checks(record["manifest"]["expect"].get("procfs") or [], obs)


def dmesg_load(record: dict[str, Any], obs: Observation, kernel: str) -> list[str]:
    """The manifest's load messages, in order, from the module's current load.

    The current load starts at the newest line matching the first load pattern. It
    must come after the module's newest unload message (else it is an earlier load's
    and the current load printed nothing), and the other patterns must match in the
    manifest's order from there on. A module that prints nothing on unload cannot be
    told from an earlier load of its own that printed the same lines.
    """
    dmesg = record["manifest"]["expect"].get("dmesg") or {}
    patterns = dmesg.get("load") or []
    if not patterns:
        return []
    lines = obs.kernel_log
    first = re.compile(patterns[0])
    starts = [i for i, line in enumerate(lines) if first.search(line)]
    if not starts:
        return [
            f"no kernel message matches /{patterns[0]}/, the first load message "
            f"({len(lines)} lines from {obs.kernel_log_source})"
        ]
    start = starts[-1]
    unload = [re.compile(p) for p in dmesg.get("unload") or []]
    unloads = [i for i, line in enumerate(lines) if any(p.search(line) for p in unload)]
    if unloads and unloads[-1] > start:
        return [
            f"the newest load message {lines[start]!r} is older than the unload message "
            f"{lines[unloads[-1]]!r}: the current load printed no /{patterns[0]}/"
        ]
    problems = []
    at = start
    for pattern in patterns[1:]:
        found = next((i for i in range(at, len(lines)) if re.search(pattern, lines[i])), None)
        if found is None:
            problems.append(
                f"no kernel message of the current load (from {lines[start]!r}) matches "
                f"/{pattern}/ after {lines[at]!r}"
            )
        else:
            at = found
    return problems


def errno_text(name: str) -> str | None:
    number = getattr(errno, name, None)
    return os.strerror(number) if isinstance(number, int) else None


def _step_name(number: int, step: dict[str, Any]) -> str:
    op = step["op"]
    if op == "run":
        return f"step {number} (run {' '.join(step['argv'])[:80]})"
    if op == "wait":
        return f"step {number} (wait for {step['for']})"
    if op == "poll" and step.get("dmesg"):
        return f"step {number} (poll the kernel log)"
    where = step.get("path") or f"handle {step.get('handle')}"
    extra = f" data {step['data']!r}" if op == "write" else ""
    return f"step {number} ({op} {where}{extra})"


def _decoded(res: dict[str, Any], key: str) -> str:
    return base64.b64decode(res.get(key) or "").decode("utf-8", "replace")


def _step_outcome(step: dict[str, Any], res: dict[str, Any]) -> str | None:
    """What is wrong with one step's result, or None."""
    if step.get("error"):
        text = errno_text(step["error"])
        if res.get("ok"):
            return f"succeeded, expected {step['error']} ({text})"
        if res.get("errno") != step["error"]:
            got = (
                f"{res.get('errno')} ({res.get('error')})" if res.get("errno") else res.get("error")
            )
            return f"failed with {got}, expected {step['error']} ({text})"
        return None
    if not res.get("ok"):
        name = f"{res['errno']}: " if res.get("errno") else ""
        return f"failed: {name}{res.get('error')}"
    op, expect = step["op"], step.get("expect")
    if op == "read" and expect is not None:
        data = _decoded(res, "data_b64")
        if not re.search(expect, data):
            return f"read {data[:200]!r}, expected /{expect}/"
    if op == "ioctl":
        if step.get("expect_return") is not None and res.get("return") != step["expect_return"]:
            return f"returned {res.get('return')}, expected {step['expect_return']}"
        if step.get("expect_value") is not None and res.get("value") != step["expect_value"]:
            return f"left {res.get('value')} in the argument, expected {step['expect_value']}"
        if expect is not None:
            data = _decoded(res, "buffer_b64")
            if not re.search(expect, data):
                return f"left {data[:200]!r} in the buffer, expected /{expect}/"
    if op == "poll" and not res.get("matched"):
        seen = str(res.get("last", ""))[-300:]
        return f"no match for /{expect}/ within {step.get('timeout') or 10:g} s; last seen {seen!r}"
    if op == "run":
        out = str(res.get("stdout", ""))
        if res.get("rc") != step.get("rc", 0):
            err = (str(res.get("stderr", "")).strip() or out.strip())[-500:]
            return f"exited {res.get('rc')}, expected {step.get('rc', 0)}: {err}"
        if expect is not None and not re.search(expect, out):
            return f"printed {out[-300:]!r}, expected /{expect}/"
    return None


def functional(record: dict[str, Any], index: int, obs: Observation) -> list[str]:
    """A functional check's steps against their results: the first step that is not
    as the manifest says (module_utils/func_steps.py ran them on the target)."""
    check = record["manifest"]["expect"]["functional"][index]
    results = obs.functional(record, index)
    steps = check["steps"]
    if len(results) != len(steps):
        return [f"functional check {check['name']!r} did not run ({len(results)} results)"]
    blocked: dict[str, tuple[int, dict[str, Any]]] = {}
    for number, (step, res) in enumerate(zip(steps, results, strict=True), start=1):
        what = _step_name(number, step)
        if step.get("blocks"):
            if not res.get("blocked"):
                done = res.get("finished") or {}
                outcome = "succeeded" if done.get("ok") else f"failed: {done.get('error')}"
                return [
                    f"{what}: expected to block for {step.get('block_ms', 500)} ms, "
                    f"it finished at once ({outcome})"
                ]
            blocked[step["blocks"]] = (number, step)
            continue
        if step["op"] == "wait":
            if res.get("still_blocked"):
                return [f"{what}: {res.get('error')}"]
            number, step = blocked[step["for"]]
            what = _step_name(number, step) + ", once unblocked"
        problem = _step_outcome(step, res)
        if problem is not None:
            return [f"{what}: {problem}"]
    return []
