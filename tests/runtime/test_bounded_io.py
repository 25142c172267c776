"""Bounded batch I/O: blocks of whole lines, the longest-line limit, a linear header check,
temporary files removed on signals."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pomona.runtime import files
from pomona.runtime.data import MAX_LINE_BYTES, Spec
from pomona.runtime.data.csv_read import read_header
from pomona.runtime.data.source import Source
from pomona.runtime.data.text import blocks
from pomona.runtime.errors import DataError


def _source(data: bytes, max_line: int = MAX_LINE_BYTES) -> Source:
    return Source("in", None, io.BytesIO(data), len(data), max_line)


def _records(data: bytes, quotes: bool) -> list[tuple[int, int]]:
    """Reference: (first line, length without its newline) of each record, byte by byte."""
    records, start, line, inside = [], 0, 1, False
    for i, byte in enumerate(data):
        if quotes and byte == ord('"'):
            inside = not inside
        elif byte == ord("\n") and not inside:
            records.append((line, i - start))
            line += data.count(b"\n", start, i + 1)
            start = i + 1
    if start < len(data):
        records.append((line, len(data) - start))
    return records


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.sampled_from([b"a", b",", b'"', b"\n", b"\n\n"]), max_size=80).map(b"".join),
    size=st.integers(1, 40),
    limit=st.integers(1, 30),
    quotes=st.booleans(),
)
def test_blocks_cut_at_record_ends_and_enforce_the_limit(
    data: bytes, size: int, limit: int, quotes: bool
) -> None:
    """The fast cut (counts and rfind over whole blocks) against a byte-by-byte reference."""
    records = _records(data, quotes)
    too_long = [line for line, length in records if length > limit]
    source = _source(data, limit)
    if too_long:
        with pytest.raises(DataError, match=rf"^in, line {too_long[0]}: a line longer than"):
            list(blocks(source, size, quotes=quotes))
        return
    got = list(blocks(source, size, quotes=quotes))
    joined = b"".join(b.data for b in got)
    assert data.startswith(joined) and not data[len(joined) :].strip()
    ends = {sum(length + 1 for _, length in records[: i + 1]) for i in range(len(records))}
    position = 0
    for block in got:
        assert block.line == 1 + data.count(b"\n", 0, position)
        position += len(block.data)
        assert position in ends or position == len(data)  # cut after a whole record


def test_the_default_limit_is_16_mib() -> None:
    assert MAX_LINE_BYTES == 16 << 20


def test_a_header_check_is_linear_in_the_number_of_columns() -> None:
    """Each wanted column is looked up, not searched for: comparisons grow with the columns
    wanted, not with columns x wanted (100k x 100k would take hours)."""
    names = [f"c{i}" for i in range(100_000)]
    comparisons, bound = 0, 10 * len(names)

    class Name(str):
        __hash__ = str.__hash__

        def __eq__(self, other: object) -> bool:
            nonlocal comparisons
            comparisons += 1
            if comparisons > bound:  # stop a quadratic check at once
                raise AssertionError(f"over {bound} comparisons for {len(names)} columns")
            return str.__eq__(self, other)

    data = (",".join(names) + "\n" + ",".join("1" for _ in names) + "\n").encode()
    wanted = [Name(n) for n in names]
    header = read_header(_source(data), Spec.of(wanted))
    assert [header.index(name) for name in wanted] == list(range(len(names)))
    assert comparisons <= bound


def test_temporary_files_are_registered_while_written(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(FileNotFoundError), files.atomic_write(target, "w") as handle:
        handle.write(json.dumps([1]))
        (live,) = files._LIVE
        assert Path(live).parent == tmp_path and Path(live).exists()
        files.remove_temporary_files()  # what the signal handler does before the process ends
        assert not Path(live).exists()
    assert not files._LIVE and not target.exists()
    with files.atomic_write(target, "w") as handle:
        handle.write("[]")
    assert not files._LIVE and target.read_text() == "[]"
