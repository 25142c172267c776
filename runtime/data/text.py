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


def blocks(
    source: Source, size: int, *, skip: int = 0, quotes: bool = False, first_line: int = 1
) -> Iterator[Block]:
    """The input after its first ``skip`` bytes, cut after a newline every ~``size`` bytes.

    With ``quotes``, a cut never falls inside a double-quoted CSV field (the count of
    ``"`` before it is even), so a quoted field may hold line breaks.
    """
    if skip:
        source.read(skip)
    line = first_line
    pending = b""
    while True:
        data = source.read(size)
        if not data:
            break
        data = pending + data
        cut = data.rfind(b"\n") + 1
        if cut == 0 or (quotes and data.count(b'"', 0, cut) % 2):
            pending = data  # a line longer than the block, or inside a quoted field
            continue
        chunk, pending = data[:cut], data[cut:]
        yield Block(chunk, line)
        line += chunk.count(b"\n")
    if pending.strip():
        yield Block(pending, line)
