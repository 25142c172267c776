"""Small helpers shared by every ``pomona`` subcommand (runtime, train and export).

``say`` prints status on stderr (stdout is for data); ``user_errors`` turns a
:class:`~pomona.runtime.errors.PomonaError` into one ``Error: ...`` line and exit status 1,
and so does a stdout that cannot be written (a full disk); a closed pipe on stdout
(``pomona predict ... | head``) ends the command quietly with status 1, as click does.
``clean_up_on_signals`` removes temporary output files when SIGINT or SIGTERM ends a
command.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import ParamSpec, TypeVar

import click

from pomona.runtime.backends import BACKENDS
from pomona.runtime.errors import PomonaError, stdout_error
from pomona.runtime.files import remove_temporary_files

__all__ = ["backend_option", "clean_up_on_signals", "echo_data", "say", "user_errors"]

P = ParamSpec("P")
R = TypeVar("R")

#: The signals after which :func:`clean_up_on_signals` removes temporary files.
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def say(message: str) -> None:
    """Print a status message on stderr (stdout is for data)."""
    click.echo(message, err=True)


def echo_data(text: str) -> None:
    """Print ``text`` (data) on stdout; DataError when stdout cannot be written."""
    try:
        click.echo(text)
        sys.stdout.flush()
    except OSError as err:
        raise stdout_error(err) from None


def _stdout_broken() -> bool:
    """Whether stdout cannot be written; if so, it is pointed at /dev/null so that the
    interpreter's last flush at exit does not print a traceback."""
    try:
        sys.stdout.flush()
    except OSError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return True
    return False


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn a :class:`PomonaError` into one ``Error: ...`` line and exit status 1.

    Stdout is then pointed at /dev/null if it cannot be written (a full disk, a closed
    pipe), so that only the one line is printed.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except PomonaError as err:
            _stdout_broken()
            raise click.ClickException(str(err)) from err

    return wrapper


def _end_by(signum: int, frame: FrameType | None) -> None:
    """Remove temporary files, then die of the same signal (status 128 + signum)."""
    remove_temporary_files()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


@contextlib.contextmanager
def _signals_end_cleanly() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _end_by) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def clean_up_on_signals(fn: Callable[P, R]) -> Callable[P, R]:
    """On SIGINT or SIGTERM, remove the temporary files of unfinished atomic writes and
    end with that signal (a shell shows status 130 or 143), leaving no partial output."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with _signals_end_cleanly():
            return fn(*args, **kwargs)

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
