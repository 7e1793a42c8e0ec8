"""A pretend kernel for the kmod_load simulation tests: loads and unloads modules.

It works on the files the real kernel shows, which the test bind-mounts in a private
mount namespace: /sys/module and /dev (tmp dirs), /proc/devices and /dev/kmsg (tmp
files). Like devtmpfs, it creates a module's /dev nodes when it loads, unless
something already stands at the path, and removes them when it unloads, if they are
still its own (a node of the same device number).
The modules it knows, with their parameters and messages, are in the JSON file named
by KMODLAB_SIM_SPEC. Commands:

    simkernel.py load KMOD [P=V ...]   (modprobe: options of /etc/modprobe.d first)
    simkernel.py modprobe [--] KMOD [P=V ...]
                                       (modprobe's own command line, as
                                       kmodlab.lab.kmod_modprobe runs it)
    simkernel.py unload KMOD           (rmmod)
    simkernel.py modinfo KMOD          (modinfo)

Messages and exit codes follow kmod and kernel/params.c closely enough for the role
to be tested: "`hello' invalid for parameter `mylong'", "unknown parameter 'x'
ignored", "could not insert 'KMOD': Invalid argument", "Module KMOD is in use". A
module whose spec has ``init_error`` ({"errno": "EEXIST", "lines": [[level, text]]})
fails its init after printing those lines, as a real one that hits a kernel warning.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import stat
import sys

SYS = "/sys/module"
DEVICES = "/proc/devices"
KMSG = "/dev/kmsg"


def spec() -> dict:
    with open(os.environ["KMODLAB_SIM_SPEC"]) as handle:
        return json.load(handle)


def kmsg(message: str, level: int = 6) -> None:
    with open(KMSG) as handle:
        seq = sum(1 for line in handle if not line.startswith(" "))
    with open(KMSG, "a") as handle:
        handle.write(f"{level},{seq + 1},{(seq + 1) * 1000},-;{message}\n")


def split_args(text: str) -> list[str]:
    """The kernel's next_arg(): spaces separate, double quotes group."""
    out, cur, quote = [], "", False
    for ch in text:
        if ch == '"':
            quote = not quote
            continue
        if ch.isspace() and not quote:
            if cur:
                out.append(cur)
            cur = ""
            continue
        cur += ch
    if cur:
        out.append(cur)
    return out


def config_options(kmod: str) -> list[str]:
    out = []
    for path in sorted(glob.glob("/etc/modprobe.d/*.conf")):
        with open(path) as handle:
            for line in handle:
                parts = line.strip().split(None, 2)
                if len(parts) == 3 and parts[0] == "options" and parts[1].replace("-", "_") == kmod:
                    out.extend(split_args(parts[2]))
    return out


def parse_scalar(ptype: str, text: str):
    if ptype in ("bool", "invbool"):
        low = text.lower()
        if low in ("y", "1", "on"):
            return "Y"
        if low in ("n", "0", "off"):
            return "N"
        raise ValueError(text)
    if ptype == "charp":
        return text
    return str(int(text, 0))


def scalar_text(value) -> str:
    """A spec default (JSON) or a parsed value as the kernel would be given it."""
    if value is True:
        return "Y"
    if value is False:
        return "N"
    return str(value)


def devices() -> list[str]:
    with open(DEVICES) as handle:
        return handle.read().splitlines()


def write_devices(lines: list[str]) -> None:
    with open(DEVICES, "w") as handle:
        handle.write("\n".join(lines) + "\n")


def major_taken(kind: str, major: int) -> str | None:
    section = None
    for line in devices():
        if line.startswith("Character"):
            section = "char"
        elif line.startswith("Block"):
            section = "block"
        elif line.strip() and section == kind:
            num, name = line.split(None, 1)
            if int(num) == major:
                return name
    return None


def add_device(kind: str, major: int, name: str) -> None:
    lines = devices()
    header = "Character devices:" if kind == "char" else "Block devices:"
    index = lines.index(header) + 1
    lines.insert(index, f"{major:3d} {name}")
    write_devices(lines)


def registered_majors(mod: dict) -> dict[str, int]:
    """{device name: major} of the module's devices in /proc/devices."""
    names = {d["name"] for d in mod.get("devices", [])}
    out = {}
    for line in devices():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0].isdigit() and parts[1] in names:
            out[parts[1]] = int(parts[0])
    return out


def remove_devices(names: set[str]) -> None:
    write_devices(
        [
            line
            for line in devices()
            if not (line.strip() and line.split(None, 1)[-1] in names and line.strip()[0].isdigit())
        ]
    )


def create_nodes(mod: dict, majors: dict[str, int]) -> None:
    """devtmpfs: a node per dev node of the module, unless the path is taken."""
    for node in mod.get("nodes", []):
        path = node["path"]
        if os.path.lexists(path) or node["device"] not in majors:
            continue
        kind = stat.S_IFBLK if node.get("type") == "block" else stat.S_IFCHR
        mode = int(node.get("mode") or "0600", 8)
        os.mknod(path, kind | mode, os.makedev(majors[node["device"]], node.get("minor", 0)))
        os.chmod(path, mode)


def remove_nodes(mod: dict, majors: dict[str, int]) -> None:
    """devtmpfs: remove the module's nodes that are still its own."""
    for node in mod.get("nodes", []):
        path = node["path"]
        try:
            st = os.lstat(path)
        except OSError:
            continue
        kind = stat.S_ISBLK if node.get("type") == "block" else stat.S_ISCHR
        own = os.makedev(majors.get(node["device"], -1), node.get("minor", 0))
        if kind(st.st_mode) and st.st_rdev == own:
            os.unlink(path)


def fail(message: str, code: int = 1) -> int:
    sys.stderr.write(message + "\n")
    return code


def load(kmod: str, args: list[str], auto: bool = False) -> int:
    mods = spec()["modules"]
    if kmod not in mods:
        return fail(f"modprobe: FATAL: Module {kmod} not found in directory /lib/modules/sim")
    mod = mods[kmod]
    base = os.path.join(SYS, kmod)
    if os.path.exists(os.path.join(base, "initstate")):
        return 0
    for dep in mod.get("depends", []):
        if not os.path.exists(os.path.join(SYS, dep, "initstate")):
            rc = load(dep, [], auto=True)
            if rc:
                return rc
    values = {}
    for name, p in mod["params"].items():
        values[name] = p["default"]
    tokens = config_options(kmod) + ([] if auto else args)
    for token in tokens:
        name, _eq, text = token.partition("=")
        if name not in mod["params"]:
            kmsg(f"{kmod}: unknown parameter '{name}' ignored")
            continue
        p = mod["params"][name]
        try:
            if p.get("array"):
                value = [parse_scalar(p["type"], t) for t in text.split(",")]
            else:
                value = parse_scalar(p["type"], text)
        except ValueError:
            kmsg(f"{kmod}: `{text}' invalid for parameter `{name}'")
            return fail(f"modprobe: ERROR: could not insert '{kmod}': Invalid argument")
        if text in mod.get("reject", {}).get(name, []):
            kmsg(f"{kmod}: `{text}' invalid for parameter `{name}'")
            return fail(f"modprobe: ERROR: could not insert '{kmod}': Invalid argument")
        values[name] = value
    registered = []
    for dev in mod.get("devices", []):
        major = int(values[dev["major_param"]]) if dev.get("major_param") else dev.get("major")
        if not major:
            kmsg(f"{kmod}: major 0 refused")
            return fail(f"modprobe: ERROR: could not insert '{kmod}': Invalid argument")
        owner = major_taken(dev.get("kind", "char"), major)
        if owner:
            kmsg(f"{kmod}: cannot register major {major}: -16")
            return fail(f"modprobe: ERROR: could not insert '{kmod}': Device or resource busy")
        registered.append((dev.get("kind", "char"), major, dev["name"]))
    if mod.get("init_error"):
        error = mod["init_error"]
        for level, line in error.get("lines", []):
            kmsg(line, level)
        code = getattr(errno, error.get("errno", "EINVAL"))
        return fail(f"modprobe: ERROR: could not insert '{kmod}': {os.strerror(code)}")
    os.makedirs(os.path.join(base, "holders"))
    os.makedirs(os.path.join(base, "parameters"))
    for kind, major, name in registered:
        add_device(kind, major, name)
    create_nodes(mod, {name: major for _kind, major, name in registered})
    with open(os.path.join(base, "initstate"), "w") as handle:
        handle.write("live\n")
    with open(os.path.join(base, "refcnt"), "w") as handle:
        handle.write("0\n")
    if mod.get("srcversion"):
        with open(os.path.join(base, "srcversion"), "w") as handle:
            handle.write(mod["srcversion"] + "\n")
    for name, p in mod["params"].items():
        if int(p["perm"], 8) == 0:
            continue
        value = values[name]
        if p.get("array") and p.get("counted", True) is False:
            # no count variable: all elements, the ones not given as initialised
            value = list(value) + list(p["default"])[len(value) :]
        if p.get("array"):
            text = ",".join(parse_scalar(p["type"], scalar_text(v)) for v in value)
        elif p["type"] in ("bool", "invbool"):
            text = parse_scalar(p["type"], {True: "Y", False: "N"}.get(value, str(value)))
        else:
            text = str(value)
        path = os.path.join(base, "parameters", name)
        with open(path, "w") as handle:
            handle.write(text + "\n")
        os.chmod(path, int(p["perm"], 8))
    with open(os.path.join(base, ".sim.json"), "w") as handle:
        json.dump(values, handle)
    for dep in mod.get("depends", []):
        dep_base = os.path.join(SYS, dep)
        open(os.path.join(dep_base, "holders", kmod), "w").close()
        with open(os.path.join(dep_base, "refcnt")) as handle:
            count = int(handle.read())
        with open(os.path.join(dep_base, "refcnt"), "w") as handle:
            handle.write(f"{count + 1}\n")
    for line in mod.get("load_lines", []):
        kmsg(line.format(**{k: v for k, v in values.items() if not isinstance(v, list)}))
    return 0


def unload(kmod: str) -> int:
    mods = spec()["modules"]
    base = os.path.join(SYS, kmod)
    if not os.path.exists(os.path.join(base, "initstate")):
        return fail(f"rmmod: ERROR: Module {kmod} is not currently loaded")
    with open(os.path.join(base, "refcnt")) as handle:
        if int(handle.read()) > 0:
            return fail(f"rmmod: ERROR: Module {kmod} is in use")
    mod = mods.get(kmod, {})
    shutil.rmtree(base)
    remove_nodes(mod, registered_majors(mod))
    remove_devices({d["name"] for d in mod.get("devices", [])})
    for dep in mod.get("depends", []):
        dep_base = os.path.join(SYS, dep)
        holder = os.path.join(dep_base, "holders", kmod)
        if os.path.exists(holder):
            os.unlink(holder)
            with open(os.path.join(dep_base, "refcnt")) as handle:
                count = int(handle.read())
            with open(os.path.join(dep_base, "refcnt"), "w") as handle:
                handle.write(f"{count - 1}\n")
    for line in mod.get("unload_lines", []):
        kmsg(line)
    return 0


def modinfo(kmod: str) -> int:
    mods = spec()["modules"]
    if kmod not in mods:
        return fail(f"modinfo: ERROR: Module {kmod} not found.")
    mod = mods[kmod]
    print(f"filename:       /lib/modules/sim/updates/dkms/{mod['name']}.ko")
    if mod.get("installed_srcversion"):
        print(f"srcversion:     {mod['installed_srcversion']}")
    return 0


def modprobe(args: list[str]) -> int:
    """``modprobe [--] KMOD [P=V ...]``: load KMOD (and what it depends on)."""
    if args[:1] == ["--"]:
        args = args[1:]
    if not args or args[0].startswith("-"):
        return fail(f"modprobe (simulation): unsupported arguments {args}", 2)
    return load(args[0].replace("-", "_"), args[1:])


def main(argv: list[str]) -> int:
    if argv[1] == "modprobe":
        return modprobe(argv[2:])
    command, kmod = argv[1], argv[2].replace("-", "_")
    if command == "load":
        return load(kmod, argv[3:])
    if command == "unload":
        return unload(kmod)
    if command == "modinfo":
        return max(modinfo(name.replace("-", "_")) for name in argv[2:])
    return fail(f"unknown command {command}", 2)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
