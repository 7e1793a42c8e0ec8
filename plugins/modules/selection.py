# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# The work is done on the controller by the action plugin plugins/action/selection.py;
# this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: selection
short_description: Resolve a host's kernel module selection against the kmodlab manifests
description:
  - Merges the selection layers by module name (a later layer wins; C(params) are merged
    parameter by parameter) and joins every entry with its manifest
    (C(MANIFEST_DIR/NAME/module.yml)) into one record per module, in load order
    (dependencies first).
  - Sets the host fact C(kmodlab_selection) to those records, and C(kmodlab_delivery) to the
    host's delivery (O(delivery), checked).
  - The stage roles
    (M(kmodlab.lab.dkms_module), M(kmodlab.lab.kmod_load), M(kmodlab.lab.kmod_verify))
    take it as their selection and run this action themselves when it is not set yet.
  - Reads only the manifests of the selected modules and of the modules they depend on,
    so a broken manifest that no host selects stops nothing.
  - Runs on the controller and never contacts the host, so a play can check every
    host's selection before touching any of them. Fails on an unknown module, a broken
    manifest, a wrong parameter or a missing dependency, naming the file or the variable
    and the field.
  - "Each entry is a mapping: C(name) (a folder of the manifest directory, required),
    C(state) (V(present): build, install and load it; V(config): build and install it,
    write its configuration files, leave the running kernel alone; V(absent): unload it and
    remove it; default V(present)), C(params) (load parameters, checked against the
    manifest and merged over its lab parameters) and C(persist) (load at boot with these
    parameters; default V(true))."
version_added: "0.1.0"
author: kmodlab (@kmodlab)
options:
  modules:
    description:
      - Entries for all hosts. Default the variable C(kmodlab_modules).
    type: list
    elements: dict
  group_modules:
    description:
      - Entries for a group of hosts, merged over O(modules). Default the variable
        C(kmodlab_group_modules).
    type: list
    elements: dict
  host_modules:
    description:
      - Entries for one host, merged last. Default the variable C(kmodlab_host_modules).
    type: list
    elements: dict
  delivery:
    description:
      - How the host gets its modules. V(dkms) builds each one on the host as its own DKMS
        package; V(deb) installs the Debian packages the container builder made on the
        controller (M(kmodlab.lab.module_build)).
      - Default the variable C(kmodlab_delivery), else V(dkms).
    type: str
    choices: [dkms, deb]
  manifest_dirs:
    description:
      - Folders on the controller with one sub-folder per module holding its C(module.yml),
        searched in this order before the collection's own C(modules/) (which is always
        searched last); a module of yours named as one of the catalog's replaces it.
      - Default the variable C(kmodlab_manifest_dirs), else none.
      - A manifest whose C(package.source) names a third-party package's tree (a folder, a
        git ref, a tarball with its sha256) gets that tree fetched on the controller
        (cached under C(~/.cache/kmodlab/sources)) as its C(source_dir).
    type: list
    elements: path
attributes:
  check_mode:
    description: Can run in check mode and return the same records.
    support: full
  diff_mode:
    description: Changes nothing, so shows no diff.
    support: none
  platform:
    description: Runs on the controller only, whatever the host's platform.
    support: full
    platforms: all
"""

EXAMPLES = r"""
- name: Resolve each host's selection before touching any host
  kmodlab.lab.selection:

- name: Resolve an explicit selection against another catalog
  kmodlab.lab.selection:
    modules:
      - name: hello-5
        params:
          myint: 7
    manifest_dirs:
      - /srv/kmodlab/modules
"""

RETURN = r"""
modules:
  description: The selected modules' names, in load order.
  returned: success
  type: list
  elements: str
  sample: [memory, hello-5]
manifest_dirs:
  description: The manifest folders the selection was resolved against, in search order.
  returned: success
  type: list
  elements: str
delivery:
  description: The host's delivery, V(dkms) or V(deb).
  returned: success
  type: str
ansible_facts:
  description: Facts set for the host.
  returned: success
  type: dict
  contains:
    kmodlab_selection:
      description:
        - One record per module, in load order; C(name), C(kmod) (the kernel's name for
          it), C(version), C(package) (the DKMS package it is built in), C(state),
          C(params) (the wanted parameters, complete), C(persist), C(source_dir) (the
          package's files on the controller) and C(manifest).
      type: list
      elements: dict
    kmodlab_delivery:
      description: The host's delivery, V(dkms) or V(deb).
      type: str
"""
