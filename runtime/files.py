"""File helpers shared by every stage: atomic writes and checksums.

Train, export and the runtime write every file through :func:`atomic_write`, so a
failure never leaves a partial file behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "file_sha256",
    "remove_temporary_files",
    "temporary_folder",
]

#: Temporary files and folders in use now (removed by a signal handler).
_LIVE: set[str] = set()


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for a moment, so a temporary file is never unregistered."""
    import signal

    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - not POSIX
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def remove_temporary_files() -> None:
    """Remove the temporary files of every :func:`atomic_write` in progress, and every
    :func:`temporary_folder` in use.

    For a signal handler that ends the process: their targets are left as they were.
    """
    import shutil

    for tmp in list(_LIVE):
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.unlink(tmp)


@contextlib.contextmanager
def temporary_folder(parent: str | os.PathLike[str], prefix: str) -> Iterator[Path]:
    """A new, empty folder in ``parent`` for staging files that are then renamed into
    place; removed with whatever is left in it when the block ends, and by
    :func:`remove_temporary_files` when a signal ends the process first."""
    import shutil
    import tempfile

    with _signals_held():
        folder = tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent)
        _LIVE.add(folder)
    try:
        yield Path(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _LIVE.discard(folder)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "wb", **kwargs: Any
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was; a
    signal handler that ends the process removes it with :func:`remove_temporary_files`.
    """
    import tempfile  # only when a file is written: keeps `pomona predict ... > out` quick to start

    target = Path(path)
    with _signals_held():
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        _LIVE.add(tmp)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are meant to be shared
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        _LIVE.discard(tmp)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` with :func:`atomic_write`."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    import hashlib  # only when there is a checksum to compute

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
