# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lookup plugin: the DKMS packages of resolved module records (controller side)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: dkms_packages
short_description: Render the DKMS package of each resolved kmodlab module
description:
  - Turns resolved selection records (from C(kmodlab.selection.resolve)) into the list the
    O(kmodlab.lab.dkms#module:packages) option of M(kmodlab.lab.dkms) takes, with the
    Python module C(kmodlab.package), which the container builder calls too, so that both
    build exactly the same package.
  - A record with state C(present) or C(config) becomes a package with its files read on
    the controller, the manifest's C(sources) plus C(Kbuild) and C(Makefile) when the
    module folder has them, and a C(dkms.conf) rendered from the manifest (unless the
    module ships its own C(dkms.conf) among its sources).
  - The rendered C(dkms.conf) of every package keeps the build's C(Module.symvers)
    (POST_BUILD C(kmodlab-keep-symvers.sh), shipped executable in the package). A module
    whose manifest C(depends) on others gets C(BUILD_DEPENDS) and their C(Module.symvers)
    in C(KBUILD_EXTRA_SYMBOLS).
  - A record with state C(absent) becomes C({name, version, state=absent}).
  - Fails before any host is touched on a module with neither C(Kbuild) nor C(Makefile),
    an unreadable source or a bad O(dest_location), naming the module.
  - Returns one list; call it with C(wantlist=True) or through C(query), or a single
    package comes back as a mapping instead of a list of one.
  - Needs the kmodlab Python package on the controller (the kmodlab virtualenv).
options:
  _terms:
    description:
      - One list of resolved records (name, version, state, source_dir and manifest with
        sources and depends are read), in the order to keep.
    required: true
    type: list
    elements: dict
  dest_location:
    description:
      - C(DEST_MODULE_LOCATION[0]) of the rendered C(dkms.conf), the folder below
        C(/lib/modules/KERNEL) dkms installs the module into.
      - Must start with C(/kernel), C(/updates) or C(/extra).
    type: str
    default: /updates/dkms
  autoinstall:
    description:
      - C(AUTOINSTALL) of the rendered C(dkms.conf) (rebuild for every new kernel).
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Render the package of each selected module
  ansible.builtin.set_fact:
    __dkms_module_packages: >-
      {{ lookup('kmodlab.lab.dkms_packages', __dkms_module_resolved,
                dest_location=dkms_module_dest_location,
                autoinstall=dkms_module_autoinstall, wantlist=True) }}

- name: The same with query
  ansible.builtin.debug:
    msg: "{{ query('kmodlab.lab.dkms_packages', __dkms_module_resolved) | map(attribute='name') }}"
"""

RETURN = r"""
_list:
  description:
    - One entry of O(kmodlab.lab.dkms#module:packages) per record, in the order of the
      records.
    - Present (and config) records give C(name), C(version), C(state=present), C(files)
      (relative path to text), C(executables) (paths of C(files) to write with mode
      0755) and C(depends) (the manifest's depends).
    - Absent records give C(name), C(version) and C(state=absent).
  type: list
  elements: dict
"""

from typing import Any

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

try:
    from kmodlab.package import PackageError, packages_for
except ImportError as exc:  # pragma: no cover - controller without the package
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None


class LookupModule(LookupBase):
    def run(
        self, terms: list[Any], variables: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[dict[str, Any]]:
        if _IMPORT_ERROR is not None:
            raise AnsibleLookupError(
                "the kmodlab Python package is not importable on the controller "
                f"({_IMPORT_ERROR}); run Ansible from the kmodlab virtualenv"
            )
        self.set_options(var_options=variables, direct=kwargs)
        records = terms[0] if len(terms) == 1 and isinstance(terms[0], list) else terms
        try:
            return packages_for(
                [dict(r) if isinstance(r, dict) else r for r in records],
                dest_location=self.get_option("dest_location"),
                autoinstall=self.get_option("autoinstall"),
            )
        except PackageError as exc:
            raise AnsibleLookupError(str(exc)) from None
