"""The fleet path's controller side: build each module once per kernel ABI in a container,
sign it centrally, and ship it as a Debian package (see :func:`kmodlab.fleet.builder.build`).

``debpkg`` holds the names the rollout shares (package, file, install folder); ``docker``
starts and drives the Docker daemon; ``artifacts`` is the store of built packages and its
indexes; ``builder`` ties them together.
"""

from __future__ import annotations
