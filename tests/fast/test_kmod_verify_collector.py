"""The GNU build ID reader (module_utils, shared by the kmod_load probe and the verify
collector), what the collector's request asks for per state, and how the collector
travels: a zip of ``__main__.py`` and the module_utils it imports, run by a bootstrap.

The build ID tells whether the loaded module is the installed .ko when neither has a
srcversion (our modules on Debian 12: no MODULE_VERSION, no
CONFIG_MODULE_SRCVERSION_ALL). The kernel shows the loaded module's
``.note.gnu.build-id`` section as ``/sys/module/KMOD/notes/.note.gnu.build-id``
(the raw notes); the .ko holds the same section.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

from ansible_collections.kmodlab.lab.plugins.module_utils import buildid as kmodlab_buildid
from ansible_collections.kmodlab.lab.plugins.module_utils import files, secure_boot
from kmod_fixtures import MODULES, SELECTION

from kmodlab.selection import resolve
from kmodlab.verify import observe
from kmodlab.verify.expectations import Expectation
from kmodlab.verify.observe import build_request, collector_argv, collector_source

BUILD_ID = bytes.fromhex("5cde13210ee5388f90b5bf10d67550c96eb0b534")
KERNEL = "6.1.0-18-amd64"


def pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def note(order: str, name: bytes, ntype: int, desc: bytes) -> bytes:
    return struct.pack(order + "III", len(name), len(desc), ntype) + pad(name) + pad(desc)


def elf(notes: bytes, bits: int = 64, order: str = "<") -> bytes:
    """A relocatable ELF with a null section, a PROGBITS one and one SHT_NOTE section."""
    ehsize, shentsize = (64, 64) if bits == 64 else (52, 40)
    data = b"\x90" * 8 + notes
    shoff = ehsize + len(data)
    ident = b"\x7fELF" + bytes([2 if bits == 64 else 1, 1 if order == "<" else 2, 1]) + b"\0" * 9
    if bits == 64:
        header = ident + struct.pack(
            order + "HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, ehsize, 0, 0, shentsize, 3, 0
        )
        layout = order + "IIQQQQIIQQ"
    else:
        header = ident + struct.pack(
            order + "HHIIIIIHHHHHH", 1, 3, 1, 0, 0, shoff, 0, ehsize, 0, 0, shentsize, 3, 0
        )
        layout = order + "IIIIIIIIII"

    def section(sh_type: int, offset: int, size: int) -> bytes:
        return struct.pack(layout, 0, sh_type, 2, 0, offset, size, 0, 0, 4, 0)

    sections = section(0, 0, 0) + section(1, ehsize, 8) + section(7, ehsize + 8, len(notes))
    return header + data + sections


def build_id(path: Path) -> dict:
    return kmodlab_buildid.build_id(str(path))


def test_build_id_of_a_module_file(tmp_path: Path):
    linux = note("<", b"Linux\0", 0x100, b"6.1.0-18-amd64\0")
    gnu = note("<", b"GNU\0", 3, BUILD_ID)
    ko = tmp_path / "hello-5.ko"
    ko.write_bytes(elf(linux + gnu) + b"~Module signature appended~\n")
    assert build_id(ko) == {"ok": True, "build_id": BUILD_ID.hex()}
    (tmp_path / "hello-5.ko.xz").write_bytes(lzma.compress(ko.read_bytes()))
    (tmp_path / "hello-5.ko.gz").write_bytes(gzip.compress(ko.read_bytes()))
    assert build_id(tmp_path / "hello-5.ko.xz")["build_id"] == BUILD_ID.hex()
    assert build_id(tmp_path / "hello-5.ko.gz")["build_id"] == BUILD_ID.hex()
    big32 = tmp_path / "be32.ko"
    big32.write_bytes(elf(note(">", b"GNU\0", 3, BUILD_ID), bits=32, order=">"))
    assert build_id(big32)["build_id"] == BUILD_ID.hex()


def test_build_id_of_the_sysfs_note_file(tmp_path: Path):
    order = "<" if sys.byteorder == "little" else ">"
    notes = tmp_path / ".note.gnu.build-id"
    notes.write_bytes(note(order, b"GNU\0", 3, BUILD_ID))
    assert build_id(notes) == {"ok": True, "build_id": BUILD_ID.hex()}


def test_no_build_id(tmp_path: Path):
    assert build_id(tmp_path / "gone.ko") == {"ok": False, "error": "No such file or directory"}
    bare = tmp_path / "bare.ko"
    bare.write_bytes(elf(note("<", b"Linux\0", 0x100, b"x\0")))
    assert build_id(bare) == {"ok": False, "error": "no GNU build ID note"}
    (tmp_path / "bad.ko.xz").write_bytes(b"not xz")
    assert "cannot decompress" in build_id(tmp_path / "bad.ko.xz")["error"]
    (tmp_path / "cut.ko").write_bytes(elf(b"")[:40])
    assert "not a valid ELF" in build_id(tmp_path / "cut.ko")["error"]


def test_the_request_per_state(tmp_path: Path):
    exp = Expectation("lab1", KERNEL, resolve(MODULES, SELECTION), tmp_path / "lab1.json")
    request = build_request(exp)
    dkms = f"/lib/modules/{KERNEL}/updates/dkms"
    # present: the build IDs of the loaded module and of every place DKMS installs it
    assert "/sys/module/hello_5/notes/.note.gnu.build-id" in request["build_id"]
    assert {f"{dkms}/hello-5.ko", f"{dkms}/hello_5.ko.xz"} <= set(request["build_id"])
    assert not any("/base" in p or "/user" in p for p in request["build_id"])
    # absent: DKMS's folder, the sources and the installed files must be gone
    assert {"/var/lib/dkms/user", "/usr/src/user-2.0.1", f"{dkms}/user.ko"} <= set(request["stat"])
    assert "/var/lib/dkms/base" not in request["stat"]
    # present: the taint flags of the loaded module; every host: its Secure Boot state
    assert "/sys/module/hello_5/taint" in request["read"]
    assert not any(p.endswith("/taint") and "/base" in p for p in request["read"])
    assert request["secure_boot"] is True


def run_collector(request: dict, cwd: Path, tmpdir: Path | None = None) -> dict:
    """The collector as observe sends it (bootstrap, zip, request), under ``python3 -S``:
    without site-packages, so the module_utils can only come from the zip."""
    env = dict(os.environ, TMPDIR=str(tmpdir)) if tmpdir else None
    proc = subprocess.run(
        [sys.executable, "-S", *collector_argv(request)],
        capture_output=True,
        text=True,
        check=True,
        cwd=cwd,
        env=env,
    )
    return json.loads(proc.stdout)


def test_the_collector_reads_build_ids_on_the_host(tmp_path: Path):
    ko = tmp_path / "m.ko"
    ko.write_bytes(elf(note("<", b"GNU\0", 3, BUILD_ID)))
    request = {"build_id": [str(ko), str(tmp_path / "none.ko")]}
    found = run_collector(request, tmp_path)["build_id"]
    assert found[str(ko)] == {"ok": True, "build_id": BUILD_ID.hex()}
    assert found[str(tmp_path / "none.ko")]["ok"] is False


def test_the_collector_zip_imports_the_module_utils():
    source = observe.COLLECTOR.read_text()
    assert "exec(" not in source and "SHARED_SOURCES" not in source
    names = zipfile.ZipFile(io.BytesIO(observe.collector_zip())).namelist()
    package = "ansible_collections/kmodlab/lab/plugins/module_utils"
    assert names[0] == "__main__.py"
    assert {
        f"{package}/{m}.py"
        for m in ("buildid", "dkms_tree", "dpkg_status", "files", "kernel_log", "secure_boot")
    } <= set(names)
    # params comes along because kernel_log imports it (found as AnsiballZ finds them)
    assert f"{package}/params.py" in names and f"{package}/__init__.py" in names
    assert f"{package}/kmod.py" not in names
    assert observe.collector_zip() == observe.collector_zip()
    # one argument of the remote command: far below Linux's 128 KiB per argument
    assert len(observe.collector_payload()) < observe.PAYLOAD_LIMIT < observe.ARG_LIMIT
    assert len(observe.BOOTSTRAP) < 400


def test_the_collector_observes_with_the_shared_readers(tmp_path: Path):
    (tmp_path / "f").write_text("text\n")
    os.chmod(tmp_path / "f", 0o640)
    (tmp_path / "l").symlink_to(tmp_path / "f")
    request = {
        "stat": [str(tmp_path / "f"), str(tmp_path / "l"), str(tmp_path / "gone"), "/dev/null"],
        "read": [str(tmp_path / "f"), str(tmp_path / "gone")],
        "list": [str(tmp_path)],
        "kernel_log": True,
        "secure_boot": True,
    }
    private = tmp_path / "tmp"
    private.mkdir()
    out = run_collector(request, tmp_path, private)
    assert out["stat"][str(tmp_path / "f")] == files.stat_path(str(tmp_path / "f"))
    assert out["stat"][str(tmp_path / "f")]["mode"] == 0o640
    assert out["stat"][str(tmp_path / "l")]["link"] is True
    assert out["stat"][str(tmp_path / "gone")] == {
        "exists": False,
        "error": "No such file or directory",
    }
    assert out["stat"]["/dev/null"]["type"] == "char"
    assert out["read"][str(tmp_path / "f")] == {"ok": True, "text": "text\n"}
    assert out["read"][str(tmp_path / "gone")]["ok"] is False
    assert out["list"][str(tmp_path)] == ["f", "l", "tmp"]
    assert out["kernel_log"]["source"] in ("kmsg", "dmesg", "journalctl", "none")
    # this machine's Secure Boot state, read by module_utils/secure_boot.py from the zip
    assert out["secure_boot"] == {
        **secure_boot.secure_boot("/"),
        "lockdown": secure_boot.lockdown("/"),
    }
    # the bootstrap leaves no temporary zip behind
    assert os.listdir(private) == []


def test_collector_source_runs_the_same_zip(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-S", "-c", collector_source(), json.dumps({"list": [str(tmp_path)]})],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert json.loads(proc.stdout)["list"] == {str(tmp_path): []}


def test_the_request_per_delivery(tmp_path: Path):
    recs = resolve(MODULES, SELECTION)
    dkms = build_request(Expectation("lab1", KERNEL, recs, tmp_path / "lab1.json"))
    deb = build_request(Expectation("fleet1", KERNEL, recs, tmp_path / "f.json", None, "deb"))
    # a DKMS host: its DKMS tree, nothing of dpkg (no slower than before)
    assert dkms["dkms"]["tree"] == "/var/lib/dkms" and "dpkg" not in dkms
    assert "rollout" not in dkms and observe.ROLLOUT_FACT not in dkms["read"]
    # a package host: dpkg for the running kernel's package of each present or config
    # module, its rollout state; nothing of DKMS
    assert "dkms" not in deb
    assert set(deb["dpkg"]) == {"packages"}
    assert sorted(deb["dpkg"]["packages"]) == [
        f"kmodlab-{m}-modules-{KERNEL}" for m in ("base", "gadget", "hello-5", "memory")
    ]
    assert deb["rollout"] == observe.ROLLOUT_FACT
    kmodlab = f"/lib/modules/{KERNEL}/updates/kmodlab"
    assert f"{kmodlab}/hello_5.ko" in deb["build_id"]
    assert not any("/updates/dkms/" in p for p in deb["build_id"] + deb["stat"])
    assert f"{kmodlab}/user.ko" in deb["stat"]
    assert not any(p.startswith(("/var/lib/dkms", "/usr/src")) for p in deb["stat"])


def test_the_collector_asks_dpkg_and_reads_the_rollout_state(tmp_path: Path):
    """The dpkg answers are dpkg's own (module_utils/dpkg_status.py builds the argv); the
    rollout fact is cut down to what the report shows, on the host."""
    record = {"params": {}, "manifest": {"name": "hello-5"}, "state": "present"}
    fact = {
        "schema": 1,
        "good": {
            "hello-5": {
                "version": "1.1.0",
                "signer": "kmodlab",
                "sig_key": "AA:BB",
                "when": "2025-01-01T10:00:00Z",
                "packages": {KERNEL: {"package": "p", "file": "f", "sha256": "0" * 64}},
                "record": {**record, "manifest": {"description": "x" * 70000}},
            }
        },
        "pending": {"gadget": {"version": "0.4.0"}},
        "history": [],
    }
    path = tmp_path / "kmodlab_rollout.fact"
    path.write_text(json.dumps(fact))  # more than read's 64 KiB limit
    request = {"dpkg": {"packages": ["kmodlab-none-modules-0"]}, "rollout": str(path)}
    out = run_collector(request, tmp_path)
    assert out["rollout"] == {
        "found": True,
        "good": {
            "hello-5": {"version": "1.1.0", "signer": "kmodlab", "when": "2025-01-01T10:00:00Z"}
        },
        "pending": ["gadget"],
    }
    dpkg = out["dpkg"]
    assert set(dpkg) == {"query", "list", "verify"}
    if dpkg["query"]["rc"] != 127:  # this machine has dpkg: nothing of kmodlab installed
        assert dpkg["query"]["rc"] == 1 and "no packages found" in dpkg["query"]["stderr"]
        assert dpkg["list"]["kmodlab-none-modules-0"]["rc"] != 0
        assert dpkg["verify"]["kmodlab-none-modules-0"]["rc"] == 1
    path.unlink()
    assert run_collector({"rollout": str(path)}, tmp_path)["rollout"] == {"found": False}
    path.write_text("{not json")
    assert (
        "not the rollout state's JSON"
        in run_collector({"rollout": str(path)}, tmp_path)["rollout"]["error"]
    )


def test_a_whole_catalog_request_fits_one_ssh_command(tmp_path: Path):
    """observe sends bootstrap, zip and request as one remote command, which is one
    argument of ssh: at most 128 KiB (MAX_ARG_STRLEN). A request as large as the whole
    catalog's (~100 KB of JSON) is sent compressed, and the collector reads it."""
    paths = [str(tmp_path / f"missing-{n:05d}-{'x' * 60}") for n in range(2000)]
    request = {"stat": paths, "read": paths[:10]}
    assert len(json.dumps(request)) > 131072
    argv = collector_argv(request)
    assert sum(len(a) for a in argv) < 131072 // 2, [len(a) for a in argv]
    out = run_collector(request, tmp_path)
    assert set(out["stat"]) == set(paths)
    assert all(not entry["exists"] for entry in out["stat"].values())
