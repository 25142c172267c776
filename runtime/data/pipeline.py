"""Stream an input through a model into an output file, batch by batch.

Memory stays flat however large the input: one batch is read, predicted and handed to
the writer at a time (the writer runs in a background thread on large inputs, so that
pyarrow formats one block while the next is parsed and predicted).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from pomona.runtime.data import messages
from pomona.runtime.data.columns import Batch, Spec
from pomona.runtime.data.formats import FORMATS, format_for
from pomona.runtime.data.reading import DEFAULT_BATCH_SIZE, open_batches
from pomona.runtime.data.source import MAX_LINE_BYTES
from pomona.runtime.errors import DataError, InputError, stdout_error
from pomona.runtime.files import atomic_write

__all__ = ["predict_file"]


@contextlib.contextmanager
def _open_output(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        try:
            yield sys.stdout.buffer
            sys.stdout.buffer.flush()
        except OSError as err:
            raise stdout_error(err) from None
        return
    target = Path(path)
    if target.is_dir():
        raise DataError(f"{path}: is a folder; give a file name for the output")
    try:
        with atomic_write(target, "wb", buffering=1 << 20) as handle:
            yield handle
    except OSError as err:
        if isinstance(err, BrokenPipeError):
            raise
        raise DataError(f"{path}: cannot write: {err.strerror or err}") from None


def _refuse_same_file(input_path: str, output_path: str) -> None:
    """DataError when the output is the input file (by any name: links, symlinks)."""
    if "-" in (input_path, output_path):
        return
    try:
        same = os.path.samefile(input_path, output_path)
    except OSError:  # one of them does not exist (yet)
        return
    if same:
        raise DataError(
            f"{output_path}: is the input file {input_path}; write the predictions to another file"
        )


def _check_options(fmt: str, keep: Sequence[str], targets: Sequence[str]) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose from {', '.join(FORMATS)}")
    clash = [k for k in keep if k in targets]
    if clash:
        raise DataError(f"--keep column(s) {', '.join(clash)} clash with the model's outputs")
    if keep and not FORMATS[fmt].named_columns:
        raise DataError(
            f"--keep needs CSV, JSON Lines or Parquet output; .{fmt} holds predictions only"
        )


def predict_file(
    predictor: Any,
    input_path: str,
    output_path: str = "-",
    *,
    output_format: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    keep: Sequence[str] = (),
    delimiter: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> int:
    """Predict every row of ``input_path`` into ``output_path``; return the number of rows.

    ``output_format`` defaults to the output's extension, else CSV. A failure anywhere
    raises :class:`DataError` (or :class:`~pomona.runtime.errors.InputError`) and leaves
    no output file; so does an output that is the input file. A text line longer than
    ``max_line_bytes`` is refused, so memory stays bounded whatever the input.
    ``progress(bytes_read, total_bytes)`` is called after each batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    fmt = output_format or format_for(output_path) or "csv"
    keep = list(dict.fromkeys(keep))
    _check_options(fmt, keep, predictor.target_names)
    _refuse_same_file(input_path, output_path)
    spec = Spec.of(predictor.feature_names, keep, positional=True, delimiter=delimiter)
    opened = open_batches(input_path, spec, batch_size, max_line_bytes=max_line_bytes)
    with opened as (source, _, batches):
        first = next(batches, None)
        if first is None:
            raise messages.no_rows(source.name)
        total = 0
        with _open_output(output_path) as sink:
            writer = FORMATS[fmt].writer(sink, keep, predictor.target_names)
            with _Pipe(writer.write, background=not source.small) as write:
                for batch in _chain(first, batches):
                    _predict_batch(predictor, batch, batch_size, source.name, write)
                    total += len(batch)
                    if progress is not None:
                        progress(source.consumed, source.size)
            writer.close()
    return total


def _predict_batch(
    predictor: Any, batch: Batch, size: int, name: str, write: Callable[..., None]
) -> None:
    for start in range(0, len(batch), size):
        stop = start + size
        predictions = _predict(predictor, batch.values[start:stop], name, batch.first_row + start)
        write({k: v[start:stop] for k, v in batch.keep.items()}, predictions)


class _Pipe:
    """Call ``write`` in order, in a background thread when asked; errors reach the caller.

    At most two calls wait in the queue, so memory stays bounded.
    """

    _DONE = object()

    def __init__(self, write: Callable[..., None], *, background: bool) -> None:
        self._write = write
        self._background = background
        self._error: BaseException | None = None

    def __enter__(self) -> Callable[..., None]:
        if not self._background:
            return self._write
        import queue
        import threading

        self._queue: queue.Queue[Any] = queue.Queue(maxsize=2)
        self._thread = threading.Thread(target=self._drain, name="pomona-writer", daemon=True)
        self._thread.start()
        return self._put

    def _put(self, *args: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(args)

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            if self._error is None:
                try:
                    self._write(*item)
                except BaseException as err:  # handed to the caller's thread
                    self._error = err

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        if not self._background:
            return
        self._queue.put(self._DONE)
        self._thread.join()
        if self._error is not None and error is None:
            raise self._error


def _chain(first: Batch, rest: Iterator[Batch]) -> Iterator[Batch]:
    yield first
    yield from rest


def _predict(predictor: Any, features: np.ndarray, name: str, first_row: int) -> np.ndarray:
    try:
        return predictor.predict(features)
    except InputError as err:
        last = first_row + len(features) - 1
        raise DataError(f"{name}, rows {first_row}-{last}: {err}") from None
