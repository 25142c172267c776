"""Text inputs in blocks of whole lines, decoded as UTF-8 with the line each starts on."""

from __future__ import annotations

from collections.abc import Iterator

from pomona.runtime.data import messages
from pomona.runtime.data.source import Source
from pomona.runtime.errors import DataError

__all__ = ["Block", "blocks", "decode"]

_BOM = b"\xef\xbb\xbf"


class Block:
    """Whole lines of an input: ``data`` bytes starting on line ``line`` (1-based)."""

    __slots__ = ("data", "line")

    def __init__(self, data: bytes, line: int) -> None:
        self.data = data
        self.line = line


def decode(data: bytes, name: str, line: int) -> str:
    """``data`` as text; DataError naming the line of the first byte that is not UTF-8
    (or of a NUL byte, which no text file holds)."""
    if b"\x00" in data:
        where = messages.at(name, line + data.count(b"\n", 0, data.index(b"\x00")))
        raise DataError(f"{where}: binary data (a NUL byte), not text")
    if data.isascii():
        return data.decode("ascii")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        where = messages.at(name, line + data.count(b"\n", 0, err.start))
        raise messages.not_utf8(where, data[err.start]) from None


def strip_bom(data: bytes) -> bytes:
    return data[len(_BOM) :] if data.startswith(_BOM) else data


#: Bytes read from the source at a time while a block is gathered.
_STEP = 1 << 22


def blocks(
    source: Source, size: int, *, skip: int = 0, quotes: bool = False, first_line: int = 1
) -> Iterator[Block]:
    """The input after its first ``skip`` bytes, cut after a newline every ~``size`` bytes.

    With ``quotes``, a cut never falls inside a double-quoted CSV field (the count of
    ``"`` before it is even), so a quoted field may hold line breaks. A line (or quoted
    record) longer than ``source.max_line`` raises DataError as soon as it is seen, so
    memory stays within about ``size + source.max_line`` whatever the input.
    """
    if skip:
        source.read(skip)
    step = max(1, min(size, _STEP))
    buf = bytearray()
    line = first_line  # the line buf[0] is on
    cut = 0  # end of the last whole line (or record) in buf
    odd = False  # quotes: whether buf holds an odd number of '"'
    while True:
        data = source.read(step)
        if not data:
            break
        start = len(buf)
        buf += data
        if quotes:
            cut, odd = _quoted_cut(buf, start, cut, odd)
        else:
            cut = max(cut, buf.rfind(b"\n", start) + 1)
        if len(buf) - cut > source.max_line:  # an earlier line over the limit is named first
            _check_lines(bytes(buf[:cut]), line, quotes, source)
            where = messages.at(source.name, line + buf.count(b"\n", 0, cut))
            raise messages.line_too_long(where, source.max_line)
        if cut and len(buf) >= size:
            chunk = _take(buf, cut)
            _check_lines(chunk, line, quotes, source)
            yield Block(chunk, line)
            line += chunk.count(b"\n")
            cut = 0
    if buf.strip():
        _check_lines(bytes(buf), line, quotes, source)
        yield Block(bytes(buf), line)


def _check_lines(chunk: bytes, line: int, quotes: bool, source: Source) -> None:
    """DataError when a line (a record, with ``quotes``) of ``chunk`` is over the limit.

    Only a block longer than the limit can hold such a line; it is scanned with numpy.
    """
    limit = source.max_line
    if len(chunk) <= limit:
        return
    import numpy as np

    data = np.frombuffer(chunk, dtype=np.uint8)
    ends = np.flatnonzero(data == ord("\n"))
    if quotes:  # a newline inside a quoted field does not end a record
        before = np.searchsorted(np.flatnonzero(data == ord('"')), ends)
        ends = ends[before % 2 == 0]
    starts = np.concatenate(([0], ends + 1))
    lengths = np.concatenate((ends, [len(chunk)])) - starts  # without the newline
    over = np.flatnonzero(lengths > limit)
    if over.size:
        where = messages.at(source.name, line + chunk.count(b"\n", 0, int(starts[over[0]])))
        raise messages.line_too_long(where, limit)


def _quoted_cut(buf: bytearray, start: int, cut: int, odd: bool) -> tuple[int, bool]:
    """The last newline of ``buf`` outside quotes (at or after ``start``, else ``cut``),
    and whether ``buf`` holds an odd number of quotes; ``odd``: the same for ``buf[:start]``.

    Walks back from the last newline, over the last quote before each candidate, so every
    byte is counted once.
    """
    total = odd ^ bool(buf.count(b'"', start) & 1)
    candidate = buf.rfind(b"\n", start) + 1
    if candidate == 0:
        return cut, total
    inside = total ^ bool(buf.count(b'"', candidate) & 1)  # parity of buf[:candidate]
    while inside:
        quote = buf.rfind(b'"', start, candidate)
        if quote < 0:
            return cut, total
        earlier = buf.rfind(b"\n", start, quote) + 1
        if earlier == 0:
            return cut, total
        inside ^= bool(buf.count(b'"', earlier, candidate) & 1)
        candidate = earlier
    return candidate, total


def _take(buf: bytearray, n: int) -> bytes:
    """The first ``n`` bytes of ``buf``, removed from it."""
    with memoryview(buf) as view:
        chunk = bytes(view[:n])
    del buf[:n]
    return chunk
