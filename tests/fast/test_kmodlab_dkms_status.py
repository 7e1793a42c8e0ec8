"""Fast tier: parsing ``dkms status`` (module_utils/kmodlab_dkms_status.py).

The 3.x lines are copied from dkms 3.0.10 on Debian 12; the 2.x lines from dkms 2.8 output
quoted in bug reports; the 3.1 suffix from dkms 3.1.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_SPEC = importlib.util.spec_from_file_location(
    "kmodlab_dkms_status",
    REPO / "src/kmodlab/ansible/module_utils/kmodlab_dkms_status.py",
)
status = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(status)

K = "6.1.0-56-amd64"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "hello-5/1.0.0, 6.1.0-56-amd64, x86_64: installed",
            ("hello-5", "1.0.0", K, "x86_64", "installed"),
        ),
        (
            "kmlt-hello/2.0, 6.1.0-56-amd64, x86_64: built",
            ("kmlt-hello", "2.0", K, "x86_64", "built"),
        ),
        ("kmlt-broken/0.1: added", ("kmlt-broken", "0.1", None, None, "added")),
        # dkms 2.x
        (
            "v4l2loopback, 0.12.5, 5.15.16_1, x86_64: installed",
            ("v4l2loopback", "0.12.5", "5.15.16_1", "x86_64", "installed"),
        ),
        ("rtl8812au, 4.2.2: added", ("rtl8812au", "4.2.2", None, None, "added")),
        # dkms 3.1: source folder gone
        ("nvidia/550.1: broken", ("nvidia", "550.1", None, None, "broken")),
        (
            "hello-5/1.0.0+git~1, 6.8.0-45-generic, aarch64: installed",
            ("hello-5", "1.0.0+git~1", "6.8.0-45-generic", "aarch64", "installed"),
        ),
    ],
)
def test_both_formats(line, expected):
    e = status.parse_status_line(line)
    assert (e["name"], e["version"], e["kernel"], e["arch"], e["status"]) == expected
    assert e["diff"] is False and e["missing"] is False
    assert e["line"] == line


@pytest.mark.parametrize(
    ("line", "diff", "missing", "notes"),
    [
        (
            "kmlt-hello/1.0, 6.1.0-56-amd64, x86_64: installed "
            "(WARNING! Diff between built and installed module!)",
            True,
            False,
            ["WARNING! Diff between built and installed module!"],
        ),
        (
            "rtl8812au, 4.3.8.12175.20140902+dfsg, 4.15.0-39-generic, i686: installed "
            "(WARNING! Diff between built and installed module!)",
            True,
            False,
            ["WARNING! Diff between built and installed module!"],
        ),
        (
            "nvidia/595.91.07, 6.11.0-29-generic, x86_64: installed "
            "(Differences between built and installed modules)",
            True,
            False,
            ["Differences between built and installed modules"],
        ),
        (
            "foo/1.0, 6.1.0-56-amd64, x86_64: built (WARNING! Missing some built modules!)",
            False,
            True,
            ["WARNING! Missing some built modules!"],
        ),
        (
            "foo/1.0, 6.1.0-56-amd64, x86_64: installed (original_module exists) "
            "(WARNING! Diff between built and installed module!)",
            True,
            False,
            ["original_module exists", "WARNING! Diff between built and installed module!"],
        ),
        (
            "foo/1.0, 6.1.0-56-amd64, x86_64: installed (original_module exists)",
            False,
            False,
            ["original_module exists"],
        ),
    ],
)
def test_warning_suffixes(line, diff, missing, notes):
    e = status.parse_status_line(line)
    assert e["status"] in ("installed", "built")
    assert (e["diff"], e["missing"], e["notes"]) == (diff, missing, notes)


def test_weak_install():
    e = status.parse_status_line(
        "kmod-foo, 1.2, 5.14.0-427.el9.x86_64, x86_64: installed-weak from 5.14.0-362.el9.x86_64"
    )
    assert e["status"] == "installed-weak"
    assert e["weak_from"] == "5.14.0-362.el9.x86_64"
    assert e["kernel"] == "5.14.0-427.el9.x86_64"


def test_other_output_is_kept_apart():
    text = (
        "Deprecated feature: REMAKE_INITRD (/usr/src/foo-1.0/dkms.conf)\n"
        "foo/1.0, 6.1.0-56-amd64, x86_64: installed\n"
        "\n"
        "Error! Could not locate dkms.conf file.\n"
        "bar, 2.0: added\n"
    )
    entries, unparsed = status.parse_status(text)
    assert [(e["name"], e["status"]) for e in entries] == [("foo", "installed"), ("bar", "added")]
    assert unparsed == [
        "Deprecated feature: REMAKE_INITRD (/usr/src/foo-1.0/dkms.conf)",
        "Error! Could not locate dkms.conf file.",
    ]


def test_empty_output():
    assert status.parse_status("") == ([], [])
    assert status.parse_status(None) == ([], [])


def test_versions_seen_from_one_kernel():
    entries, _ = status.parse_status(
        "foo/1.0, 6.1.0-56-amd64, x86_64: built\n"
        "foo/2.0, 6.1.0-56-amd64, x86_64: installed\n"
        "foo/2.0, 6.1.0-99-amd64, x86_64: installed\n"
        "foo/3.0, 6.1.0-99-amd64, x86_64: installed\n"
        "foo/4.0: added\n"
        "foobar/1.0, 6.1.0-56-amd64, x86_64: installed\n"
    )
    # 3.0 is installed elsewhere only: registered, so "added" for this kernel.
    assert status.versions_on_kernel(entries, "foo", K) == {
        "1.0": "built",
        "2.0": "installed",
        "3.0": "added",
        "4.0": "added",
    }
    assert status.versions_on_kernel(entries, "nope", K) == {}
    assert status.kernels_installed(entries, "foo", "2.0") == [K, "6.1.0-99-amd64"]
    assert status.entry_for(entries, "foo", "2.0", K)["status"] == "installed"
    assert status.entry_for(entries, "foo", "4.0", K) is None
    assert status.status_lines(entries, "foobar") == [
        "foobar/1.0, 6.1.0-56-amd64, x86_64: installed"
    ]


def test_broken_wins():
    entries, _ = status.parse_status(
        "foo/1.0: broken\nfoo/1.0, 6.1.0-56-amd64, x86_64: installed\n"
    )
    assert status.versions_on_kernel(entries, "foo", K) == {"1.0": "broken"}


def test_tail_and_digest(tmp_path):
    assert status.tail("a\nb\nc\n", 2) == ["b", "c"]
    assert status.tail("a\nb\n", 0) == []
    log = tmp_path / "make.log"
    log.write_bytes(b"one\ntwo \xe2\x80\x98x\xe2\x80\x99\n\xff three\n")
    assert status.read_tail(str(log), 2) == ["two \u2018x\u2019", "\ufffd three"]
    assert status.read_tail(str(tmp_path / "missing"), 2) is None

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.c").write_text("int a;\n")
    (src / "sub" / "b.c").write_text("int b;\n")
    first = status.source_digest(str(src))
    assert first == status.source_digest(str(src))
    (src / "a.c").write_text("int a = 1;\n")
    assert status.source_digest(str(src)) != first
    assert status.source_digest(str(tmp_path / "nope")) is None
