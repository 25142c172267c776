"""The table of formats: each one's extensions, first bytes, reader and writer.

Adding a format is one entry here; nothing else looks at format names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pomona.runtime.data.columns import Batch, Spec
from pomona.runtime.data.csv_read import read_csv
from pomona.runtime.data.csv_write import CsvWriter
from pomona.runtime.data.jsonl import JsonlWriter, read_jsonl
from pomona.runtime.data.npy import NPY_MAGIC, NpyWriter, read_npy
from pomona.runtime.data.parquet import PARQUET_MAGIC, ParquetWriter, read_parquet
from pomona.runtime.data.source import Source, compression_of

__all__ = ["FORMATS", "Format", "Writer", "format_for", "sniff"]


class Writer(Protocol):
    def write(self, keep: dict[str, Any], predictions: np.ndarray) -> None: ...

    def close(self) -> None: ...


Reader = Callable[[Source, Spec, int], Iterator[Batch]]


@dataclass(frozen=True)
class Format:
    name: str
    extensions: tuple[str, ...]
    reader: Reader
    writer: Callable[..., Writer]
    magic: bytes | None = None  # first bytes that identify a file without an extension
    named_columns: bool = True  # False: columns by position, no pass-through columns


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("csv", (".csv", ".tsv", ".tab", ".txt"), read_csv, CsvWriter),
        Format("jsonl", (".jsonl", ".ndjson"), read_jsonl, JsonlWriter),
        Format("npy", (".npy",), read_npy, NpyWriter, NPY_MAGIC, named_columns=False),
        Format("parquet", (".parquet", ".pq"), read_parquet, ParquetWriter, PARQUET_MAGIC),
    )
}


def format_for(path: str, default: str | None = "csv") -> str | None:
    """The format named by a file's extension (``rows.csv.gz`` -> csv), or ``default``."""
    if path == "-":
        return default
    p = Path(path)
    if compression_of(path) is not None:
        p = p.with_suffix("")
    suffix = p.suffix.lower()
    return next((f.name for f in FORMATS.values() if suffix in f.extensions), default)


def sniff(source: Source) -> Format:
    """The input's format: from its extension, else its first bytes, else CSV."""
    by_name = format_for(source.path or "-", None)
    if by_name is not None:
        return FORMATS[by_name]
    head = source.head
    by_magic = next((f for f in FORMATS.values() if f.magic and head.startswith(f.magic)), None)
    if by_magic is not None:
        return by_magic
    return FORMATS["jsonl" if head.lstrip().startswith(b"{") else "csv"]
