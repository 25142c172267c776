"""Parquet in and out, with pyarrow (the ``fast`` and ``train`` extras)."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import IO, Any

import numpy as np

from pomona.runtime.data import messages
from pomona.runtime.data import source as _source
from pomona.runtime.data.columns import Batch, Spec
from pomona.runtime.data.numbers import arrow_values, require_finite
from pomona.runtime.data.source import Source
from pomona.runtime.errors import DataError

__all__ = ["PARQUET_MAGIC", "ParquetWriter", "read_parquet"]

PARQUET_MAGIC = b"PAR1"


def _pyarrow(name: str) -> Any:
    if not _source.arrow_available():
        raise DataError(f"{name}: Parquet needs pyarrow: pip install 'pomona[fast]'")
    import pyarrow as pa
    import pyarrow.parquet as pq

    _source.configure_arrow(pa)
    return pa, pq


def _open(source: Source, pa: Any, pq: Any) -> Any:
    if not source.head:
        raise messages.empty_file(source.name, "a Parquet file")
    if source.path is not None and source.compression is None:
        where: Any = source.path
    else:  # stdin or compressed: Parquet needs random access
        where = pa.BufferReader(_rest(source))
    try:
        # Read column chunks through a 1 MiB buffer: without it a whole row group's
        # compressed bytes are held (~130 MiB more at 1M-row row groups).
        return pq.ParquetFile(where, buffer_size=1 << 20, pre_buffer=False)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{source.name}: not a Parquet file ({err})") from None


def _rest(source: Source) -> bytes:
    chunks = io.BytesIO()
    while data := source.read(1 << 24):
        chunks.write(data)
    return chunks.getvalue()


def _numbers(array: Any, pa: Any, where: Any) -> np.ndarray:
    """A numeric pyarrow array as float32, checked: no nulls, finite (after rounding)."""
    numeric = pa.types.is_integer(array.type) or pa.types.is_floating(array.type)
    if not numeric and array.null_count < len(array):
        first = next(v for v in array.to_pylist() if v is not None)
        raise messages.not_a_number(where(array.to_pylist().index(first)), first)
    if array.null_count:
        raise messages.empty_cell(where(array.to_pylist().index(None)))
    numbers = arrow_values(array)
    return require_finite(numbers, lambda i: (where(i), numbers[i]))


def read_parquet(source: Source, spec: Spec, batch_size: int) -> Iterator[Batch]:
    """Batches of the named columns of a Parquet file."""
    name = source.name
    pa, pq = _pyarrow(name)
    parquet = _open(source, pa, pq)
    present = list(parquet.schema_arrow.names)
    for column in spec.wanted:
        if column not in present:
            raise messages.no_column(name, column, present)
        if present.count(column) > 1:
            raise messages.repeated_column(name, column, present.count(column))
    row = 1
    for record in parquet.iter_batches(batch_size=batch_size, columns=spec.wanted):
        values = np.empty((record.num_rows, len(spec.numbers)), dtype=np.float32)
        for j, column in enumerate(spec.numbers):

            def where(i: int, c: str = column, first: int = row) -> str:
                return messages.at(name, first + i, c, unit="row")

            values[:, j] = _numbers(record.column(column), pa, where)
        keep = {k: record.column(k) for k in spec.keep}
        yield Batch(values, row, keep)
        row += record.num_rows


class ParquetWriter:
    """The kept columns with their types, then one float32 column per prediction."""

    def __init__(self, sink: IO[bytes], keep: Sequence[str], targets: Sequence[str]) -> None:
        self.pa, self.pq = _pyarrow("Parquet output")
        self.sink = sink
        self.keep = list(keep)
        self.names = [*keep, *targets]
        self.writer: Any = None

    def write(self, keep: dict[str, Any], predictions: np.ndarray) -> None:
        pa = self.pa
        kept = [keep[k] if isinstance(keep[k], pa.Array) else pa.array(keep[k]) for k in self.keep]
        by_column = np.ascontiguousarray(predictions.T, dtype=np.float32)
        n = by_column.shape[1]
        predicted = [
            pa.Array.from_buffers(pa.float32(), n, [None, pa.py_buffer(c)]) for c in by_column
        ]
        batch = pa.RecordBatch.from_arrays([*kept, *predicted], names=self.names)
        if self.writer is None:
            self.writer = self.pq.ParquetWriter(self.sink, batch.schema)
        self.writer.write_batch(batch)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
