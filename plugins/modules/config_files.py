#!/usr/bin/python
# Copyright: kmodlab contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write or remove many small root-owned files in one call."""

from __future__ import annotations

DOCUMENTATION = r"""
module: config_files
short_description: Write or remove many small configuration files in one call
description:
  - Each file is compared with its wanted content and mode; only differing files are
    written (atomically, owned by root, creating a missing folder with its
    O(files[].dir_mode)) or removed.
  - One call for all files, because every task round trip to an emulated guest costs
    seconds, and a loop of M(ansible.builtin.copy) costs two per file.
options:
  files:
    description: The files.
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description: Absolute path.
        type: path
        required: true
      content:
        description: Wanted content; null removes the file.
        type: str
      mode:
        description: Octal mode of a written file.
        type: str
        default: "0644"
      dir_mode:
        description: Octal mode of its folder when the folder has to be created.
        type: str
        default: "0755"
author:
  - kmodlab (@kmodlab)
attributes:
  check_mode:
    support: full
    description: Reports which files would be written or removed, and changes nothing.
  diff_mode:
    support: full
    description: Shows the old and the new content of each file it writes or removes.
"""

EXAMPLES = r"""
- name: Write and remove modprobe.d files
  kmodlab_files:
    files:
      - path: /etc/modprobe.d/hello-5.conf
        content: "options hello_5 myint=7\n"
      - path: /etc/modules-load.d/memory.conf
        content: null
"""

RETURN = r"""
files:
  description: One entry per file with C(path), C(action) (written, removed, unchanged).
  type: list
  elements: dict
  returned: always
changed_paths:
  description: Paths that were (or in check mode would be) written or removed.
  type: list
  elements: str
  returned: always
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kmodlab.lab.plugins.module_utils.files import write_atomic


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            files=dict(
                type="list",
                elements="dict",
                required=True,
                options=dict(
                    path=dict(type="path", required=True),
                    content=dict(type="str"),
                    mode=dict(type="str", default="0644"),
                    dir_mode=dict(type="str", default="0755"),
                ),
            )
        ),
        supports_check_mode=True,
    )
    results, changed_paths, diffs = [], [], []
    for spec in module.params["files"]:
        path, content, mode = spec["path"], spec["content"], int(spec["mode"], 8)
        current = _read(path)
        mode_ok = current is None or (os.stat(path).st_mode & 0o7777) == mode
        if content is None:
            action = "removed" if current is not None else "unchanged"
        elif current == content and mode_ok:
            action = "unchanged"
        else:
            action = "written"
        results.append({"path": path, "action": action})
        if action == "unchanged":
            continue
        changed_paths.append(path)
        diffs.append(
            {
                "before_header": path,
                "after_header": path,
                "before": current or "",
                "after": content or "",
            }
        )
        if module.check_mode:
            continue
        try:
            if action == "removed":
                os.unlink(path)
            else:
                folder = os.path.dirname(path)
                if not os.path.isdir(folder):
                    os.makedirs(folder, int(spec["dir_mode"], 8))
                    os.chmod(folder, int(spec["dir_mode"], 8))
                write_atomic(module, path, content.encode("utf-8"), mode, owner_root=True)
        except OSError as exc:
            module.fail_json(
                msg=f"could not update {path}: {exc} (run with become: true)",
                files=results,
                changed_paths=changed_paths,
            )
    module.exit_json(
        changed=bool(changed_paths), files=results, changed_paths=changed_paths, diff=diffs
    )


if __name__ == "__main__":
    main()
