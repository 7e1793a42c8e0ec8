"""VM tier: real Debian 12 guests under QEMU, booted once per session and shared.

Two VMs at most at a time on a 2-core machine: ``plain`` (lab profile, plain UEFI) and
``sb`` (bare profile, Secure Boot with the tier's project key enrolled through the
variable store). Both boot in parallel. Run with ``pytest -m vm``; needs root (image build).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmhelpers import PLAIN, SB, Guest, env_set, kmodlab, playbook, recap

from kmodlab import keys
from kmodlab.lab import image, inventory, vms
from kmodlab.lab.paths import lab_dir


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/vm/" in str(item.fspath):
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="session")
def test_lab() -> vms.Lab:
    """The VM tier's own lab (never the user's default lab)."""
    path = Path(os.environ.get("KMODLAB_TEST_LAB_DIR", str(lab_dir("test"))))
    return vms.Lab(path)


@pytest.fixture(scope="session")
def images() -> dict[str, image.Image]:
    built = {}
    for profile in ("lab", "bare"):
        built[profile] = image.build(image.Recipe.for_profile(profile), progress=print)
    return built


@pytest.fixture(scope="session")
def project_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[keys.KeyPair]:
    """The tier's own project signing key store (never the user's): every kmodlab and
    Ansible run of the tier inherits KMODLAB_KEY_DIR. The Secure Boot VM boots with the
    key enrolled, as `kmodlab vm up --secure-boot` does."""
    store = tmp_path_factory.mktemp("keys")
    store.chmod(0o700)
    with env_set("KMODLAB_KEY_DIR", str(store)):
        pair, _created = keys.create(keys.DEFAULT_NAME)
        yield pair


@pytest.fixture(scope="session")
def guests(
    test_lab: vms.Lab,
    images: dict[str, image.Image],
    project_key: keys.KeyPair,  # its KMODLAB_KEY_DIR: the key enrolled in t-sb
) -> Iterator[dict[str, Guest]]:
    """Boot the plain and the Secure Boot VM at once; destroy them at the end."""
    existing = test_lab.load()
    stale = [n for n in (PLAIN, SB) if n in existing]
    if stale:
        vms.destroy(test_lab, stale, progress=print)
    errors: list[BaseException] = []

    def boot_plain() -> None:
        try:
            vms.up(test_lab, vms.UpRequest(names=[PLAIN], profile="lab"), progress=print)
        except BaseException as exc:
            errors.append(exc)

    def boot_sb() -> None:
        # As users do: the CLI enrols the key store's project key (KMODLAB_KEY_DIR).
        try:
            proc = kmodlab("vm", "up", SB, "--secure-boot", "--profile", "bare", lab=test_lab)
            print(proc.stderr)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=boot_plain), threading.Thread(target=boot_sb)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        if errors:
            raise errors[0]
        inventory.write(test_lab)
        state = test_lab.load()
        yield {name: Guest(test_lab, state[name]) for name in (PLAIN, SB)}
    finally:
        if os.environ.get("KMODLAB_KEEP_VMS") != "1":
            vms.destroy(test_lab, [n for n in (PLAIN, SB) if n in test_lab.load()], print)


@pytest.fixture(scope="session")
def plain(guests: dict[str, Guest]) -> Guest:
    return guests[PLAIN]


@pytest.fixture(scope="session")
def sb(guests: dict[str, Guest]) -> Guest:
    return guests[SB]


@pytest.fixture(scope="session")
def converged(plain: Guest) -> Guest:
    """The DKMS lab on the plain VM (vmhelpers.DKMS_LAB): lab.yml converges, then a
    second run must change nothing. Every test that needs the converged lab shares it
    (and leaves it converged)."""
    log = plain.lab.path / "dkms-lab.log"
    first = playbook(plain)
    second = playbook(plain) if first.returncode == 0 else first
    log.write_text(f"{first.stdout}{first.stderr}\n# second run\n{second.stdout}{second.stderr}")
    assert first.returncode == 0, first.stdout[-6000:]
    assert second.returncode == 0, second.stdout[-6000:]
    assert (recap(second.stdout) or {}).get("changed") == 0, second.stdout[-6000:]
    return plain


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    setattr(item, f"kmodlab_{report.when}", report)
    return report


@pytest.fixture
def restores_lab(request: pytest.FixtureRequest, converged: Guest) -> Iterator[Guest]:
    """The converged lab VM for a test that changes it: when the test fails halfway,
    lab.yml converges the VM again, so that one failure does not cascade into the tests
    after it (a test that passes leaves the lab converged itself)."""
    yield converged
    call = getattr(request.node, "kmodlab_call", None)
    if call is not None and call.failed:
        proc = playbook(converged)
        print(f"restoring the lab after {request.node.name}: lab.yml rc={proc.returncode}")
