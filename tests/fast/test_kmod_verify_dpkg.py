"""module_utils/dpkg_status.py: the one parser of dpkg's answers (dpkg-query -W, dpkg -L,
dpkg --verify), used by the verify suite on package (``deb``) hosts.

The samples are dpkg 1.21's (Debian 12) output; the query also runs against this
machine's own dpkg when it has one.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from ansible_collections.kmodlab.lab.plugins.module_utils import dpkg_status

from kmodlab.fleet import names

ABI = "6.1.0-57-amd64"


def test_the_names_the_fleet_shares():
    assert names.package_name("hello-5", ABI) == "kmodlab-hello-5-modules-6.1.0-57-amd64"
    assert names.package_name("my_mod", ABI) == "kmodlab-my-mod-modules-6.1.0-57-amd64"
    assert names.deb_file("hello-5", "1.1.0", ABI) == (
        "kmodlab-hello-5-modules-6.1.0-57-amd64_1.1.0_amd64.deb"
    )
    assert names.install_dir(ABI) == "/lib/modules/6.1.0-57-amd64/updates/kmodlab"
    assert names.DEFER_DEPMOD_ENV == "KMODLAB_DEFER_DEPMOD"


QUERY = (
    f"kmodlab-hello-5-modules-{ABI}\t1.1.0\tii \n"
    f"kmodlab-gadget-modules-{ABI}\t0.3.0\thi \n"
    f"kmodlab-memory-modules-{ABI}\t1.0.0\tiU \n"
    f"kmodlab-base-modules-{ABI}\t1.0.0\tiHR\n"
    f"kmodlab-user-modules-{ABI}\t2.0.1\trc \n"
    f"kmodlab-old-modules-{ABI}\t\tun \n"
    "garbage line\n"
)


def test_query_status_in_words():
    found = dpkg_status.parse_query(QUERY)
    assert sorted(found) == sorted(line.split("\t")[0] for line in QUERY.splitlines()[:6])
    hello = found[f"kmodlab-hello-5-modules-{ABI}"]
    assert hello["version"] == "1.1.0" and hello["abbrev"] == "ii "
    assert hello["installed"] and not hello["gone"]
    assert hello["text"] == "ii (install ok installed)"
    assert found[f"kmodlab-gadget-modules-{ABI}"]["installed"]  # held there
    memory = found[f"kmodlab-memory-modules-{ABI}"]
    assert not memory["installed"] and not memory["gone"]
    assert memory["text"] == "iU (install ok unpacked)"
    base = found[f"kmodlab-base-modules-{ABI}"]
    assert not base["installed"] and base["text"] == "iHR (install reinst-required half-installed)"
    user = found[f"kmodlab-user-modules-{ABI}"]
    assert user["gone"] and not user["installed"] and user["state"] == "config-files"
    old = found[f"kmodlab-old-modules-{ABI}"]
    assert old["gone"] and old["version"] == "" and old["text"] == "un (unknown ok not-installed)"
    assert dpkg_status.status("X")["state"] == "unknown state ' '"


def test_read_query_no_match_is_empty_not_an_error():
    none = "dpkg-query: no packages found matching kmodlab-*\n"
    assert dpkg_status.read_query(1, "", none) == {"packages": {}}
    assert dpkg_status.read_query(0, QUERY, "")["packages"]
    broken = dpkg_status.read_query(2, "", "dpkg-query: error: parsing file '/var/lib/dpkg/status'")
    assert broken == {
        "error": "dpkg-query exited with 2: dpkg-query: error: parsing file '/var/lib/dpkg/status'"
    }
    assert dpkg_status.read_query(127, "", "")["error"] == "dpkg-query exited with 127: no output"


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="no dpkg on this machine")
def test_the_query_runs_as_dpkg_takes_it():
    proc = subprocess.run(
        dpkg_status.query_argv("dpkg"), capture_output=True, text=True, check=False
    )
    found = dpkg_status.read_query(proc.returncode, proc.stdout, proc.stderr)
    assert found["packages"]["dpkg"]["installed"], proc
    # tabs and newlines are dpkg-query's own escapes: one line per package
    assert proc.stdout.count("\n") == 1 and proc.stdout.count("\t") == 2


def test_file_list_without_diversion_notes():
    text = (
        "/.\n/lib\n/lib/modules\n/lib/modules/6.1.0-57-amd64/updates/kmodlab\n"
        "/lib/modules/6.1.0-57-amd64/updates/kmodlab/hello_5.ko\n"
        "package diverts others to: /lib/x.distrib\n"
        "diverted by other to: /lib/y.other\n"
    )
    assert dpkg_status.parse_list(text)[-1] == (
        "/lib/modules/6.1.0-57-amd64/updates/kmodlab/hello_5.ko"
    )
    assert not any("divert" in p for p in dpkg_status.parse_list(text))
    assert dpkg_status.list_argv("p") == ["dpkg", "-L", "p"]


def test_verify_lines():
    ko = f"/lib/modules/{ABI}/updates/kmodlab/hello_5.ko"
    # "%.9s %c %s": nine result characters, "c" for a conffile or a space, the path
    text = (
        f"??5??????   {ko}\n"
        "missing   c /etc/kmodlab.conf\n"
        "missing     /lib/gone.ko (Permission denied)\n"
        "?M???????   /lib/a-dir-now\n"
    )
    changed, conffile, denied, mode = dpkg_status.parse_verify(text)
    assert changed["path"] == ko and changed["digest"] and not changed["missing"]
    assert conffile["missing"] and conffile["path"] == "/etc/kmodlab.conf"
    assert denied["missing"] and denied["path"] == "/lib/gone.ko"
    assert mode["mode"] and not mode["digest"]
    assert dpkg_status.parse_verify("") == []
    assert dpkg_status.verify_argv("p") == ["dpkg", "--verify", "p"]
