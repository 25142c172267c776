"""CSV in: a header line, then rows, read block by block into float32 columns.

Blocks of about ``batch_size`` rows are parsed with pyarrow when the input is large and
pyarrow is installed, else with the ``csv`` module and numpy. Both follow the same rules
(:mod:`pomona.runtime.data.numbers`): a block pyarrow refuses, or one with a missing or
non-finite value, is parsed again with the ``csv`` module, which names the line and the
column of the first problem (or accepts the block, with the same values).
"""

from __future__ import annotations

import collections
import csv
import functools
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pomona.runtime.data import messages
from pomona.runtime.data import source as _source
from pomona.runtime.data.columns import Batch, Spec
from pomona.runtime.data.numbers import arrow_values, parse_numbers
from pomona.runtime.data.source import Source
from pomona.runtime.data.text import Block, blocks, decode, strip_bom
from pomona.runtime.errors import DataError

__all__ = ["Header", "read_csv", "read_header"]

#: Delimiters recognised in a header line, in order of preference.
DELIMITERS = (",", "\t", ";", "|")
_TAB_EXTENSIONS = (".tsv", ".tab")


@dataclass(frozen=True)
class Header:
    names: list[str]
    delimiter: str
    size: int  # bytes up to the first data line (BOM and line break included)

    @functools.cached_property
    def _positions(self) -> dict[str, int]:
        """Each name's first position, found in one pass (a header may have 100k columns)."""
        positions: dict[str, int] = {}
        for i, name in enumerate(self.names):
            positions.setdefault(name, i)
        return positions

    def index(self, column: str) -> int:
        return self._positions[column]


def _delimiter(line: str, source: Source, given: str | None) -> str:
    if given is not None:
        return given
    if source.path is not None and _suffix(source.path) in _TAB_EXTENSIONS:
        return "\t"
    return next((d for d in DELIMITERS if d in line), ",")


def _suffix(path: str) -> str:
    p = Path(path)
    if p.suffix.lower() in {".gz", ".zst", ".bz2", ".xz"}:
        p = p.with_suffix("")
    return p.suffix.lower()


def read_header(source: Source, spec: Spec) -> Header:
    """The header line; DataError unless every wanted column is in it exactly once."""
    name = source.name
    head = strip_bom(source.head)
    if not head.strip():
        raise messages.empty_file(name, "a header line and data rows")
    decode(head[: head.find(b"\x00") + 1], name, 1)  # binary data: refused from the start
    end = head.find(b"\n")
    if end < 0 and not source.complete:
        raise DataError(f"{name}, line 1: no end of the header line in the first 1 MiB")
    line = decode(head[: end if end >= 0 else len(head)], name, 1).rstrip("\r")
    delimiter = _delimiter(line, source, spec.delimiter)
    try:
        names = [n.strip() for n in next(csv.reader([line], delimiter=delimiter))]
    except (csv.Error, StopIteration) as err:
        raise DataError(f"{name}, line 1: not a CSV header line: {err}") from None
    counts = collections.Counter(names)  # one pass: linear in the number of columns
    for column in spec.wanted:
        count = counts[column]
        if count == 0:
            raise messages.no_column(messages.at(name, 1), column, names, delimiter)
        if count > 1:
            raise messages.repeated_column(messages.at(name, 1), column, count)
    size = len(source.head) - len(head) + (end + 1 if end >= 0 else len(head))
    return Header(names, delimiter, size)


# -- the csv module ----------------------------------------------------------------------------


def _rows(text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(line offset in the text, fields) of each row, blank lines skipped."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    start = 0
    for row in reader:
        if len(row) > 1 or (row and row[0].strip()):
            yield start, row
        start = reader.line_num


def parse_block(block: Block, header: Header, spec: Spec, name: str, first_row: int) -> Batch:
    """One block of whole lines, parsed with the ``csv`` module and checked."""
    text = decode(block.data, name, block.line)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=header.delimiter)
    try:
        rows = [r for r in reader if len(r) > 1 or (r and r[0].strip())]
    except csv.Error as err:
        where = messages.at(name, block.line + reader.line_num - 1)
        raise DataError(f"{where}: not valid CSV: {err}") from None
    lines: list[int] = []

    def line_of(i: int) -> int:
        if not lines:
            lines.extend(block.line + start for start, _ in _rows(text, header.delimiter))
        return lines[i]

    width = len(header.names)
    if any(len(r) != width for r in rows):
        i = next(i for i, r in enumerate(rows) if len(r) != width)
        raise messages.ragged(messages.at(name, line_of(i)), len(rows[i]), width)
    columns: Sequence[Sequence[str]] = list(zip(*rows, strict=True)) or [()] * width
    values = np.empty((len(rows), len(spec.numbers)), dtype=np.float32)
    for j, column in enumerate(spec.numbers):
        cells = columns[header.index(column)]
        values[:, j] = parse_numbers(
            cells,
            lambda i, c=column: messages.at(name, line_of(i), c),  # type: ignore[misc]
        )
    keep = {k: list(columns[header.index(k)]) for k in spec.keep}
    return Batch(values, first_row, keep)


# -- pyarrow -----------------------------------------------------------------------------------


class _ArrowParser:
    """Parses blocks with ``pyarrow.csv.read_csv``; hands refused blocks to the csv module."""

    def __init__(self, header: Header, spec: Spec, name: str) -> None:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        _source.configure_arrow(pa)
        self.pa, self.pacsv = pa, pacsv
        self.header, self.spec, self.name = header, spec, name
        seen: set[str] = set()
        unique = []
        for i, column in enumerate(header.names):  # repeated unused columns get unique names
            unique.append(column if column not in seen else f"{column}\x00{i}")
            seen.add(column)
        self.column_names = unique
        types = {c: pa.float64() for c in spec.numbers}
        types.update({c: pa.string() for c in spec.keep if c not in types})
        self.convert = pacsv.ConvertOptions(
            include_columns=spec.wanted,
            column_types=types,
            null_values=[""],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )
        self.parse = pacsv.ParseOptions(delimiter=header.delimiter)

    def __call__(self, block: Block, first_row: int) -> Batch:
        pa = self.pa
        if not block.data.isascii():
            decode(block.data, self.name, block.line)  # the whole file must be UTF-8
        options = self.pacsv.ReadOptions(
            column_names=self.column_names, block_size=len(block.data) + 1
        )
        try:
            table = self.pacsv.read_csv(
                pa.py_buffer(block.data),
                read_options=options,
                parse_options=self.parse,
                convert_options=self.convert,
            )
        except (pa.ArrowInvalid, pa.ArrowKeyError):
            return parse_block(block, self.header, self.spec, self.name, first_row)
        values = np.empty((table.num_rows, len(self.spec.numbers)), dtype=np.float32)
        for j, column in enumerate(self.spec.numbers):
            array = table.column(column).combine_chunks()
            doubles = arrow_values(array)
            with np.errstate(over="ignore", invalid="ignore"):
                values[:, j] = doubles
            if array.null_count or not np.isfinite(values[:, j]).all():
                return parse_block(block, self.header, self.spec, self.name, first_row)
        keep = {k: table.column(k).combine_chunks() for k in self.spec.keep}
        return Batch(values, first_row, keep)


# -- the reader --------------------------------------------------------------------------------


def _block_bytes(source: Source, header: Header, batch_size: int) -> int:
    body = source.head[header.size :]
    row_bytes = len(body) / max(body.count(b"\n"), 1)
    return int(min(max(batch_size * row_bytes, 1 << 16), 1 << 28))


def read_csv(source: Source, spec: Spec, batch_size: int) -> Iterator[Batch]:
    """Batches of about ``batch_size`` rows of a CSV input with a header line."""
    header = read_header(source, spec)
    name = source.name
    parse: Callable[[Block, int], Batch]
    # A kept column that is also read as numbers keeps its text: only the csv module has it.
    as_text = set(spec.keep) & set(spec.numbers)
    if not source.small and not as_text and _source.arrow_available():
        parse = _ArrowParser(header, spec, name)
    else:

        def parse(block: Block, first_row: int) -> Batch:
            return parse_block(block, header, spec, name, first_row)

    size = _block_bytes(source, header, batch_size)
    row = 1
    for block in blocks(source, size, skip=header.size, quotes=True, first_line=2):
        batch = parse(block, row)
        if len(batch):
            yield batch
            row += len(batch)
