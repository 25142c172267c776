"""``.npy`` in and out: a numeric array ``[rows, columns]``, columns by position."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import IO, Any

import numpy as np

from pomona.runtime.data import messages
from pomona.runtime.data.columns import Batch, Spec
from pomona.runtime.data.numbers import require_finite
from pomona.runtime.data.source import Source
from pomona.runtime.errors import DataError

__all__ = ["NPY_MAGIC", "NpyWriter", "read_npy"]

NPY_MAGIC = b"\x93NUMPY"
_NUMERIC_KINDS = frozenset("iuf")


def _header(source: Source) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    try:
        version = np.lib.format.read_magic(source)  # type: ignore[arg-type]
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(source)  # type: ignore[arg-type]
        return np.lib.format.read_array_header_2_0(source)  # type: ignore[arg-type]
    except ValueError as err:
        raise DataError(f"{source.name}: not a .npy file ({err})") from None


def read_npy(source: Source, spec: Spec, batch_size: int) -> Iterator[Batch]:
    """Batches of rows of a 2-D numeric array, its columns standing for ``spec.numbers``."""
    name = source.name
    if not source.head:
        raise messages.empty_file(name, "a .npy array")
    if spec.keep or not spec.positional:
        raise DataError(f"{name}: a .npy array has no column names; use CSV, JSON Lines or Parquet")
    shape, fortran, dtype = _header(source)
    width = len(spec.numbers)
    if dtype.kind not in _NUMERIC_KINDS or dtype.names is not None:
        raise DataError(f"{name}: expected a numeric array, got dtype {dtype}")
    if len(shape) == 1:
        shape = (1, *shape)
    if len(shape) != 2 or shape[1] != width:
        raise DataError(f"{name}: expected an array of shape [rows, {width}], got {shape}")
    rows = shape[0]
    if fortran:
        data = source.read(rows * width * dtype.itemsize)
        if len(data) < rows * width * dtype.itemsize:
            raise DataError(f"{name}: truncated: the header promises {rows} rows")
        array = np.frombuffer(data, dtype, count=rows * width).reshape(shape, order="F")
        for start in range(0, rows, batch_size):
            yield Batch(_checked(array[start : start + batch_size], spec, name, start), start + 1)
        return
    row_bytes = width * dtype.itemsize
    for start in range(0, rows, batch_size):
        n = min(batch_size, rows - start)
        data = source.read(n * row_bytes)
        if len(data) < n * row_bytes:
            found = start + len(data) // row_bytes
            raise DataError(f"{name}: truncated: the header promises {rows} rows, found {found}")
        array = np.frombuffer(data, dtype).reshape(n, width)
        yield Batch(_checked(array, spec, name, start), start + 1)


def _checked(array: np.ndarray, spec: Spec, name: str, start: int) -> np.ndarray:
    flat = array.reshape(-1)

    def describe(i: int) -> tuple[str, object]:
        row, col = divmod(i, array.shape[1])
        where = messages.at(name, start + row + 1, spec.numbers[col], unit="row")
        return where, array[row, col]

    return np.ascontiguousarray(require_finite(flat, describe).reshape(array.shape))


class NpyWriter:
    """Writes ``[rows, T]`` float32; the header is rewritten with the row count at the end."""

    _HEADER = 128

    def __init__(self, sink: IO[bytes], keep: Sequence[str], targets: Sequence[str]) -> None:
        import tempfile

        self.sink = sink
        self.width = len(targets)
        self.rows = 0
        self.out = sink if sink.seekable() else tempfile.TemporaryFile()  # noqa: SIM115
        self.out.write(self._header(0))

    def _header(self, rows: int) -> bytes:
        fields = {"descr": "<f4", "fortran_order": False, "shape": (rows, self.width)}
        text = repr(fields).encode("latin1")
        pad = self._HEADER - len(NPY_MAGIC) - 4 - len(text) - 1
        size = (len(text) + pad + 1).to_bytes(2, "little")
        return NPY_MAGIC + b"\x01\x00" + size + text + b" " * pad + b"\n"

    def write(self, keep: dict[str, Any], predictions: np.ndarray) -> None:
        self.out.write(np.ascontiguousarray(predictions, dtype="<f4").tobytes())
        self.rows += predictions.shape[0]

    def close(self) -> None:
        self.out.seek(0)
        self.out.write(self._header(self.rows))
        if self.out is not self.sink:
            import shutil

            self.out.seek(0)
            shutil.copyfileobj(self.out, self.sink, 1 << 20)
            self.out.close()
