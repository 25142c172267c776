"""Opening an input: a file or stdin, decompressed by its extension or its first bytes.

A :class:`Source` hands out the decompressed bytes with ``read(n)``; its first bytes are
read ahead (``head``) to recognise the format and to decide whether the input is small
enough to read without pyarrow (whose import costs ~0.2 s).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pomona.runtime.errors import DataError

__all__ = [
    "COMPRESSIONS",
    "MAX_LINE_BYTES",
    "SMALL_INPUT",
    "Source",
    "arrow_available",
    "configure_arrow",
    "open_source",
]

#: Inputs no larger than this are read without pyarrow.
SMALL_INPUT = 1 << 20
#: Bytes read ahead to recognise an input (and its header line).
HEAD_BYTES = 1 << 20
#: The longest line (or quoted CSV record) a text input may have, unless told otherwise:
#: memory stays bounded even for an input without line breaks.
MAX_LINE_BYTES = 16 << 20

# compression -> (file extension, first bytes of such a file)
COMPRESSIONS: dict[str, tuple[str, bytes]] = {
    "gzip": (".gz", b"\x1f\x8b"),
    "zstd": (".zst", b"\x28\xb5\x2f\xfd"),
    "bz2": (".bz2", b"BZh"),
    "xz": (".xz", b"\xfd7zXZ\x00"),
}


def arrow_available() -> bool:
    """Whether pyarrow can be imported (the ``fast`` and ``train`` extras)."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def configure_arrow(pa: Any) -> None:
    """Set up pyarrow for Pomona's readers, once it is imported.

    - Arrow's jemalloc pool becomes the default one (unless ``ARROW_DEFAULT_MEMORY_POOL``
      chooses): it keeps the peak memory of a streamed CSV file ~10 MiB lower, and of a
      1M-row Parquet training run ~50 MiB lower, than the mimalloc pool.
    - pyarrow no longer swaps in its own SIGINT/SIGTERM handlers during a read. Its handler
      hands the signal on through a pipe and a thread, and a signal that lands just before
      the read ends is lost (about 1 in 12 ``pomona predict`` runs ended by SIGTERM went on
      reading). Python's own handlers then run between two blocks, which take milliseconds.
    """
    pa.enable_signal_handlers(False)
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    with contextlib.suppress(NotImplementedError, pa.ArrowNotImplementedError):  # no jemalloc
        pa.set_memory_pool(pa.jemalloc_memory_pool())


def compression_of(path: str) -> str | None:
    """The compression named by the file's extension (``rows.csv.gz`` -> gzip)."""
    suffix = Path(path).suffix.lower()
    return next((kind for kind, (ext, _) in COMPRESSIONS.items() if ext == suffix), None)


def _gzip(raw: Any, name: str) -> Any:
    import gzip

    return gzip.GzipFile(fileobj=raw, mode="rb")


def _bz2(raw: Any, name: str) -> Any:
    import bz2

    return bz2.BZ2File(raw)


def _xz(raw: Any, name: str) -> Any:
    import lzma

    return lzma.LZMAFile(raw)


def _zstd(raw: Any, name: str) -> Any:
    if not arrow_available():
        raise DataError(
            f"{name}: reading zstd-compressed files needs pyarrow: pip install 'pomona[fast]' "
            "(or decompress it first: zstd -d)"
        )
    import pyarrow as pa

    return pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), "zstd")


_DECOMPRESS: dict[str, Callable[[Any, str], Any]] = {
    "gzip": _gzip,
    "zstd": _zstd,
    "bz2": _bz2,
    "xz": _xz,
}


def _rewound(raw: IO[bytes]) -> bool:
    """Seek back to the start when the input can (files); False for pipes."""
    try:
        raw.seek(0)
    except (OSError, ValueError):
        return False
    return True


class _Prefixed:
    """A binary stream whose first bytes were already read: ``prefix``, then ``rest``."""

    closed = False

    def __init__(self, prefix: bytes, rest: IO[bytes]) -> None:
        self._prefix = prefix
        self._rest = rest

    def read(self, n: int = -1) -> bytes:
        if not self._prefix:
            return self._rest.read(n)
        if n < 0:
            data, self._prefix = self._prefix + self._rest.read(), b""
            return data
        data, self._prefix = self._prefix[:n], self._prefix[n:]
        if len(data) < n:
            data += self._rest.read(n - len(data))
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        return None


class Source:
    """Decompressed bytes of one input, its first bytes read ahead.

    ``path`` is None for stdin; ``compression`` is None for plain files. ``max_line`` is
    the longest line (in bytes) a text reader accepts.
    """

    def __init__(
        self,
        name: str,
        path: str | None,
        raw: IO[bytes],
        size: int | None,
        max_line: int = MAX_LINE_BYTES,
    ) -> None:
        self.name = name
        self.path = path
        self.size = size
        self.max_line = max_line
        self._raw = raw
        magic = raw.read(6)
        self.compression = compression_of(path or "") or next(
            (kind for kind, (_, m) in COMPRESSIONS.items() if magic.startswith(m)), None
        )
        stream: Any = raw if _rewound(raw) else _Prefixed(magic, raw)
        if self.compression is not None:
            stream = _DECOMPRESS[self.compression](stream, name)
        self._stream = stream
        self.head = self._read(HEAD_BYTES + 1)
        self.complete = len(self.head) <= HEAD_BYTES  # the whole input is in ``head``
        self.small = self.complete and len(self.head) <= SMALL_INPUT
        self._pending = self.head

    def _read(self, n: int) -> bytes:
        try:
            data: bytes = self._stream.read(n)
        except (OSError, EOFError, ValueError) as err:
            if self.compression is None:
                raise DataError(f"{self.name}: cannot read: {err}") from None
            raise DataError(f"{self.name}: cannot decompress ({self.compression}): {err}") from None
        return data

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end of the input)."""
        if self._pending:
            data, self._pending = self._pending[:n], self._pending[n:]
            return data if len(data) == n else data + self._read(n - len(data))
        return self._read(n)

    @property
    def consumed(self) -> int:
        """Bytes of the file (compressed, when it is) read so far; 0 for stdin."""
        try:
            return self._raw.tell() if self.path is not None else 0
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        if self._raw is not sys.stdin.buffer:
            self._raw.close()


def open_source(path: str | os.PathLike[str], max_line: int = MAX_LINE_BYTES) -> Source:
    """Open a file (``-`` for stdin); DataError when it is missing or unreadable."""
    name = os.fspath(path)
    if max_line < 1:
        raise ValueError(f"max_line must be >= 1, got {max_line}")
    if name == "-":
        return Source("<stdin>", None, sys.stdin.buffer, None, max_line)
    try:
        handle = open(name, "rb")  # noqa: SIM115 - owned by the Source
    except FileNotFoundError:
        raise DataError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{name}: is a folder, not a file") from None
    except OSError as err:
        raise DataError(f"{name}: cannot read it: {err.strerror or err}") from None
    try:
        return Source(name, name, handle, os.fstat(handle.fileno()).st_size, max_line)
    except BaseException:
        handle.close()
        raise
