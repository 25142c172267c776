"""The data layer's formats: round trips, compression, delimiters, what a number is."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from pathlib import Path

import numpy as np
import pytest

from pomona.runtime.data import FORMATS, Spec, open_batches, read_numbers
from pomona.runtime.data import source as data_source
from pomona.runtime.errors import DataError
from tests.conftest import needs, run_pomona
from tests.onnx_models import make_linear_onnx

NAMES = ["temp", "rainfall", "humidity"]
VALUES = np.array([[73, 67, 43], [91.5, -88, 6.25e-7], [1e20, 0, 3.4028235e38]], np.float32)
CSV = "id,temp,rainfall,humidity\na,73,67,43\nb,91.5,-88,6.25e-7\nc,1e20,0,3.4028235e38\n"


def _write(fmt: str, path: Path, keep: dict[str, list[object]], values: np.ndarray) -> Path:
    with path.open("wb") as sink:
        writer = FORMATS[fmt].writer(sink, list(keep), NAMES)
        writer.write(keep, values)
        writer.close()
    return path


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_round_trips(fmt: str, tmp_path: Path) -> None:
    if fmt == "parquet":
        needs("pyarrow")
    keep = {} if fmt == "npy" else {"id": ["a", "b, with a comma", 'c "quoted"']}
    path = _write(fmt, tmp_path / f"rows.{fmt}", keep, VALUES)
    spec = Spec.of(NAMES, list(keep), positional=True)
    with open_batches(path, spec) as (_, found, batches):
        assert found.name == fmt
        (batch,) = list(batches)
    np.testing.assert_array_equal(batch.values, VALUES)
    assert batch.first_row == 1
    for name, values in keep.items():
        kept = batch.keep[name]
        assert (kept.to_pylist() if hasattr(kept, "to_pylist") else kept) == values


def test_csv_and_jsonl_write_the_same_number_text(tmp_path: Path) -> None:
    csv_text = _write("csv", tmp_path / "o.csv", {}, VALUES).read_text().splitlines()
    records = _write("jsonl", tmp_path / "o.jsonl", {}, VALUES).read_text().splitlines()
    assert csv_text[0] == ",".join(NAMES)
    assert csv_text[1:] == ["73,67,43", "91.5,-88,6.25e-7", "1e+20,0,3.4028235e+38"]
    assert records[1] == '{"temp": 91.5, "rainfall": -88, "humidity": 6.25e-7}'


def test_read_numbers_of_csv_jsonl_and_parquet_agree(tmp_path: Path) -> None:
    needs("pyarrow")
    (tmp_path / "rows.csv").write_text(CSV)
    _write("jsonl", tmp_path / "rows.jsonl", {}, VALUES)
    _write("parquet", tmp_path / "rows.parquet", {}, VALUES)
    for name in ("rows.csv", "rows.jsonl", "rows.parquet"):
        np.testing.assert_array_equal(read_numbers(tmp_path / name, NAMES), VALUES)


@pytest.mark.parametrize(
    ("suffix", "compress"),
    [(".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress)],
)
def test_compressed_input_by_extension_and_by_content(
    tmp_path: Path, suffix: str, compress: object
) -> None:
    packed = compress(CSV.encode())  # type: ignore[operator]
    named = tmp_path / f"rows.csv{suffix}"
    named.write_bytes(packed)
    unnamed = tmp_path / "rows"
    unnamed.write_bytes(packed)
    for path in (named, unnamed):
        np.testing.assert_array_equal(read_numbers(path, NAMES), VALUES)


def test_zstd_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pa = needs("pyarrow")
    path = tmp_path / "rows.csv.zst"
    with pa.CompressedOutputStream(str(path), "zstd") as stream:
        stream.write(CSV.encode())
    np.testing.assert_array_equal(read_numbers(path, NAMES), VALUES)
    monkeypatch.setattr(data_source, "arrow_available", lambda: False)
    with pytest.raises(DataError, match=r"rows\.csv\.zst: .*needs pyarrow: pip install"):
        read_numbers(path, NAMES)


def test_parquet_without_pyarrow_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rows.parquet"
    path.write_bytes(b"PAR1 not really")
    monkeypatch.setattr(data_source, "arrow_available", lambda: False)
    with pytest.raises(DataError, match=r"Parquet needs pyarrow: pip install 'pomona\[fast\]'"):
        read_numbers(path, NAMES)


def test_corrupt_gzip_is_one_message(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv.gz"
    path.write_bytes(gzip.compress(CSV.encode())[:-12] + b"\x00" * 12)
    with pytest.raises(DataError, match=r"rows\.csv\.gz: cannot decompress \(gzip\)"):
        read_numbers(path, NAMES)


@pytest.mark.parametrize(("delimiter", "suffix"), [(";", ".csv"), ("\t", ".tsv"), ("|", ".txt")])
def test_delimiter_is_detected(tmp_path: Path, delimiter: str, suffix: str) -> None:
    path = tmp_path / f"rows{suffix}"
    path.write_text(CSV.replace(",", delimiter))
    np.testing.assert_array_equal(read_numbers(path, NAMES), VALUES)


def test_delimiter_is_named_when_a_column_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("temp;rainfall;humidity\n1,5;2;3\n")
    with pytest.raises(DataError, match=r"line 1: no column 'temp' .*split at ','"):
        read_numbers(path, NAMES, delimiter=",")
    with pytest.raises(DataError, match=r"line 2, column 'temp': '1,5' is not a number"):
        read_numbers(path, NAMES)


def test_predict_delimiter_option(tmp_path: Path) -> None:
    model = make_linear_onnx(tmp_path / "model.onnx")
    path = tmp_path / "rows.csv"
    path.write_text("temp|rainfall|humidity|x\n1|2|3|4,5\n")
    for options in ([], ["--delimiter", "|"]):
        done = run_pomona("predict", model, path, *options)
        assert done.returncode == 0, done.stderr
        assert done.stdout == "apples,oranges\n3.375,1.25\n"
    failed = run_pomona("predict", model, path, "--delimiter", ";")
    assert failed.returncode == 1
    assert "no column 'temp' in the header (columns: temp|rainfall|humidity|x; split at ';')" in (
        failed.stderr
    )


@pytest.mark.parametrize("cell", ["1_000", "١٢", "0x10", "1,000"])
def test_python_only_numbers_are_refused(tmp_path: Path, cell: str) -> None:
    path = tmp_path / "rows.csv"
    path.write_text(f'temp,rainfall,humidity\n1,2,3\n"{cell}",2,3\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"line 3, column 'temp': '{cell}' is not a number$"):
        read_numbers(path, NAMES)


def test_spaces_around_numbers_are_allowed(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("temp,rainfall,humidity\n 1 ,2,  3\n")
    assert read_numbers(path, NAMES).tolist() == [[1, 2, 3]]


@pytest.mark.parametrize("name", ["rows.csv", "rows.bin", "rows.jsonl"])
def test_latin1_and_binary_files_are_one_line(tmp_path: Path, name: str) -> None:
    model = make_linear_onnx(tmp_path / "model.onnx")
    path = tmp_path / name
    path.write_bytes("temp,rainfall,humidity\n1,2,3\nrégion,2,3\n".encode("latin-1"))
    binary = tmp_path / "model-as-input.csv"
    binary.write_bytes(model.read_bytes())
    for source in (path, binary):
        done = run_pomona("predict", model, source)
        assert done.returncode == 1
        assert done.stderr.startswith(f"Error: {source}, line ")
        assert "not UTF-8" in done.stderr or "binary data" in done.stderr
        assert done.stderr.count("\n") == 1, done.stderr


def test_gzip_without_extension_is_decompressed_in_predict(tmp_path: Path) -> None:
    model = make_linear_onnx(tmp_path / "model.onnx")
    path = tmp_path / "rows"
    path.write_bytes(gzip.compress(b"temp,rainfall,humidity\n1,2,x\n"))
    done = run_pomona("predict", model, path)
    assert done.returncode == 1
    assert done.stderr == f"Error: {path}, line 2, column 'humidity': 'x' is not a number\n"


def test_parquet_in_and_out_through_predict(tmp_path: Path) -> None:
    pa = needs("pyarrow")
    pq = needs("pyarrow.parquet")
    model = make_linear_onnx(tmp_path / "model.onnx")
    source = tmp_path / "rows.csv"
    source.write_text(CSV)
    expected = run_pomona("predict", model, source, "--keep", "id")
    assert expected.returncode == 0, expected.stderr
    out = tmp_path / "out.parquet"
    done = run_pomona("predict", model, source, "-o", out, "--keep", "id")
    assert done.returncode == 0, done.stderr
    table = pq.read_table(out)
    assert table.column_names == ["id", "apples", "oranges"]
    assert table.schema.field("apples").type == pa.float32()
    lines = [",".join(map(str, row)) for row in zip(*table.to_pydict().values(), strict=True)]
    assert [line.split(",")[0] for line in lines] == ["a", "b", "c"]
    parquet_in = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], **dict(zip(NAMES, VALUES.T, strict=True))}),
                   parquet_in)  # fmt: skip
    again = run_pomona("predict", model, parquet_in, "--keep", "id")
    assert again.returncode == 0, again.stderr
    assert again.stdout == expected.stdout


def test_parquet_cells_are_checked(tmp_path: Path) -> None:
    pa = needs("pyarrow")
    pq = needs("pyarrow.parquet")
    path = tmp_path / "rows.parquet"
    table = pa.table({"temp": [1.0, None], "rainfall": [1.0, 2.0], "humidity": ["1", "x"]})
    pq.write_table(table, path)
    with pytest.raises(DataError, match=r"rows\.parquet, row 2, column 'temp': empty cell"):
        read_numbers(path, NAMES)
    pq.write_table(table.set_column(0, "temp", pa.array([1.0, 2.0])), path)
    with pytest.raises(DataError, match=r"row 1, column 'humidity': '1' is not a number"):
        read_numbers(path, NAMES)
    with pytest.raises(DataError, match=r"rows\.parquet: no column 'wind' \(columns: temp, "):
        read_numbers(path, ["wind"])


def test_npy_has_no_column_names_for_training(tmp_path: Path) -> None:
    path = tmp_path / "rows.npy"
    np.save(path, VALUES)
    with pytest.raises(DataError, match=r"a \.npy array has no column names"):
        read_numbers(path, NAMES)


def test_jsonl_values_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    rows = [{"temp": 1, "rainfall": 2, "humidity": 3}, {"temp": True, "rainfall": 2, "humidity": 3}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=r"line 2, column 'temp': 'true' is not a number"):
        read_numbers(path, NAMES)
