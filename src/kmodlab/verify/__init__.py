"""kmodlab verify: testinfra checks generated from module manifests, and their report.

- ``kmodlab.verify.suite``: the pytest-testinfra suite (import it from a molecule test
  file: ``from kmodlab.verify.suite import *``).
- ``kmodlab.verify.plugin``: pytest plugin (options, report collection).
- ``kmodlab.verify.report``: ``render_report(json_path)`` (rich) and ``render_text``.
- ``python -m kmodlab.verify``: run the suite (what the kmod_verify role does).
"""

from kmodlab.verify.report import render_report, render_text

__all__ = ["render_report", "render_text"]
