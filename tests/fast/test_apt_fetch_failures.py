"""The kernel_headers role's reading of apt's fetch failures (filter apt_fetch_failures)."""

from __future__ import annotations

from ansible_collections.kmodlab.lab.plugins.filter.apt_fetch_failures import (
    apt_fetch_failures,
)

APT = """\
Err:1 http://192.0.2.1/debian bookworm InRelease
  Could not connect to 192.0.2.1:80 (192.0.2.1), connection timed out
W: Failed to fetch http://192.0.2.1/debian/dists/bookworm/InRelease  Could not connect \
to 192.0.2.1:80 (192.0.2.1), connection timed out
W: Failed to fetch http://192.0.2.1/debian/dists/bookworm-updates/InRelease  Unable to \
connect to 192.0.2.1:http:
E: Failed to fetch http://deb.example.org/debian/pool/main/l/linux/linux-headers.deb  404  \
Not Found [IP: 198.51.100.7 80]
W: Some index files failed to download. They have been ignored, or old ones used instead.
"""


def test_one_line_per_mirror_with_apts_first_reason() -> None:
    assert apt_fetch_failures(APT) == [
        "http://192.0.2.1/debian (Could not connect to 192.0.2.1:80 (192.0.2.1), "
        "connection timed out)",
        "http://deb.example.org/debian (404  Not Found [IP: 198.51.100.7 80])",
    ]


def test_nothing_failed() -> None:
    assert apt_fetch_failures("Hit:1 http://deb.debian.org/debian bookworm InRelease\n") == []
    assert apt_fetch_failures(None) == []
