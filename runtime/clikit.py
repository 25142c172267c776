"""Small helpers shared by every ``pomona`` subcommand (runtime, train and export).

``say`` prints status on stderr (stdout is for data); ``user_errors`` turns a
:class:`~pomona.runtime.errors.PomonaError` into one ``Error: ...`` line and exit status 1.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import click

from pomona.runtime.backends import BACKENDS
from pomona.runtime.errors import PomonaError

__all__ = ["backend_option", "say", "user_errors"]

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


#: ``--backend`` of ``pomona predict``, ``info`` and ``serve`` (:mod:`pomona.runtime.backends`).
backend_option = click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="auto",
    show_default=True,
    envvar="POMONA_BACKEND",
    help="Run the model with onnxruntime, or numpy alone; auto: onnxruntime when it "
    "imports, else numpy.",
)
