"""What the ``kmodlab`` command groups share: how an error ends a command."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from kmodlab.lab.errors import LabError

# Errors go to stderr; no emoji codes (a fingerprint like 71:AB:02 holds `:ab:`).
errors = Console(stderr=True, emoji=False, highlight=False, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])


def clean_errors(func: F) -> F:
    """Turn LabError (and KeyStoreError) into one red line and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LabError as exc:
            errors.print("[bold red]error:[/]", end=" ")
            errors.print(str(exc), markup=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]
