"""One wording for every data error: where (file, line or row, column), then what.

Every reader and every command builds its messages here, so the same bad file reads the
same in ``pomona train``, ``pomona export`` and ``pomona predict``. Lines are counted in
the file as an editor shows them (the header is line 1, blank lines count); ``.npy`` and
Parquet have no lines, so their places are rows (1 is the first data row).
"""

from __future__ import annotations

from collections.abc import Sequence

from pomona.runtime.errors import DataError

__all__ = [
    "at",
    "empty_cell",
    "empty_file",
    "line_too_long",
    "no_column",
    "no_rows",
    "not_a_number",
    "not_finite",
    "not_utf8",
    "ragged",
    "repeated_column",
]

_LISTED = 20  # columns named in a message; a header may have 100k
_DELIMITER_NAMES = {",": "','", ";": "';'", "\t": "tab", "|": "'|'"}


def at(name: str, line: int | None = None, column: str | None = None, unit: str = "line") -> str:
    """``file``, ``file, line 3`` or ``file, line 3, column 'x'``."""
    text = name
    if line is not None:
        text += f", {unit} {line}"
    if column is not None:
        text += f", column '{column}'"
    return text


def delimiter_name(delimiter: str) -> str:
    return _DELIMITER_NAMES.get(delimiter, repr(delimiter))


def empty_file(name: str, what: str) -> DataError:
    return DataError(f"{name}: the file is empty; expected {what}")


def no_rows(name: str) -> DataError:
    return DataError(f"{name}: no data rows after the header")


def no_column(
    where: str, column: str, present: Sequence[str], delimiter: str | None = None
) -> DataError:
    """A wanted column is not there; for CSV, ``delimiter`` is the one the header was split at."""
    shown = list(present[:_LISTED])
    found = ", ".join(shown) if shown else "none"
    if len(present) > _LISTED:
        found += f", ... ({len(present)} in all)"
    if delimiter is None:
        return DataError(f"{where}: no column '{column}' (columns: {found})")
    split = f"; split at {delimiter_name(delimiter)}"
    return DataError(f"{where}: no column '{column}' in the header (columns: {found}{split})")


def repeated_column(where: str, column: str, count: int) -> DataError:
    return DataError(f"{where}: column '{column}' appears {count} times")


def ragged(where: str, fields: int, width: int) -> DataError:
    return DataError(f"{where}: {fields} fields, but the header has {width}")


def not_utf8(where: str, byte: int) -> DataError:
    return DataError(
        f"{where}: not UTF-8 text (byte 0x{byte:02x}); save the file as UTF-8 "
        "(e.g. iconv -f latin1 -t utf-8)"
    )


def size_text(n: int) -> str:
    """``16 MiB``, ``64 KiB`` or ``1000 bytes``."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def line_too_long(where: str, limit: int) -> DataError:
    return DataError(
        f"{where}: a line longer than {size_text(limit)} ({limit} bytes), the limit; "
        "raise it with --max-line-bytes"
    )


def empty_cell(where: str, what: str = "empty cell") -> DataError:
    return DataError(f"{where}: {what}, expected a number")


def _shown(text: object) -> str:
    """A cell as quoted in a message: at most 40 characters (a cell may be megabytes)."""
    shown = text if isinstance(text, str) else str(text)
    return repr(shown[:37] + "..." if len(shown) > 40 else shown)


def not_a_number(where: str, text: object) -> DataError:
    return DataError(f"{where}: {_shown(text)} is not a number")


def not_finite(where: str, text: object) -> DataError:
    return DataError(f"{where}: {_shown(text)} is not a finite float32 number")
