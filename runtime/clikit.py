"""Small helpers shared by every ``pomona`` subcommand (runtime, train and export).

``say`` prints status on stderr (stdout is for data); ``user_errors`` turns a
:class:`~pomona.runtime.errors.PomonaError` into one ``Error: ...`` line and exit status 1.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import click

from pomona.runtime.errors import PomonaError

__all__ = ["say", "user_errors"]

P = ParamSpec("P")
R = TypeVar("R")


def say(message: str) -> None:
    """Print a status message on stderr (stdout is for data)."""
    click.echo(message, err=True)


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn a :class:`PomonaError` into one ``Error: ...`` line and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except PomonaError as err:
            raise click.ClickException(str(err)) from err

    return wrapper
