"""One tabular data layer: CSV, JSON Lines, ``.npy`` and Parquet in and out.

Readers turn an input into :class:`Batch` objects of float32 columns (and pass-through
columns); writers turn predictions back into a file. Both are looked up by format in
:data:`FORMATS`. One set of rules decides what a number is
(:mod:`~pomona.runtime.data.numbers`) and one module words every error
(:mod:`~pomona.runtime.data.messages`), so ``pomona train``, ``export`` and ``predict``
say the same thing about the same file. pyarrow is used where installed, for large
inputs and for Parquet; values and output text never depend on it.
"""

from __future__ import annotations

from pomona.runtime.data.columns import Batch, Spec
from pomona.runtime.data.formats import FORMATS, Format, format_for
from pomona.runtime.data.numbers import format_float32
from pomona.runtime.data.pipeline import predict_file
from pomona.runtime.data.reading import DEFAULT_BATCH_SIZE, open_batches, read_numbers
from pomona.runtime.data.source import MAX_LINE_BYTES, SMALL_INPUT, arrow_available

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "FORMATS",
    "MAX_LINE_BYTES",
    "SMALL_INPUT",
    "Batch",
    "Format",
    "Spec",
    "arrow_available",
    "format_float32",
    "format_for",
    "open_batches",
    "predict_file",
    "read_numbers",
]
