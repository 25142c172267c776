"""Stream batch files through a model: CSV, JSON Lines and ``.npy`` in, the same out.

Readers yield :class:`Batch` objects of at most ``batch_size`` rows, so memory stays
flat however large the input. Inputs up to :data:`SMALL_INPUT` bytes are read with
the standard library and numpy (no pyarrow import, fast start); larger CSV inputs use
pyarrow's streaming CSV reader and writer when pyarrow is installed (``pomona[fast]``).

Every problem with the data raises :class:`~pomona.runtime.errors.DataError` naming the
file, the row (1-based, header and blank lines not counted) and the column.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from pomona.runtime.errors import DataError, InputError
from pomona.runtime.files import atomic_write

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "FORMATS",
    "SMALL_INPUT",
    "Batch",
    "arrow_available",
    "format_for",
    "predict_file",
]

#: Rows per model call (and, roughly, per block read) unless ``--batch-size`` says otherwise.
DEFAULT_BATCH_SIZE = 65536
#: Inputs no larger than this are read without pyarrow, which costs ~0.2 s to import.
SMALL_INPUT = 1 << 20
FORMATS = ("csv", "jsonl", "npy")
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".npy": "npy"}
_NPY_MAGIC = b"\x93NUMPY"
_NUMERIC_KINDS = frozenset("iuf")


def arrow_available() -> bool:
    """Whether pyarrow's CSV module can be imported (the ``fast`` extra)."""
    try:
        import pyarrow.csv  # noqa: F401
    except ImportError:
        return False
    return True


def format_for(path: str, default: str | None = "csv") -> str | None:
    """The format named by a file's extension, or ``default``."""
    return _EXTENSIONS.get(Path(path).suffix.lower(), default) if path != "-" else default


class Batch:
    """Up to ``batch_size`` rows: float32 features ``[n, F]`` and pass-through columns.

    ``first_row`` is the 1-based number of the first row in the input; ``keep`` maps
    pass-through column names to lists or pyarrow arrays.
    """

    __slots__ = ("features", "first_row", "keep")

    def __init__(
        self, features: np.ndarray, first_row: int, keep: dict[str, Any] | None = None
    ) -> None:
        self.features = features
        self.first_row = first_row
        self.keep = keep or {}

    def __len__(self) -> int:
        return int(self.features.shape[0])


# -- input -----------------------------------------------------------------------------------


class _Source(io.RawIOBase):
    """A binary input with its first bytes already read (to sniff it), counting bytes read."""

    def __init__(self, name: str, raw: IO[bytes], size: int | None) -> None:
        super().__init__()
        self.name_for_messages = name
        self.size = size
        self._raw = raw
        self.head = raw.read(SMALL_INPUT + 1)
        self.small = len(self.head) <= SMALL_INPUT
        self._pending = memoryview(self.head)
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._pending:
            n = min(len(view), len(self._pending))
            view[:n] = self._pending[:n]
            self._pending = self._pending[n:]
        else:
            n = self._raw.readinto(view)  # type: ignore[attr-defined]
        self.consumed += n
        return n

    def close(self) -> None:
        if self._raw is not sys.stdin.buffer:
            self._raw.close()
        super().close()


def _open_source(path: str) -> _Source:
    if path == "-":
        return _Source("<stdin>", sys.stdin.buffer, None)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - owned by the _Source
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a file") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror}") from None
    return _Source(path, handle, os.fstat(handle.fileno()).st_size)


def _sniff(source: _Source, path: str) -> str:
    by_name = format_for(path, None)
    if by_name is not None:
        return by_name
    if source.head.startswith(_NPY_MAGIC):
        return "npy"
    return "jsonl" if source.head.lstrip().startswith(b"{") else "csv"


def _header(source: _Source, keep: Sequence[str], features: Sequence[str]) -> list[str]:
    name = source.name_for_messages
    text = source.head.decode("utf-8-sig", errors="replace")
    if not text.strip():
        raise DataError(f"{name}: empty file (expected a CSV header line)")
    first = text.split("\n", 1)[0]
    if len(source.head) > SMALL_INPUT and "\n" not in text:
        raise DataError(f"{name}: no end of the header line in the first {SMALL_INPUT} bytes")
    names = [n.strip() for n in next(csv.reader([first.rstrip("\r")]))]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"{name}: header repeats column(s) {', '.join(duplicates)}")
    _require_columns(name, names, features, keep)
    return names


def _require_columns(
    name: str, present: Sequence[str], features: Sequence[str], keep: Sequence[str]
) -> None:
    missing = [c for c in features if c not in present]
    if missing:
        raise DataError(
            f"{name}: missing column(s) {', '.join(missing)}; the model needs "
            f"{', '.join(features)} (found {', '.join(present) or 'none'})"
        )
    missing_keep = [c for c in keep if c not in present]
    if missing_keep:
        raise DataError(f"{name}: --keep column(s) {', '.join(missing_keep)} not in the input")


def _bad_cell(name: str, row: int, column: str, value: object) -> DataError:
    if value is None or (isinstance(value, str) and not value.strip()):
        return DataError(f"{name}: row {row}, column {column!r}: missing value")
    return DataError(f"{name}: row {row}, column {column!r}: not a number: {value!r}")


def _to_float32(values: Sequence[Any], name: str, first_row: int, column: str) -> np.ndarray:
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.array(values, dtype=np.float64).astype(np.float32)
    except (ValueError, TypeError):
        pass
    for i, value in enumerate(values):
        try:
            float(value)
        except (ValueError, TypeError):
            raise _bad_cell(name, first_row + i, column, value) from None
    raise DataError(f"{name}: column {column!r} near row {first_row}: not numbers")


def _csv_stdlib(
    text: IO[str],
    names: list[str],
    features: Sequence[str],
    keep: Sequence[str],
    batch_size: int,
    source: str,
    first_row: int = 1,
) -> Iterator[Batch]:
    """Rows of a CSV text stream positioned after its header, with the csv module."""
    reader = csv.reader(text)
    width = len(names)
    index = {n: i for i, n in enumerate(names)}
    row = first_row
    while True:
        rows = [r for r in _take(reader, batch_size, source) if r]
        if not rows:
            return
        if any(len(r) != width for r in rows):
            i = next(i for i, r in enumerate(rows) if len(r) != width)
            raise DataError(
                f"{source}: row {row + i}: expected {width} columns as in the header, "
                f"got {len(rows[i])} (ragged or truncated row)"
            )
        columns = list(zip(*rows, strict=True))
        feats = np.empty((len(rows), len(features)), dtype=np.float32)
        for j, name in enumerate(features):
            feats[:, j] = _to_float32(columns[index[name]], source, row, name)
        yield Batch(feats, row, {k: list(columns[index[k]]) for k in keep})
        row += len(rows)


def _take(reader: Iterator[list[str]], n: int, source: str) -> list[list[str]]:
    rows: list[list[str]] = []
    try:
        for r in reader:
            rows.append(r)
            if len(rows) >= n:
                break
    except csv.Error as err:
        raise DataError(
            f"{source}: unreadable CSV after {len(rows)} rows of a block: {err}"
        ) from None
    except UnicodeDecodeError as err:
        raise DataError(f"{source}: not UTF-8 text: {err.reason}") from None
    return rows


def _text(source: _Source) -> io.TextIOWrapper:
    return io.TextIOWrapper(
        io.BufferedReader(source, buffer_size=1 << 16), encoding="utf-8-sig", newline=""
    )


def _read_csv(
    source: _Source,
    features: Sequence[str],
    keep: Sequence[str],
    batch_size: int,
    use_arrow: bool,
) -> Iterator[Batch]:
    names = _header(source, keep, features)
    if use_arrow:
        return _csv_arrow(source, names, features, keep, batch_size)
    text = _text(source)
    next(csv.reader(text))  # the header, already parsed
    return _csv_stdlib(text, names, features, keep, batch_size, source.name_for_messages)


def _csv_arrow(
    source: _Source,
    names: list[str],
    features: Sequence[str],
    keep: Sequence[str],
    batch_size: int,
) -> Iterator[Batch]:
    """Cut the input into blocks of whole lines (about ``batch_size`` rows) and parse each
    with ``pyarrow.csv.read_csv``: one block in memory at a time, unlike pyarrow's own
    streaming reader, which reads ahead without bound when the consumer is slower."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    _use_jemalloc(pa)
    name = source.name_for_messages
    body = source.head.split(b"\n", 1)[-1]
    row_bytes = len(body) / max(body.count(b"\n"), 1)
    block = int(min(max(batch_size * row_bytes, 1 << 16), 1 << 28))
    types = {c: pa.float32() for c in features if c not in keep}
    types.update({c: pa.string() for c in keep})
    convert = pacsv.ConvertOptions(
        include_columns=list(dict.fromkeys([*features, *keep])),
        column_types=types,
        null_values=[""],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    stream = io.BufferedReader(source, buffer_size=1 << 16)
    stream.readline()  # the header, already parsed
    row = 1
    pending = b""
    while True:
        data = stream.read(block)
        if data:
            data = pending + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # a line longer than the block: read on
                pending = data
                continue
            chunk, pending = data[:cut], data[cut:]
        elif pending.strip():
            chunk, pending = pending, b""
        else:
            return
        options = pacsv.ReadOptions(column_names=names, block_size=len(chunk) + 1)
        try:
            table = pacsv.read_csv(pa.BufferReader(chunk), read_options=options,
                                   convert_options=convert)  # fmt: skip
        except (pa.ArrowInvalid, pa.ArrowKeyError) as err:
            raise _locate(chunk, name, names, features, keep, row, err) from None
        n = table.num_rows
        feats = np.empty((n, len(features)), dtype=np.float32)
        for j, column in enumerate(features):
            values = table.column(column).combine_chunks()
            if values.type != pa.float32():
                try:
                    values = values.cast(pa.float32())
                except pa.ArrowInvalid as err:
                    raise _locate(chunk, name, names, features, keep, row, err) from None
            if values.null_count:
                raise _bad_cell(name, row + values.to_pylist().index(None), column, None)
            feats[:, j] = _arrow_float32(values)
        yield Batch(feats, row, {k: table.column(k).combine_chunks() for k in keep})
        row += n


def _use_jemalloc(pa: Any) -> None:
    """Arrow's jemalloc pool keeps the peak memory of a streamed file ~10 MiB lower."""
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    with contextlib.suppress(NotImplementedError, pa.ArrowNotImplementedError):  # no jemalloc
        pa.set_memory_pool(pa.jemalloc_memory_pool())


def _arrow_float32(values: Any) -> np.ndarray:
    """A float32 pyarrow array without nulls as numpy, zero-copy.

    ``Array.to_numpy`` would import pandas when it is installed, which costs ~0.5 s.
    """
    data = values.buffers()[1]
    return np.frombuffer(data, dtype=np.float32, count=len(values), offset=values.offset * 4)


def _locate(
    chunk: bytes,
    name: str,
    names: list[str],
    features: Sequence[str],
    keep: Sequence[str],
    row: int,
    err: Exception,
) -> DataError:
    """Re-read a block pyarrow refused with the csv module, to name the bad row and column."""
    text = io.StringIO(chunk.decode("utf-8", errors="replace"), newline="")
    try:
        for _ in _csv_stdlib(text, names, features, keep, 1 << 14, name, row):
            pass
    except DataError as located:
        return located
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    return DataError(f"{name}: unreadable CSV at or after row {row}: {message}")


def _read_jsonl(
    source: _Source, features: Sequence[str], keep: Sequence[str], batch_size: int
) -> Iterator[Batch]:
    name = source.name_for_messages
    if not source.head.strip():
        raise DataError(f"{name}: empty file (expected JSON objects, one per line)")
    text = _text(source)
    row = 1
    while True:
        objects: list[dict[str, Any]] = []
        try:
            for line in text:
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(
                        f"{name}: row {row + len(objects)}: not a JSON object ({err.msg}; "
                        "truncated line?)"
                    ) from None
                if not isinstance(obj, dict):
                    raise DataError(f"{name}: row {row + len(objects)}: not a JSON object")
                objects.append(obj)
                if len(objects) >= batch_size:
                    break
        except UnicodeDecodeError as err:
            raise DataError(f"{name}: not UTF-8 text: {err.reason}") from None
        if not objects:
            return
        feats = np.empty((len(objects), len(features)), dtype=np.float32)
        for j, column in enumerate(features):
            try:
                values = [obj[column] for obj in objects]
            except KeyError:
                i = next(i for i, obj in enumerate(objects) if column not in obj)
                raise DataError(f"{name}: row {row + i}: missing column {column!r}") from None
            if not all(type(v) in (int, float) for v in values):
                i = next(i for i, v in enumerate(values) if type(v) not in (int, float))
                raise _bad_cell(name, row + i, column, values[i])
            feats[:, j] = _to_float32(values, name, row, column)
        kept = {}
        for column in keep:
            try:
                kept[column] = [obj[column] for obj in objects]
            except KeyError:
                i = next(i for i, obj in enumerate(objects) if column not in obj)
                raise DataError(f"{name}: row {row + i}: missing column {column!r}") from None
        yield Batch(feats, row, kept)
        row += len(objects)


def _read_npy(source: _Source, n_features: int, batch_size: int) -> Iterator[Batch]:
    name = source.name_for_messages
    stream = io.BufferedReader(source, buffer_size=1 << 16)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    except ValueError as err:
        raise DataError(f"{name}: not a .npy file ({err})") from None
    if dtype.kind not in _NUMERIC_KINDS or dtype.names is not None:
        raise DataError(f"{name}: expected a numeric array, got dtype {dtype}")
    if len(shape) == 1:
        shape = (1, *shape)
    if len(shape) != 2 or shape[1] != n_features:
        raise DataError(f"{name}: expected an array of shape [rows, {n_features}], got {shape}")
    rows = shape[0]
    if fortran:
        data = stream.read()
        if len(data) < rows * n_features * dtype.itemsize:
            raise DataError(f"{name}: truncated: the header promises {rows} rows")
        array = np.frombuffer(data, dtype, count=rows * n_features).reshape(shape, order="F")
        for start in range(0, rows, batch_size):
            yield Batch(_cast(array[start : start + batch_size]), start + 1)
        return
    row_bytes = n_features * dtype.itemsize
    for start in range(0, rows, batch_size):
        n = min(batch_size, rows - start)
        data = stream.read(n * row_bytes)
        if len(data) < n * row_bytes:
            found = start + len(data) // row_bytes
            raise DataError(f"{name}: truncated: the header promises {rows} rows, found {found}")
        array = np.frombuffer(data, dtype).reshape(n, n_features)
        yield Batch(_cast(array), start + 1)


def _cast(array: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return np.ascontiguousarray(array, dtype=np.float32)


# -- output ----------------------------------------------------------------------------------


def _float_strings(values: np.ndarray) -> list[str]:
    """Shortest strings that read back as the same float32 values."""
    return values.astype(str).tolist()


class _Writer:
    def __init__(self, sink: IO[bytes], keep: Sequence[str], targets: Sequence[str]) -> None:
        self.sink = sink
        self.keep = list(keep)
        self.targets = list(targets)

    def write(self, keep: dict[str, Any], predictions: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Finish the output (headers that need the row count)."""


class _CsvStdlibWriter(_Writer):
    def __init__(self, sink: IO[bytes], keep: Sequence[str], targets: Sequence[str]) -> None:
        super().__init__(sink, keep, targets)
        self.text = io.TextIOWrapper(sink, encoding="utf-8", newline="", write_through=False)
        self.writer = csv.writer(self.text, lineterminator="\n")
        self.writer.writerow([*self.keep, *self.targets])

    def write(self, keep: dict[str, Any], predictions: np.ndarray) -> None:
        kept = [_as_strings(keep[k]) for k in self.keep]
        predicted = [_float_strings(predictions[:, j]) for j in range(predictions.shape[1])]
        self.writer.writerows(zip(*kept, *predicted, strict=True))

    def close(self) -> None:
        self.text.flush()
        self.text.detach()


def _as_strings(values: Any) -> list[str]:
    if hasattr(values, "to_pylist"):
        values = values.to_pylist()
    return [v if isinstance(v, str) else json.dumps(v) for v in values]


class _CsvArrowWriter(_Writer):
    def __init__(self, sink: IO[bytes], keep: Sequence[str], targets: Sequence[str]) -> None:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        super().__init__(sink, keep, targets)
        self.pa, self.pacsv = pa, pacsv
        self.names = [*self.keep, *self.targets]
        self.plain = pacsv.WriteOptions(include_header=False, quoting_style="none")
        self.quoted = pacsv.WriteOptions(include_header=False, quoting_style="needed")
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(self.names)
        sink.write(buffer.getvalue().encode())

    @staticmethod
    def _pc() -> Any:
        import pyarrow.compute as pc  # only with --keep: it costs ~50 ms to import

        return pc

    def write(self, keep: dict[str, Any], predictions: np.ndarray) -> None:
        pa = self.pa
        kept = [
            pa.array(_as_strings(keep[k])) if isinstance(keep[k], list) else keep[k]
            for k in self.keep
        ]
        needs_quotes = bool(kept) and any(
            self._pc().any(self._pc().match_substring_regex(a, '[",\r\n]')).as_py() for a in kept
        )
        # Arrays from buffers: pa.array(ndarray) would import pandas when it is installed.
        by_column = np.ascontiguousarray(predictions.T, dtype=np.float32)
        n = by_column.shape[1]
        columns = [
            *kept,
            *(pa.Array.from_buffers(pa.float32(), n, [None, pa.py_buffer(c)]) for c in by_column),
        ]
        batch = pa.RecordBatch.from_arrays(columns, names=self.names)
        self.pacsv.write_csv(batch, self.sink, self.quoted if needs_quotes else self.plain)


class _JsonlWriter(_Writer):
    def __init__(self, sink: IO[bytes], keep: Sequence[str], targets: Sequence[str]) -> None:
        super().__init__(sink, keep, targets)
        self.keys = [json.dumps(n) + ": " for n in [*self.keep, *self.targets]]

    def write(self, keep: dict[str, Any], predictions: np.ndarray) -> None:
        kept = []
        for k in self.keep:
            values = keep[k].to_pylist() if hasattr(keep[k], "to_pylist") else keep[k]
            kept.append([json.dumps(v) for v in values])
        finite = np.isfinite(predictions)
        predicted = []
        for j in range(predictions.shape[1]):
            strings = _float_strings(predictions[:, j])
            if not finite[:, j].all():
                strings = [s if ok else "null" for s, ok in zip(strings, finite[:, j], strict=True)]
            predicted.append(strings)
        keys = self.keys
        lines = [
            "{" + ", ".join(k + v for k, v in zip(keys, row, strict=True)) + "}\n"
            for row in zip(*kept, *predicted, strict=True)
        ]
        self.sink.write("".join(lines).encode())


class _NpyWriter(_Writer):
    """Writes ``[rows, T]`` float32; the header is rewritten with the row count at the end."""

    _HEADER = 128

    def __init__(self, sink: IO[bytes], keep: Sequence[str], targets: Sequence[str]) -> None:
        super().__init__(sink, keep, targets)
        import tempfile

        self.rows = 0
        self.out = sink if sink.seekable() else tempfile.TemporaryFile()  # noqa: SIM115
        self.out.write(self._header(0))

    def _header(self, rows: int) -> bytes:
        fields = {"descr": "<f4", "fortran_order": False, "shape": (rows, len(self.targets))}
        text = repr(fields).encode("latin1")
        pad = self._HEADER - len(_NPY_MAGIC) - 4 - len(text) - 1
        return (
            _NPY_MAGIC
            + b"\x01\x00"
            + (len(text) + pad + 1).to_bytes(2, "little")
            + (text + b" " * pad + b"\n")
        )

    def write(self, keep: dict[str, Any], predictions: np.ndarray) -> None:
        self.out.write(np.ascontiguousarray(predictions, dtype="<f4").tobytes())
        self.rows += predictions.shape[0]

    def close(self) -> None:
        self.out.seek(0)
        self.out.write(self._header(self.rows))
        if self.out is not self.sink:
            import shutil

            self.out.seek(0)
            shutil.copyfileobj(self.out, self.sink, 1 << 20)
            self.out.close()


# -- the pipeline ----------------------------------------------------------------------------


@contextlib.contextmanager
def _open_output(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    if target.is_dir():
        raise DataError(f"{path}: is a directory; give a file name for the output")
    try:
        with atomic_write(target, "wb", buffering=1 << 20) as handle:
            yield handle
    except OSError as err:
        if isinstance(err, BrokenPipeError):
            raise
        raise DataError(f"{path}: cannot write: {err.strerror or err}") from None


def predict_file(
    predictor: Any,
    input_path: str,
    output_path: str = "-",
    *,
    output_format: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    keep: Sequence[str] = (),
    progress: Callable[[int, int | None], None] | None = None,
) -> int:
    """Predict every row of ``input_path`` into ``output_path``; return the number of rows.

    ``output_format`` defaults to the output's extension, else CSV. A failure anywhere
    raises :class:`DataError` (or :class:`~pomona.runtime.errors.InputError`) and leaves
    no output file. ``progress(bytes_read, total_bytes)`` is called after each batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    fmt = output_format or format_for(output_path) or "csv"
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose from {', '.join(FORMATS)}")
    keep = list(dict.fromkeys(keep))
    clash = [k for k in keep if k in predictor.target_names]
    if clash:
        raise DataError(f"--keep column(s) {', '.join(clash)} clash with the model's outputs")
    if keep and fmt == "npy":
        raise DataError("--keep needs CSV or JSON Lines output; .npy holds predictions only")
    features = predictor.feature_names
    with contextlib.closing(_open_source(input_path)) as source:
        name = source.name_for_messages
        in_fmt = _sniff(source, input_path)
        use_arrow = not source.small and arrow_available()
        batches: Iterator[Batch]
        if in_fmt == "csv":
            batches = _read_csv(source, features, keep, batch_size, use_arrow)
        elif in_fmt == "jsonl":
            batches = _read_jsonl(source, features, keep, batch_size)
        else:
            if keep:
                raise DataError(f"{name}: --keep needs named columns; .npy input has none")
            if not source.head:
                raise DataError(f"{name}: empty file (expected a .npy array)")
            batches = _read_npy(source, predictor.n_features, batch_size)
        first = next(batches, None)
        if first is None:
            raise DataError(f"{name}: no rows to predict")
        writer_cls: type[_Writer]
        if fmt == "csv":
            writer_cls = _CsvArrowWriter if use_arrow and in_fmt == "csv" else _CsvStdlibWriter
        else:
            writer_cls = _JsonlWriter if fmt == "jsonl" else _NpyWriter
        total = 0
        with _open_output(output_path) as sink:
            writer = writer_cls(sink, keep, predictor.target_names)
            # pyarrow parses and formats without the GIL: on a large input, writing one
            # block while the next is read and predicted keeps two cores busy.
            with _Pipe(writer.write, background=not source.small) as write:
                for batch in _chain(first, batches):
                    for start in range(0, len(batch), batch_size):
                        stop = start + batch_size
                        chunk = batch.features[start:stop]
                        predictions = _predict(predictor, chunk, name, batch.first_row + start)
                        write({k: v[start:stop] for k, v in batch.keep.items()}, predictions)
                    total += len(batch)
                    if progress is not None:
                        progress(source.consumed, source.size)
            writer.close()
    return total


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
        bad = np.argwhere(~np.isfinite(features))
        if bad.size == 0:
            raise DataError(
                f"{name}: rows {first_row}-{first_row + len(features) - 1}: {err}"
            ) from None
        row, col = (int(i) for i in bad[0])
        raise DataError(
            f"{name}: row {first_row + row}, column {predictor.feature_names[col]!r}: "
            f"non-finite value {features[row, col]} (the model needs finite numbers)"
        ) from None
