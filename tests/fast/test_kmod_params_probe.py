"""The kmodlab.lab.kmod_params probe module against a fake /sys, /proc, /dev/kmsg and /etc.

The module reads everything under its ``root`` option; here that is a tmp dir laid out
like a host with hello_5 loaded. ``run_command`` (modinfo, dmesg) is mocked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml

from kmodlab.selection import resolve

REPO = Path(__file__).resolve().parents[2]
MODULES = Path(__file__).parent / "fixtures" / "kmod" / "modules"
FACT = "/etc/ansible/facts.d/kmodlab_kmod_load.fact"

probe = importlib.import_module("ansible_collections.kmodlab.lab.plugins.modules.kmod_params")


class Failed(Exception):
    pass


class FakeModule:
    def __init__(self, params: dict[str, Any], check_mode: bool = False, modinfo: str = ""):
        self.params = {"fact_path": FACT, "kernel_log_since": None, "root": "/", **params}
        self.check_mode = check_mode
        self.modinfo = modinfo
        self.commands: list[list[str]] = []

    def get_bin_path(self, name, required=False):
        return f"/usr/bin/{name}"

    def run_command(self, argv):
        self.commands.append(argv)
        if argv[0].endswith("modinfo"):
            return (0, self.modinfo, "") if self.modinfo else (1, "", "not found")
        return 1, "", "no dmesg here"

    def fail_json(self, **kwargs):
        raise Failed(kwargs)


def write(root: Path, path: str, text: str, mode: int = 0o644) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    os.chmod(target, mode)


def records(*entries):
    return resolve(MODULES, list(entries))


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """hello_5 loaded with its lab parameters; memory on major 60; a kernel log."""
    root = tmp_path / "root"
    base = "/sys/module/hello_5"
    write(root, f"{base}/initstate", "live\n")
    write(root, f"{base}/refcnt", "0\n")
    (root / base.lstrip("/") / "holders").mkdir(parents=True)
    for name, text, mode in (
        ("myint", "42\n", 0o644),
        ("mylong", "9999\n", 0o640),
        ("mystring", "hello lab\n", 0o444),
        ("mybool", "N\n", 0o644),
        ("myintarray", "10,-20,30\n", 0o600),
    ):
        write(root, f"{base}/parameters/{name}", text, mode)
    write(root, "/proc/devices", "Character devices:\n  1 mem\n 60 memory\n\nBlock devices:\n")
    write(
        root,
        "/dev/kmsg",
        "6,1,1,-;Linux version\n6,2,2,-;hello_5: hello, world; myint=42\n",
    )
    fact = {
        "modules": {
            "hello-5": {
                "kmod": "hello_5",
                "version": "1.0.0",
                "state": "present",
                "persist": True,
                "params": {
                    "myint": 42,
                    "myshort": 7,
                    "mystring": "hello lab",
                    "myintarray": [10, -20, 30],
                },
            }
        }
    }
    write(root, FACT, json.dumps(fact))
    write(root, "/etc/modprobe.d/hello-5.conf", "options hello_5 myint=42\n")
    return root


def test_documentation_and_argument_spec_agree():
    doc = yaml.safe_load(probe.DOCUMENTATION)
    options = doc["options"]
    assert set(options) == set(probe.ARGUMENT_SPEC)
    for name, spec in probe.ARGUMENT_SPEC.items():
        opt = options[name]
        assert opt["type"] == spec["type"], name
        assert opt.get("default") == spec.get("default"), name
        assert bool(opt.get("required", False)) == bool(spec.get("required", False)), name
        assert opt.get("elements") == spec.get("elements"), name
        assert opt.get("description"), name
    assert doc["attributes"]["check_mode"]["support"] == "full"
    assert yaml.safe_load(probe.EXAMPLES)
    assert yaml.safe_load(probe.RETURN)


def test_return_documents_every_key(host: Path):
    out = probe.run(FakeModule({"modules": records({"name": "hello-5"}), "root": str(host)}))
    documented = yaml.safe_load(probe.RETURN)
    assert set(out) - {"changed"} == set(documented)
    entry_keys = set(documented["modules"]["contains"])
    since_only = {"kernel_log", "kernel_explain", "param_errors", "messages_missing"}
    assert set(out["modules"][0]) == entry_keys - since_only
    since = probe.run(
        FakeModule(
            {"modules": records({"name": "hello-5"}), "root": str(host), "kernel_log_since": 0}
        )
    )
    assert set(since["modules"][0]) == entry_keys


def test_unchanged_host_plans_nothing(host: Path):
    recs = records({"name": "hello-5"})
    content = "options hello_5 myint=42\n"
    recs[0]["files"] = {
        "/etc/modprobe.d/hello-5.conf": content,
        "/etc/modules-load.d/hello-5.conf": None,
    }
    module = FakeModule({"modules": recs, "root": str(host)})
    out = probe.run(module)
    assert out["changed"] is False
    assert out["load"] == [] and out["unload"] == []
    m = out["modules"][0]
    assert m["loaded"] is True and m["action"] == "none" and m["mismatches"] == []
    assert m["live"]["myintarray"] == "10,-20,30"
    assert m["wanted"] == {
        "myint": "42",
        "myintarray": "10,-20,30",
        "myshort": "7",
        "mystring": "hello lab",
    }
    assert m["files_changed"] == []
    assert m["recorded"]["params"]["myshort"] == 7
    assert out["kernel_log_cursor"] == 2 and out["kernel_log_source"] == "kmsg"
    assert out["fact"]["exists"] is True
    # check mode is the same read
    assert probe.run(FakeModule({"modules": recs, "root": str(host)}, check_mode=True)) == out


def test_mismatch_and_files_are_reported(host: Path):
    (host / "sys/module/hello_5/parameters/myint").write_text("5\n")
    recs = records({"name": "hello-5"}, {"name": "memory"})
    recs[0]["files"] = {
        "/etc/modprobe.d/hello-5.conf": "new\n",
        "/etc/modules-load.d/hello-5.conf": "hello_5\n",
    }
    out = probe.run(FakeModule({"modules": recs, "root": str(host)}))
    hello = next(m for m in out["modules"] if m["name"] == "hello-5")
    memory = next(m for m in out["modules"] if m["name"] == "memory")
    assert hello["mismatches"] == [{"param": "myint", "wanted": "42", "live": "5"}]
    assert hello["action"] == "reload"
    assert hello["files"]["/etc/modprobe.d/hello-5.conf"]["content"] == "options hello_5 myint=42\n"
    assert sorted(hello["files_changed"]) == [
        "/etc/modprobe.d/hello-5.conf",
        "/etc/modules-load.d/hello-5.conf",
    ]
    assert hello["previous"]["params"]["myint"] == "5"
    assert hello["previous"]["params"]["myshort"] == "7"
    # memory is not loaded; major 60 in /proc/devices carries its own device name
    # ("memory"), which is not another driver's: no conflict.
    assert memory["action"] == "load" and out["conflicts"] == []
    assert out["load"] == ["hello-5", "memory"] and out["unload"] == ["hello-5"]


def test_major_owner_conflict(host: Path):
    (host / "proc/devices").write_text("Character devices:\n 60 othermem\n")
    out = probe.run(FakeModule({"modules": records({"name": "memory"}), "root": str(host)}))
    assert "major 60" in out["conflicts"][0] and "'othermem'" in out["conflicts"][0]


def _build_id_note(build_id: bytes) -> bytes:
    """/sys/module/KMOD/notes/.note.gnu.build-id: one ELF note, type NT_GNU_BUILD_ID."""
    return struct.pack("<III", 4, len(build_id), 3) + b"GNU\0" + build_id


def _ko(build_id: bytes) -> bytes:
    """The smallest ELF64 .ko with a .note.gnu.build-id section (SHT_NOTE)."""
    notes = _build_id_note(build_id)
    shoff = 64 + len(notes)
    header = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    header += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 2, 0)
    null = b"\0" * 64
    note = struct.pack("<IIQQQQIIQQ", 0, 7, 2, 0, 64, len(notes), 0, 0, 4, 0)
    return header + notes + null + note


@pytest.mark.parametrize("same", [True, False])
def test_rebuilt_module_without_srcversion_is_told_by_its_build_id(host: Path, same: bool):
    """Debian 6.1 modules without MODULE_VERSION have no srcversion on either side: a
    DKMS rebuild (e.g. a version bump of the same sources) differs in the build ID."""
    loaded, installed = bytes.fromhex("aa" * 20), bytes.fromhex(("aa" if same else "bb") * 20)
    note = host / "sys/module/hello_5/notes/.note.gnu.build-id"
    note.parent.mkdir(parents=True)
    note.write_bytes(_build_id_note(loaded))
    ko = host / "lib/modules/x/updates/dkms/hello-5.ko"
    ko.parent.mkdir(parents=True)
    ko.write_bytes(_ko(installed))
    module = FakeModule(
        {"modules": records({"name": "hello-5"}), "root": str(host)},
        modinfo="filename:       /lib/modules/x/updates/dkms/hello-5.ko\n",
    )
    out = probe.run(module)
    entry = out["modules"][0]
    assert entry["installed"]["build_id"] == installed.hex()
    if same:
        assert entry["action"] == "none", entry
    else:
        assert entry["action"] == "reload"
        assert any(
            f"build ID {loaded.hex()}, installed {installed.hex()}" in r for r in entry["reasons"]
        )


def test_installed_build_change_reloads(host: Path):
    (host / "sys/module/hello_5/srcversion").write_text("AAA\n")
    module = FakeModule(
        {"modules": records({"name": "hello-5"}), "root": str(host)},
        modinfo="filename: /lib/modules/x/updates/dkms/hello-5.ko\nsrcversion:     BBB\n",
    )
    out = probe.run(module)
    assert out["modules"][0]["installed"]["srcversion"] == "BBB"
    assert out["modules"][0]["action"] == "reload"
    assert module.commands[0][-3:] == ["-b", str(host), "hello_5"]


def test_kernel_log_since_cursor(host: Path):
    with open(host / "dev/kmsg", "a") as handle:
        handle.write(
            "3,3,3,-;hello_5: `hello' invalid for parameter `mylong'\n6,4,4,-;other: noise\n"
        )
    out = probe.run(
        FakeModule(
            {"modules": records({"name": "hello-5"}), "root": str(host), "kernel_log_since": 2}
        )
    )
    m = out["modules"][0]
    assert m["kernel_log"] == ["hello_5: `hello' invalid for parameter `mylong'"]
    assert m["param_errors"] == [
        {
            "param": "mylong",
            "value": "hello",
            "message": "hello_5: `hello' invalid for parameter `mylong'",
        }
    ]
    # the load pattern was printed before the cursor: not seen since
    assert m["messages_missing"]["load"] == ["hello_5: hello, world; myint=-?[0-9]+"]
    assert m["messages_missing"]["unload"] == ["hello_5: goodbye, world"]
    assert out["kernel_log_cursor"] == 4


def test_unrepresentable_wanted_value_fails_naming_the_module(host: Path):
    recs = records({"name": "hello-5", "params": {"mystring": 'say "hi"'}})
    with pytest.raises(Failed) as exc:
        probe.run(FakeModule({"modules": recs, "root": str(host)}))
    assert "hello-5: parameter mystring" in exc.value.args[0]["msg"]


def test_record_without_keys_fails(host: Path):
    with pytest.raises(Failed, match="lacks 'kmod'"):
        probe.run(FakeModule({"modules": [{"name": "x", "state": "present"}], "root": str(host)}))


def test_no_fact_no_kmsg(tmp_path: Path):
    out = probe.run(FakeModule({"modules": records({"name": "base"}), "root": str(tmp_path)}))
    assert out["fact"] == {"path": FACT, "exists": False, "content": None, "data": None}
    assert out["kernel_log_cursor"] is None and out["kernel_log_source"] == "none"
    assert out["modules"][0]["action"] == "load"


def test_one_modinfo_call_for_all_loaded_modules(host: Path):
    (host / "sys/module/hello_5/srcversion").write_text("AAA\n")
    write(host, "/sys/module/base/initstate", "live\n")
    write(host, "/sys/module/base/refcnt", "0\n")
    write(host, "/sys/module/base/srcversion", "CCC\n")
    write(host, "/sys/module/base/parameters/level", "1\n")
    write(host, "/sys/module/memory/initstate", "live\n")  # no srcversion: asked all the same
    write(host, "/sys/module/memory/parameters/major", "60\n", 0o444)
    modinfo = (
        "filename:       /lib/modules/k/updates/dkms/base.ko.xz\nsrcversion:     CCC\n"
        "name:           base\n"
        "filename:       /lib/modules/k/updates/dkms/hello-5.ko\nsrcversion:     BBB\n"
        "name:           hello_5\n"
    )
    recs = records({"name": "hello-5"}, {"name": "base"}, {"name": "memory"})
    memory = next(r for r in recs if r["name"] == "memory")
    memory["manifest"]["expect"]["dev_nodes"] = []  # /dev/memory: test_dev_node_* below
    module = FakeModule({"modules": recs, "root": str(host)}, modinfo=modinfo)
    out = probe.run(module)
    assert len(module.commands) == 1 and module.commands[0][-3:] == ["base", "hello_5", "memory"]
    actions = {m["name"]: m["action"] for m in out["modules"]}
    assert actions == {"base": "none", "hello-5": "reload", "memory": "none"}
    assert out["modules"][0]["installed"]["filename"].endswith("base.ko.xz")


def test_installed_signer_and_key_of_each_module_file(host: Path):
    """The load stage reloads a module whose file was signed again: the probe shows
    each installed file's signer and key id (module_utils/modinfo.py), None unsigned."""
    (host / "sys/module/hello_5/srcversion").write_text("BBB\n")
    write(host, "/sys/module/base/initstate", "live\n")
    write(host, "/sys/module/base/refcnt", "0\n")
    write(host, "/sys/module/base/srcversion", "CCC\n")
    modinfo = (
        "filename:       /lib/modules/k/updates/dkms/base.ko.xz\nsrcversion:     CCC\n"
        "filename:       /lib/modules/k/updates/dkms/hello-5.ko\nsrcversion:     BBB\n"
        "sig_id:         PKCS#7\nsigner:         kmodlab module signing\n"
        "sig_key:        6c:ce:ce:7e:4c:6c:0d:1f:61:49:\n\t\tf3:dd:27:df:cc:5c:bb:41:9e:a1\n"
        "sig_hashalgo:   sha256\nsignature:      30:45:02:20:\n\t\t1B:2C\n"
    )
    recs = records({"name": "hello-5"}, {"name": "base"})
    out = probe.run(FakeModule({"modules": recs, "root": str(host)}, modinfo=modinfo))
    installed = {m["name"]: m["installed"] for m in out["modules"]}
    assert installed["hello-5"]["signer"] == "kmodlab module signing"
    assert installed["hello-5"]["sig_key"] == (
        "6C:CE:CE:7E:4C:6C:0D:1F:61:49:F3:DD:27:DF:CC:5C:BB:41:9E:A1"
    )
    assert installed["hello-5"]["srcversion"] == "BBB"
    assert installed["base"]["signer"] is None and installed["base"]["sig_key"] is None


def test_hidden_parameter_from_the_module_message(host: Path):
    # someone reloaded hello_5 with myshort=3; the fact still says 7
    with open(host / "dev/kmsg", "a") as handle:
        handle.write("6,3,3,-;hello_5: goodbye, world\n6,4,4,-;hello_5: myshort=3\n")
    out = probe.run(FakeModule({"modules": records({"name": "hello-5"}), "root": str(host)}))
    m = out["modules"][0]
    assert m["logged"] == {"myshort": {"text": "3", "line": "hello_5: myshort=3"}}
    assert m["action"] == "reload"
    assert m["reasons"] == [
        "parameter myshort (not visible in sysfs) is '3' by the module's message "
        "'hello_5: myshort=3', wanted '7'"
    ]
    assert m["previous"]["params"]["myshort"] == "3"  # what it runs with now
    # read back after loading: a hidden value other than the wanted one is a mismatch
    since = probe.run(
        FakeModule(
            {"modules": records({"name": "hello-5"}), "root": str(host), "kernel_log_since": 2}
        )
    )
    assert since["modules"][0]["mismatches"] == [
        {
            "param": "myshort",
            "wanted": "7",
            "live": "3",
            "source": "kernel log",
            "line": "hello_5: myshort=3",
        }
    ]


def test_dev_nodes_are_read_and_foreign_ones_named(host: Path):
    write(host, "/sys/module/memory/initstate", "live\n")
    write(host, "/sys/module/memory/refcnt", "0\n")
    write(host, "/sys/module/memory/parameters/major", "60\n", 0o444)
    recs = records({"name": "memory"})
    out = probe.run(FakeModule({"modules": recs, "root": str(host)}))
    m = out["modules"][0]
    assert m["dev_nodes"] == {
        "/dev/memory": {"exists": False, "error": "No such file or directory"}
    }
    assert m["reasons"] == ["/dev/memory is missing (manifest expect.dev_nodes)"]
    assert m["dev_nodes_foreign"] == [] and out["unload"] == ["memory"]
    write(host, "/dev/memory", "not a device\n", 0o666)
    m = probe.run(FakeModule({"modules": recs, "root": str(host)}))["modules"][0]
    assert m["reasons"] == ["/dev/memory is a file, not a char device"]
    assert m["dev_nodes_foreign"] == ["/dev/memory"]


def test_kernel_explain_drops_the_stack_dump(host: Path):
    with open(host / "dev/kmsg", "a") as handle:
        handle.write(
            "3,3,3,-;memory: cannot register major 60: error -16 (in use? see /proc/devices)\n"
            "4,4,4,-;CPU: 0 PID: 901 Comm: modprobe Tainted: G           OE      6.1.0-18-amd64\n"
            "4,5,5,-; memory_start+0x7a/0x1000 [memory]\n"
            "6,6,6,-;other: noise\n"
        )
    recs = records({"name": "memory"})
    out = probe.run(FakeModule({"modules": recs, "root": str(host), "kernel_log_since": 2}))
    m = out["modules"][0]
    assert m["kernel_explain"] == [
        "memory: cannot register major 60: error -16 (in use? see /proc/devices)"
    ]
    assert " memory_start+0x7a/0x1000 [memory]" in m["kernel_log"]


def _sign(body: bytes, key_path: Path, cert_der: bytes) -> bytes:
    """body signed as the kernel's sign-file does (detached PKCS#7, no attributes)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.serialization import pkcs7

    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    cert = x509.load_der_x509_certificate(cert_der)
    options = [
        pkcs7.PKCS7Options.DetachedSignature,
        pkcs7.PKCS7Options.NoCerts,
        pkcs7.PKCS7Options.Binary,
        pkcs7.PKCS7Options.NoAttributes,
    ]
    der = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(body)
        .add_signer(cert, key, hashes.SHA256())
        .sign(serialization.Encoding.DER, options)
    )
    trailer = struct.pack(">BBBBB3sI", 0, 0, 2, 0, 0, b"\0\0\0", len(der))
    return body + der + trailer + b"~Module signature appended~\n"


@pytest.fixture(scope="module")
def signing_keys(tmp_path_factory: pytest.TempPathFactory):
    from kmodlab import keys

    root = tmp_path_factory.mktemp("keys")
    project, _created = keys.create("project", bits=2048, root=root)
    other, _created = keys.create("other", bits=2048, root=root)
    return project, other


@pytest.mark.parametrize("damage", [None, "another key", "altered", "unsigned"])
def test_a_module_to_load_that_the_kernel_would_refuse_is_named_first(
    host: Path, signing_keys, damage
):
    import base64

    project, other = signing_keys
    body = b"\x7fELF" + bytes(range(256)) * 40
    signer = other if damage == "another key" else project
    data = _sign(body, signer.key_path, signer.cert.der_path.read_bytes())
    if damage == "altered":
        data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
    elif damage == "unsigned":
        data = body
    path = host / "lib/modules/k/updates/dkms/base.ko"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    signing = {
        "der_b64": base64.b64encode(project.cert.der_path.read_bytes()).decode(),
        "signer": project.cert.common_name,
        "sig_key": project.cert.sig_key,
        "fingerprint": project.cert.fingerprint,
    }
    modinfo = "filename:       /lib/modules/k/updates/dkms/base.ko\nname:           base\n"
    recs = records({"name": "base"})
    out = probe.run(
        FakeModule({"modules": recs, "root": str(host), "signing": signing}, modinfo=modinfo)
    )
    assert out["load"] == ["base"]
    if damage is None:
        assert out["refused"] == []
        return
    (message,) = out["refused"]
    assert message.startswith("base: the kernel would refuse /lib/modules/k/updates/dkms/base.ko")
    assert project.cert.fingerprint in message and "Nothing was unloaded" in message
    want = {
        "another key": f"signed by another key (signer {other.cert.common_name}",
        "altered": "does not match the module's content",
        "unsigned": "not signed",
    }[damage]
    assert want in message, message
    # without the option, no check at all
    assert (
        probe.run(FakeModule({"modules": recs, "root": str(host)}, modinfo=modinfo))["refused"]
        == []
    )
