"""The one exception tree of Pomona.

Library code raises these; only the CLI layer turns them into a message and an
exit code, and only the HTTP layer turns them into a status and ``{"error": ...}``.
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "DataError",
    "InputError",
    "PomonaError",
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
