"""What counts as a number in a text cell, and how a float32 is written as text.

A cell is a number when Python's ``float()`` reads it and it holds only ASCII
characters and no ``_``: ``1_000`` and non-ASCII digits are refused (CSV readers such
as pyarrow and pandas refuse them too). Surrounding spaces are allowed. Values must be
finite once rounded to float32, so ``nan``, ``inf`` and ``1e39`` are refused.

Every float32 is written in the shortest text that reads back as the same float32,
in one style, whichever writer and file size: decimal notation for decimal exponents
-6 to 9 without a trailing ``.0`` (``84``, ``0.000001``, ``123456790``), otherwise
``1.5e-7`` or ``3.4028235e+38``. This is the style of pyarrow's CSV writer, so large
files written by pyarrow and small files written here read the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pomona.runtime.data import messages

__all__ = ["arrow_values", "format_float32", "parse_numbers", "require_finite"]

#: Decimal exponents written in decimal notation (others in exponent notation).
_DECIMAL_EXPONENTS = range(-6, 10)

# Where a cell is, by its index in the column: "file, line 7, column 'x'".
Locate = Callable[[int], str]


def parse_numbers(cells: Sequence[str], locate: Locate) -> np.ndarray:
    """Float32 values of a column of text cells, all checked; a bad cell raises DataError."""
    joined = "\x00".join(cells)
    if "_" in joined or not joined.isascii():
        _raise_first_bad(cells, locate)
    try:
        values = np.array(cells, dtype=np.float64)
    except ValueError:
        _raise_first_bad(cells, locate)
        raise  # pragma: no cover - _raise_first_bad always raises here
    return require_finite(values, lambda i: (locate(i), cells[i].strip()))


def _raise_first_bad(cells: Sequence[str], locate: Locate) -> None:
    for i, cell in enumerate(cells):
        text = cell.strip()
        if not text:
            raise messages.empty_cell(locate(i))
        try:
            float(text)
        except ValueError:
            raise messages.not_a_number(locate(i), text) from None
        if "_" in text or not text.isascii():
            raise messages.not_a_number(locate(i), text)


def require_finite(values: np.ndarray, describe: Callable[[int], tuple[str, object]]) -> np.ndarray:
    """``values`` as float32, or DataError for the first one that is not finite in float32.

    ``describe(i)`` gives the place and the original text of value ``i``.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        single = values.astype(np.float32, copy=False)
    finite = np.isfinite(single)
    if not finite.all():
        where, text = describe(int(np.flatnonzero(~finite)[0]))
        raise messages.not_finite(where, text)
    return single


def arrow_values(array: Any) -> np.ndarray:
    """A pyarrow array of integers or floats without nulls as a numpy view of its buffer.

    pyarrow's own ``to_numpy`` imports pandas where it is installed (~0.4 s and ~40 MiB),
    which reading numbers does not need.
    """
    dtype = np.dtype(array.type.to_pandas_dtype())
    if not len(array):
        return np.empty(0, dtype)
    data = array.buffers()[1]
    return np.frombuffer(data, dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)


def format_float32(values: np.ndarray) -> list[str]:
    """Each float32 of ``values`` (1-D) as text, in the one style described above."""
    strings: list[str] = np.asarray(values, dtype=np.float32).astype(str).tolist()
    return [_restyle(s) for s in strings]


def _restyle(text: str) -> str:
    """numpy's shortest text of a float32 in the shared style."""
    if "e" not in text:
        if text.endswith(".0"):
            return text[:-2]
        return text  # numpy writes decimal notation only inside _DECIMAL_EXPONENTS
    mantissa, exponent_text = text.split("e")
    sign = "-" if mantissa.startswith("-") else ""
    digits = mantissa.lstrip("-").replace(".", "").rstrip("0") or "0"
    exponent = int(exponent_text)
    if exponent in _DECIMAL_EXPONENTS:
        if exponent < 0:
            return f"{sign}0.{'0' * (-exponent - 1)}{digits}"
        whole, fraction = digits[: exponent + 1], digits[exponent + 1 :]
        return sign + whole.ljust(exponent + 1, "0") + (f".{fraction}" if fraction else "")
    tail = f".{digits[1:]}" if len(digits) > 1 else ""
    return f"{sign}{digits[0]}{tail}e{'+' if exponent > 0 else '-'}{abs(exponent)}"
