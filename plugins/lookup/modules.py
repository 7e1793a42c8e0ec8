# GPL-2.0-only
"""Lookup plugin: resolve module selections against the manifests (controller side)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: kmodlab_modules
short_description: Resolve kernel module selections against kmodlab manifests
description:
  - Joins inventory entries (name, state, params, persist) with C(modules/NAME/module.yml).
  - Returns one record per module in load order (dependencies first) with the wanted
    parameters (the manifest's lab parameters overridden by the entry's), the manifest
    itself and the path of its sources.
  - Fails before any host is touched on an unknown module, a broken manifest or a
    parameter of the wrong type, naming the file or variable and the field.
options:
  _terms:
    description: One list of entries (already merged by name).
    required: true
    type: list
    elements: raw
  manifest_dir:
    description: Folder holding one sub-folder with a C(module.yml) per module.
    type: path
    required: true
  var:
    description: Variable name used in error messages.
    type: str
    default: kmodlab_modules
"""

EXAMPLES = r"""
- name: Resolve the selected modules
  ansible.builtin.set_fact:
    __dkms_module_resolved: >-
      {{ lookup('kmodlab_modules', __dkms_module_modules_combined,
                manifest_dir=dkms_module_manifest_dir, wantlist=True) }}
"""

RETURN = r"""
_list:
  description:
    - Resolved records (name, kmod, version, state, params, persist, source_dir, dependents,
      manifest).
    - C(dependents) names the manifests whose C(depends) name the module (selected or not).
  type: list
  elements: dict
"""

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

try:
    from kmodlab.manifest import ManifestError
    from kmodlab.selection import SelectionError, resolve
except ImportError as exc:  # pragma: no cover - controller without the package
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        if _IMPORT_ERROR is not None:
            raise AnsibleLookupError(
                "the kmodlab Python package is not importable on the controller "
                f"({_IMPORT_ERROR}); run Ansible from the kmodlab virtualenv"
            )
        self.set_options(var_options=variables, direct=kwargs)
        entries = terms[0] if len(terms) == 1 and isinstance(terms[0], list) else terms
        try:
            return resolve(
                self.get_option("manifest_dir"),
                [dict(e) if isinstance(e, dict) else e for e in entries],
                var=self.get_option("var"),
            )
        except (ManifestError, SelectionError) as exc:
            raise AnsibleLookupError(str(exc)) from None
