"""The one exception tree of Pomona.

Library code raises these; only the CLI layer turns them into a message and an
exit code, and only the HTTP layer turns them into a status and ``{"error": ...}``.
"""

from __future__ import annotations

import errno

__all__ = [
    "ArtifactError",
    "DataError",
    "InputError",
    "PomonaError",
    "stdout_error",
]


class PomonaError(Exception):
    """Base class: a failure the user can act on. ``str(err)`` is the whole message."""

    #: HTTP status used when the error reaches a client of ``pomona serve``.
    http_status: int = 400
    #: Exit status used when the error reaches the command line.
    exit_code: int = 1


class DataError(PomonaError):
    """A data file cannot be used: missing, empty, truncated, wrong columns, bad cells."""


class InputError(PomonaError):
    """Values handed to a model have the wrong shape, type or non-finite entries."""


class ArtifactError(PomonaError):
    """A checkpoint or model file is missing, corrupt, of another format, or changed."""

    http_status = 500


def stdout_error(err: OSError) -> DataError:
    """The one message for output that stdout did not take: a closed pipe or a full disk."""
    if err.errno == errno.EPIPE:
        return DataError("<stdout>: the reader closed the pipe before all output was written")
    return DataError(f"<stdout>: cannot write: {err.strerror or err}")
