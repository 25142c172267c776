"""JSON Lines in and out: one JSON object per line, columns by key."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import IO, Any

import numpy as np

from pomona.runtime.data import messages
from pomona.runtime.data.columns import Batch, Spec
from pomona.runtime.data.numbers import format_float32, require_finite
from pomona.runtime.data.source import Source
from pomona.runtime.data.text import blocks, decode, strip_bom
from pomona.runtime.errors import DataError

__all__ = ["JsonlWriter", "read_jsonl"]

_BLOCK = 1 << 20


def _objects(text: str, name: str, line: int) -> tuple[list[dict[str, Any]], list[int]]:
    objects, lines = [], []
    for offset, raw in enumerate(text.split("\n")):
        if not raw.strip():
            continue
        where = messages.at(name, line + offset)
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not a JSON object ({err.msg}; truncated line?)") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: not a JSON object")
        objects.append(obj)
        lines.append(line + offset)
    return objects, lines


def _number_column(
    objects: list[dict[str, Any]], lines: list[int], column: str, name: str
) -> np.ndarray:
    values = []
    for obj, line in zip(objects, lines, strict=True):
        value = obj.get(column, _MISSING)
        if type(value) not in (int, float):
            where = messages.at(name, line, column)
            if value is _MISSING:
                raise messages.no_column(messages.at(name, line), column, sorted(obj))
            if value is None:
                raise messages.empty_cell(where, "null")
            raise messages.not_a_number(
                where, value if isinstance(value, str) else json.dumps(value)
            )
        values.append(value)
    try:
        doubles = np.array(values, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        doubles = np.array([float(min(max(v, -1e309), 1e309)) for v in values])
    return require_finite(
        doubles, lambda i: (messages.at(name, lines[i], column), json.dumps(values[i]))
    )


_MISSING = object()


def read_jsonl(source: Source, spec: Spec, batch_size: int) -> Iterator[Batch]:
    """Batches of the objects of a JSON Lines input."""
    name = source.name
    if not source.head.strip():
        raise messages.empty_file(name, "JSON objects, one per line")
    decode(source.head[: source.head.find(b"\x00") + 1], name, 1)  # binary: refused at once
    skip = len(source.head) - len(strip_bom(source.head))
    row = 1
    for block in blocks(source, _BLOCK, skip=skip):
        objects, lines = _objects(decode(block.data, name, block.line), name, block.line)
        for start in range(0, len(objects), batch_size):
            part = objects[start : start + batch_size]
            part_lines = lines[start : start + batch_size]
            values = np.empty((len(part), len(spec.numbers)), dtype=np.float32)
            for j, column in enumerate(spec.numbers):
                values[:, j] = _number_column(part, part_lines, column, name)
            keep = {}
            for column in spec.keep:
                missing = next((i for i, obj in enumerate(part) if column not in obj), None)
                if missing is not None:
                    where = messages.at(name, part_lines[missing])
                    raise messages.no_column(where, column, sorted(part[missing]))
                keep[column] = [obj[column] for obj in part]
            yield Batch(values, row, keep)
            row += len(part)


class JsonlWriter:
    """One object per row: the kept columns, then the predictions (non-finite as null)."""

    def __init__(self, sink: IO[bytes], keep: Sequence[str], targets: Sequence[str]) -> None:
        self.sink = sink
        self.keep = list(keep)
        self.keys = [json.dumps(n) + ": " for n in [*keep, *targets]]

    def write(self, keep: dict[str, Any], predictions: np.ndarray) -> None:
        kept = []
        for k in self.keep:
            values = keep[k].to_pylist() if hasattr(keep[k], "to_pylist") else keep[k]
            kept.append([json.dumps(v) for v in values])
        finite = np.isfinite(predictions)
        predicted = []
        for j in range(predictions.shape[1]):
            strings = format_float32(predictions[:, j])
            if not finite[:, j].all():
                strings = [s if ok else "null" for s, ok in zip(strings, finite[:, j], strict=True)]
            predicted.append(strings)
        keys = self.keys
        lines = [
            "{" + ", ".join(k + v for k, v in zip(keys, row, strict=True)) + "}\n"
            for row in zip(*kept, *predicted, strict=True)
        ]
        self.sink.write("".join(lines).encode())

    def close(self) -> None:
        return None
