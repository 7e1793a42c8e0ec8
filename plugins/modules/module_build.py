# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# The work is done on the controller by the action plugin plugins/action/module_build.py;
# this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: module_build
short_description: Build kernel modules once per kernel ABI in a container, signed centrally
description:
  - Runs on the controller, once for the play (use C(run_once)). Collects the kernel ABIs the
    play's hosts run (C(ansible_facts.kernel)) and the target kernels, and the modules the
    hosts select (state V(present) or V(config)).
  - Builds every module once per ABI, whatever the host count, in a Docker builder container
    with exactly that ABI's headers and the compiler the kernel was built with (images made
    from a debootstrap tarball with C(docker import); containers without network). Signs every
    C(.ko) there with the project key, mounted read-only for the signing step only, and
    packages each module as the Debian package C(kmodlab-NAME-modules-ABI) in the artifact
    store (C(~/.cache/kmodlab/artifacts)), with an apt index.
  - Results are cached by sources, ABI, builder image and key, so a second run compiles
    nothing. Every compilation is recorded in C(artifacts/compilations.jsonl).
  - Starts C(dockerd) (without bridge or iptables) when it is not running.
version_added: "0.3.0"
author: kmodlab (@kmodlab)
options:
  hosts:
    description: The play's hosts (C(ansible_play_hosts)); their facts and selections are read.
    type: list
    elements: str
    required: true
  selection:
    description:
      - Records resolved by M(kmodlab.lab.selection) for every host. Default each host's
        C(kmodlab_selection) fact.
    type: list
    elements: dict
  target_kernels:
    description: Kernel ABIs to build for besides the hosts' running ones.
    type: list
    elements: str
    default: []
  key_name:
    description: The project key's name in the kmodlab key store (created when missing).
    type: str
    default: lab
  key_store:
    description:
      - The key store folder. Default C($KMODLAB_KEY_DIR), else C(~/.local/share/kmodlab/keys).
    type: path
  release:
    description: Debian release of the builder image.
    type: str
    default: bookworm
  jobs:
    description: Kernel ABIs built at the same time.
    type: int
    default: 2
attributes:
  check_mode:
    description: Builds in check mode too (it changes nothing on the hosts).
    support: none
  diff_mode:
    description: Shows no diff.
    support: none
  platform:
    description: Runs on the controller only.
    support: full
    platforms: all
"""

EXAMPLES = r"""
- name: Build every selected module for the hosts' kernels and a kernel about to be installed
  kmodlab.lab.module_build:
    hosts: "{{ ansible_play_hosts }}"
    target_kernels: [6.1.0-57-amd64]
  register: module_build_result
  run_once: true
"""

RETURN = r"""
abis:
  description: The kernel ABIs built for.
  returned: success
  type: list
  elements: str
hosts:
  description:
    - Per host, C(kernel), C(abis) (running and target kernels) and C(packages), the package
      descriptors of its modules for those ABIs.
  returned: success
  type: dict
packages:
  description:
    - Per ABI, one descriptor per package; C(module), C(kmod), C(version), C(abi), C(package),
      C(file), C(path) (on the controller), C(sha256), C(depends), C(signer), C(sig_key),
      C(cache_key), C(compiled) (false when it came from the cache).
  returned: success
  type: dict
compiled:
  description: Modules compiled by this run (one per module and ABI at most).
  returned: success
  type: int
cached:
  description: Packages taken from the cache.
  returned: success
  type: int
failures:
  description: Modules that did not compile for an ABI (C(module), C(abi), C(message), C(log)).
  returned: success
  type: list
  elements: dict
failure_lines:
  description: One line per failure.
  returned: success
  type: list
  elements: str
summary:
  description: One line per ABI, what was compiled and what came from the cache.
  returned: success
  type: list
  elements: str
timings:
  description: Seconds spent on the builder images, compiling, signing and packaging.
  returned: success
  type: dict
"""
