"""Data sets in several files: a folder or a glob of shards, read one after another.

``--data`` may name one file, a folder (every data file directly in it) or a glob
(``data/part-*.parquet``). The shards are taken in sorted order and must all hold the
wanted columns; each is read by the ordinary readers, so a bad cell is reported with the
shard's name and line exactly as for a single file. :func:`shards_sha256` identifies the
whole set (one file: its own sha256), which ``--resume`` compares.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from pomona.runtime.data import messages
from pomona.runtime.data.columns import Spec
from pomona.runtime.data.formats import FORMATS, format_for
from pomona.runtime.data.reading import DEFAULT_BATCH_SIZE, open_batches
from pomona.runtime.data.source import HEAD_BYTES
from pomona.runtime.errors import DataError
from pomona.runtime.files import file_sha256

__all__ = [
    "available_memory",
    "estimate_rows",
    "find_shards",
    "shard_blocks",
    "shards_sha256",
]

_GLOB_CHARS = frozenset("*?[")


def _is_data_file(path: Path) -> bool:
    if not path.is_file() or path.name.startswith((".", "_")):
        return False
    name = format_for(str(path), None)
    return name is not None and FORMATS[name].named_columns


def find_shards(path: str | os.PathLike[str]) -> list[str]:
    """The data files ``path`` names, sorted: the file itself, a folder's files, or a glob's.

    DataError when nothing is there. Hidden files and files starting with ``_`` (such as
    Spark's ``_SUCCESS``) in a folder are skipped, like files of other types.
    """
    name = os.fspath(path)
    p = Path(name)
    if p.is_dir():
        files = sorted(str(f) for f in p.iterdir() if _is_data_file(f))
        if not files:
            kinds = ", ".join(e for f in FORMATS.values() if f.named_columns for e in f.extensions)
            raise DataError(f"{name}: is a folder with no data files in it ({kinds})")
        return files
    if p.exists() or not _GLOB_CHARS & set(name):
        if not p.exists():
            raise DataError(f"{name}: no such file")
        return [name]
    files = sorted(f for f in glob.glob(name) if Path(f).is_file())
    if not files:
        raise DataError(f"{name}: no files match")
    return files


def shards_sha256(files: Sequence[str]) -> str:
    """One file's sha256, or for several, the sha256 of their sha256s in order."""
    digests = [file_sha256(f) for f in files]
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def shard_blocks(
    files: Sequence[str], columns: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE
) -> Iterator[tuple[int, np.ndarray]]:
    """(shard index, float32 ``[rows, len(columns)]``) blocks of each shard in ``files``' order.

    Each shard is read lazily, so memory holds about one block whatever the data's size.
    DataError (naming the shard) on a missing column, a bad cell or a shard without rows.
    """
    spec = Spec.of(columns)
    for index, file in enumerate(files):
        with open_batches(file, spec, batch_size) as (source, _, batches):
            empty = True
            for batch in batches:
                empty = False
                yield index, batch.values
            if empty:
                raise messages.no_rows(source.name)


def estimate_rows(files: Sequence[str]) -> int:
    """About how many rows the shards hold: Parquet's own count, else the size over the
    mean length of the first lines (an estimate, to decide between memory and streaming)."""
    total = 0
    for file in files:
        if format_for(file, None) == "parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(file).metadata.num_rows
            continue
        with open(file, "rb") as handle:
            head = handle.read(HEAD_BYTES)
        lines = max(head.count(b"\n"), 1)
        total += int(os.path.getsize(file) / (len(head) / lines)) if head else 0
    return total


def available_memory() -> int | None:
    """Bytes of memory available to new work (MemAvailable on Linux), None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
