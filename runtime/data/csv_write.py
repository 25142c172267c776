"""CSV out: a header line, then the kept columns and the predictions of each row.

Numbers are written by :func:`~pomona.runtime.data.numbers.format_float32`'s rule
whichever writer runs: pyarrow's CSV writer (it formats floats in that style, without
the GIL) when a reader has loaded pyarrow and the kept columns are pyarrow strings that
need no quotes, else the ``csv`` module, which quotes only the fields that need it.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from typing import IO, Any

import numpy as np

from pomona.runtime.data.numbers import format_float32

__all__ = ["CsvWriter"]

_NEEDS_QUOTES = np.frombuffer(b'",\r\n', dtype=np.uint8)


def _as_strings(values: Any) -> list[str]:
    if hasattr(values, "to_pylist"):
        values = values.to_pylist()
    return [v if isinstance(v, str) else json.dumps(v) for v in values]


class CsvWriter:
    def __init__(
        self,
        sink: IO[bytes],
        keep: Sequence[str],
        targets: Sequence[str],
        *,
        arrow: bool | None = None,
    ) -> None:
        """``arrow``: use pyarrow's writer where it can; None: when a reader has loaded it."""
        self.sink = sink
        self.keep = list(keep)
        self.names = [*keep, *targets]
        self.arrow: Any = None
        if arrow if arrow is not None else "pyarrow.csv" in sys.modules:
            import pyarrow as pa
            import pyarrow.csv as pacsv

            self.arrow = (pa, pacsv, pacsv.WriteOptions(include_header=False, quoting_style="none"))
        sink.write(self._lines([self.names]))

    @staticmethod
    def _lines(rows: Any) -> bytes:
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        return text.getvalue().encode()

    def _plain_strings(self, values: Any) -> bool:
        """Whether ``values`` is a pyarrow string array none of whose cells needs quotes."""
        pa = self.arrow[0]
        if not isinstance(values, pa.Array) or values.type != pa.string() or values.null_count:
            return False
        data = values.buffers()[2]
        if data is None:
            return True
        return not np.isin(np.frombuffer(data, dtype=np.uint8), _NEEDS_QUOTES).any()

    def write(self, keep: dict[str, Any], predictions: np.ndarray) -> None:
        if self.arrow is not None and all(self._plain_strings(keep[k]) for k in self.keep):
            self._write_arrow([keep[k] for k in self.keep], predictions)
            return
        kept = [_as_strings(keep[k]) for k in self.keep]
        predicted = [format_float32(predictions[:, j]) for j in range(predictions.shape[1])]
        self.sink.write(self._lines(zip(*kept, *predicted, strict=True)))

    def _write_arrow(self, kept: list[Any], predictions: np.ndarray) -> None:
        pa, pacsv, options = self.arrow
        # Arrays from buffers: pa.array(ndarray) would import pandas when it is installed.
        by_column = np.ascontiguousarray(predictions.T, dtype=np.float32)
        n = by_column.shape[1]
        columns = [
            *kept,
            *(pa.Array.from_buffers(pa.float32(), n, [None, pa.py_buffer(c)]) for c in by_column),
        ]
        batch = pa.RecordBatch.from_arrays(columns, names=self.names)
        pacsv.write_csv(batch, self.sink, options)

    def close(self) -> None:
        return None
