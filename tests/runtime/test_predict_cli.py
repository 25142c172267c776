"""``pomona predict`` and ``pomona info``: formats, streaming, pass-through columns, failures."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from pomona.runtime import data
from pomona.runtime.data import csv_write
from pomona.runtime.data import source as data_source
from pomona.runtime.errors import DataError
from pomona.runtime.predict_cli import info, predict
from pomona.runtime.predictor import Predictor
from tests.conftest import needs, run_pomona
from tests.onnx_models import make_linear_onnx

FEATURES = ["temp", "rainfall", "humidity"]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    folder = tmp_path / "artifacts"
    folder.mkdir()
    return make_linear_onnx(folder / "model.onnx")


def _rows(n: int, seed: int = 0) -> np.ndarray:
    """Float32 rows whose shortest decimal strings round-trip exactly."""
    return np.random.default_rng(seed).uniform(-100, 100, size=(n, 3)).astype(np.float32)


def _write_csv(path: Path, x: np.ndarray, order: list[int] | None = None) -> Path:
    """CSV with an id column first, features in the given order and an unused column last."""
    order = order or [0, 1, 2]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *(FEATURES[i] for i in order), "note"])
        for i, row in enumerate(x):
            writer.writerow([f"id-{i:05d}", *(repr(float(row[j])) for j in order), "x, y"])
    return path


def _onnxruntime(model: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(["predictions"], {"features": x})[0]  # type: ignore[no-any-return]


def _read_csv_output(path_or_text: Path | str) -> tuple[list[str], list[list[str]]]:
    text = path_or_text.read_text() if isinstance(path_or_text, Path) else path_or_text
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


def _floats(rows: list[list[str]], columns: slice) -> np.ndarray:
    return np.array([[float(v) for v in row[columns]] for row in rows], dtype=np.float32)


# -- happy paths ---------------------------------------------------------------------------


def test_csv_to_stdout_equals_onnxruntime(model: Path, tmp_path: Path) -> None:
    x = _rows(50)
    source = _write_csv(tmp_path / "rows.csv", x, order=[2, 0, 1])
    result = run_pomona("predict", model, source)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    header, rows = _read_csv_output(result.stdout)
    assert header == ["apples", "oranges"]
    np.testing.assert_array_equal(_floats(rows, slice(0, 2)), _onnxruntime(model, x))


def test_large_csv_fast_path_keep_and_small_batches(model: Path, tmp_path: Path) -> None:
    # Over SMALL_INPUT bytes, so pyarrow's streaming reader and writer are used.
    x = _rows(40_000, seed=1)
    source = _write_csv(tmp_path / "big.csv", x)
    assert source.stat().st_size > data.SMALL_INPUT
    out = tmp_path / "out.csv"
    result = run_pomona("predict", model, source, "-o", out, "--keep", "id", "--batch-size", "7000")
    assert result.returncode == 0, result.stderr
    header, rows = _read_csv_output(out)
    assert header == ["id", "apples", "oranges"]
    assert [r[0] for r in rows] == [f"id-{i:05d}" for i in range(len(x))]
    np.testing.assert_array_equal(_floats(rows, slice(1, 3)), _onnxruntime(model, x))


@pytest.mark.parametrize("size", [20, 40_000], ids=["small", "large"])
def test_stdlib_fallback_without_pyarrow(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    monkeypatch.setattr(data_source, "arrow_available", lambda: False)
    x = _rows(size, seed=2)
    source = _write_csv(tmp_path / "rows.csv", x, order=[1, 2, 0])
    out = tmp_path / "out.csv"
    args = [str(model), str(source), "-o", str(out), "--keep", "note,id", "--batch-size", "999"]
    result = CliRunner().invoke(predict, args)
    assert result.exit_code == 0, result.output
    header, rows = _read_csv_output(out)
    assert header == ["note", "id", "apples", "oranges"]
    assert rows[0][:2] == ["x, y", "id-00000"]
    np.testing.assert_array_equal(_floats(rows, slice(2, 4)), _onnxruntime(model, x))


def test_stdlib_and_pyarrow_outputs_agree(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs("pyarrow")
    x = _rows(40_000, seed=3)
    source = _write_csv(tmp_path / "rows.csv", x)
    outputs = []
    for arrow in (True, False):
        monkeypatch.setattr(data_source, "arrow_available", lambda arrow=arrow: arrow)
        out = tmp_path / f"out-{arrow}.csv"
        predictor = Predictor(model)
        data.predict_file(predictor, str(source), str(out), keep=["id", "note"])
        outputs.append(_read_csv_output(out))
    assert outputs[0][0] == outputs[1][0]
    np.testing.assert_array_equal(
        _floats(outputs[0][1], slice(2, 4)), _floats(outputs[1][1], slice(2, 4))
    )
    assert [r[:2] for r in outputs[0][1]] == [r[:2] for r in outputs[1][1]]


def test_jsonl_in_and_out(model: Path, tmp_path: Path) -> None:
    x = _rows(30, seed=4)
    source = tmp_path / "rows.jsonl"
    lines = [
        json.dumps({"humidity": float(r[2]), "id": i, "temp": float(r[0]), "rainfall": float(r[1])})
        for i, r in enumerate(x)
    ]
    source.write_text("\n".join(lines) + "\n\n")
    out = tmp_path / "out.jsonl"
    result = run_pomona("predict", model, source, "-o", out, "--keep", "id")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == list(range(30))
    got = np.array([[r["apples"], r["oranges"]] for r in records], dtype=np.float32)
    np.testing.assert_array_equal(got, _onnxruntime(model, x))


def test_npy_in_and_out(model: Path, tmp_path: Path) -> None:
    x = _rows(1000, seed=5).astype(np.float64)
    source = tmp_path / "rows.npy"
    np.save(source, x)
    out = tmp_path / "out.npy"
    result = run_pomona("predict", model, source, "-o", out, "--batch-size", "300")
    assert result.returncode == 0, result.stderr
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == (1000, 2)
    np.testing.assert_array_equal(got, _onnxruntime(model, x.astype(np.float32)))


def test_stdin_to_stdout_with_format(model: Path, tmp_path: Path) -> None:
    x = _rows(5, seed=6)
    text = _write_csv(tmp_path / "rows.csv", x).read_text()
    result = run_pomona("predict", model, "-", "--format", "jsonl", "--keep", "id", input=text)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records[0]["id"] == "id-00000"
    got = np.array([[r["apples"], r["oranges"]] for r in records], dtype=np.float32)
    np.testing.assert_array_equal(got, _onnxruntime(model, x))


def test_npy_to_stdout(model: Path, tmp_path: Path) -> None:
    x = _rows(10, seed=7)
    out = tmp_path / "piped.npy"
    runner = CliRunner()
    source = tmp_path / "rows.csv"
    _write_csv(source, x)
    result = runner.invoke(predict, [str(model), str(source), "--format", "npy"])
    assert result.exit_code == 0, result.output
    out.write_bytes(result.stdout_bytes)
    np.testing.assert_array_equal(np.load(out), _onnxruntime(model, x))


def test_manifest_opt_out(model: Path, tmp_path: Path) -> None:
    manifest = {"artifacts": {"model.onnx": {"sha256": "f" * 64}}}
    (model.parent / "manifest.json").write_text(json.dumps(manifest))
    source = _write_csv(tmp_path / "rows.csv", _rows(3))
    result = run_pomona("predict", model, source, "--no-manifest-check", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("apples,oranges\n")


def test_progress_callback(model: Path, tmp_path: Path) -> None:
    source = _write_csv(tmp_path / "rows.csv", _rows(100))
    seen: list[tuple[int, int | None]] = []
    rows = data.predict_file(
        Predictor(model),
        str(source),
        str(tmp_path / "out.csv"),
        batch_size=30,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert rows == 100
    assert seen and seen[-1] == (source.stat().st_size, source.stat().st_size)


# -- failures: one line, exit 1, no output file ----------------------------------------------

HEADER = "id,temp,rainfall,humidity\n"
GOOD = "a,1,2,3\n"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.csv", None, "missing.csv: no such file"),
        ("empty.csv", "", "empty.csv: the file is empty"),
        ("header.csv", HEADER, "header.csv: no data rows after the header"),
        ("nocol.csv", "temp,rainfall\n1,2\n", "line 1: no column 'humidity' in the header"),
        (
            "text.csv",
            HEADER + GOOD + "b,1,abc,3\n",
            "line 3, column 'rainfall': 'abc' is not a number",
        ),
        (
            "nan.csv",
            HEADER + GOOD + "b,1,2,nan\n",
            "line 3, column 'humidity': 'nan' is not a finite float32 number",
        ),
        (
            "inf.csv",
            HEADER + GOOD + "b,1e40,2,3\n",
            "line 3, column 'temp': '1e40' is not a finite float32 number",
        ),
        ("blank.csv", HEADER + GOOD + "b,1,,3\n", "line 3, column 'rainfall': empty cell"),
        ("ragged.csv", HEADER + GOOD + "b,1,2\n", "line 3: 3 fields, but the header has 4"),
        ("truncated.csv", HEADER + GOOD + GOOD + "b,1", "line 4: 2 fields, but the header has 4"),
        (
            "dupe.csv",
            "temp,temp,rainfall,humidity\n1,1,2,3\n",
            "line 1: column 'temp' appears 2 times",
        ),
        ("empty.jsonl", "", "empty.jsonl: the file is empty"),
        (
            "cut.jsonl",
            '{"temp": 1, "rainfall": 2, "humidity": 3}\n{"temp": 1, "rai',
            "line 2: not a JSON object",
        ),
        ("nokey.jsonl", '{"temp": 1, "rainfall": 2}\n', "line 1: no column 'humidity'"),
        ("text.jsonl", '{"temp": 1, "rainfall": "x", "humidity": 3}\n', "'x' is not a number"),
        ("null.jsonl", '{"temp": 1, "rainfall": null, "humidity": 3}\n', "null, expected a number"),
        ("list.jsonl", "[1, 2, 3]\n", "line 1: not a JSON object"),
        ("empty.npy", b"", "empty.npy: the file is empty"),
        ("junk.npy", b"not numpy at all", "not a .npy file"),
    ],
)
def test_bad_input_file(
    model: Path, tmp_path: Path, name: str, content: str | bytes | None, message: str
) -> None:
    source = tmp_path / name
    if isinstance(content, bytes):
        source.write_bytes(content)
    elif content is not None:
        source.write_text(content)
    out = tmp_path / "out.csv"
    result = run_pomona("predict", model, source, "-o", out)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".out.csv*")), "temporary file left behind"


def test_bad_npy_shapes(model: Path, tmp_path: Path) -> None:
    wide = tmp_path / "wide.npy"
    np.save(wide, np.zeros((4, 5), np.float32))
    truncated = tmp_path / "truncated.npy"
    np.save(truncated, np.ones((100, 3), np.float32))
    truncated.write_bytes(truncated.read_bytes()[:-50])
    text = tmp_path / "text.npy"
    np.save(text, np.array([["a", "b", "c"]]))
    for source, message in [
        (wide, "expected an array of shape [rows, 3], got (4, 5)"),
        (truncated, "truncated: the header promises 100 rows, found 95"),
        (text, "expected a numeric array"),
    ]:
        out = tmp_path / "out.npy"
        result = run_pomona("predict", model, source, "-o", out)
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert not out.exists()


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ("z,1,abc,3", "line 60002, column 'rainfall': 'abc' is not a number"),
        ("z,1,2", "line 60002: 3 fields, but the header has 4"),
        ("z,1,,3", "line 60002, column 'rainfall': empty cell"),
        ("z,1,2,nan", "line 60002, column 'humidity': 'nan' is not a finite"),
    ],
)
def test_bad_row_near_the_end_of_a_large_file(
    model: Path, tmp_path: Path, bad_row: str, message: str
) -> None:
    source = tmp_path / "big.csv"
    rows = "".join(f"r{i:08d},{i % 97},{i % 89}.5,{i % 83}\n" for i in range(60_000))
    source.write_text(HEADER + rows + bad_row + "\n" + GOOD)
    assert source.stat().st_size > data.SMALL_INPUT
    out = tmp_path / "out.csv"
    result = run_pomona("predict", model, source, "-o", out, "--batch-size", "4096")
    assert result.returncode == 1
    assert message in result.stderr, result.stderr
    assert not out.exists()


def _damage_model(model: Path, how: str) -> None:
    data = model.read_bytes()
    if how == "garbage":
        model.write_bytes(b"\x00garbage\xff" * 20)
    elif how == "truncated":
        model.write_bytes(data[: len(data) * 2 // 3])
    elif how == "empty":
        model.write_bytes(b"")
    elif how == "missing":
        model.unlink()
    elif how == "changed":
        digest = hashlib.sha256(data).hexdigest()
        (model.parent / "manifest.json").write_text(
            json.dumps({"artifacts": {"model.onnx": {"sha256": digest}}})
        )
        make_linear_onnx(model, bias=np.array([0.0, 0.0], np.float32))


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("garbage", "not a valid ONNX model"),
        ("truncated", "not a valid ONNX model"),
        ("empty", "not a valid ONNX model"),
        ("missing", "model file does not exist"),
        ("changed", "model changed since manifest.json was written"),
    ],
)
def test_bad_model(model: Path, tmp_path: Path, how: str, message: str) -> None:
    _damage_model(model, how)
    source = _write_csv(tmp_path / "rows.csv", _rows(3))
    out = tmp_path / "out.csv"
    result = run_pomona("predict", model, source, "-o", out)
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: {model}") and message in result.stderr
    assert result.stderr.count("\n") == 1
    assert not out.exists()


def test_unwritable_output(model: Path, tmp_path: Path) -> None:
    source = _write_csv(tmp_path / "rows.csv", _rows(3))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    out = blocker / "out.csv"
    result = run_pomona("predict", model, source, "-o", out)
    assert result.returncode == 1
    assert f"Error: {out}: cannot write" in result.stderr
    assert result.stderr.count("\n") == 1
    assert not out.exists()


def test_existing_output_survives_a_failure(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    out.write_text("previous results\n")
    source = tmp_path / "bad.csv"
    source.write_text(HEADER + GOOD + "b,1,2,x\n")
    result = run_pomona("predict", model, source, "-o", out)
    assert result.returncode == 1
    assert out.read_text() == "previous results\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "Invalid value for '--batch-size'"),
        (["--format", "xml"], "Invalid value for '--format'"),
        (["--keep", "id,,x"], "empty column name"),
        (["--threads", "0"], "Invalid value for '--threads'"),
    ],
)
def test_usage_errors_exit_2(model: Path, tmp_path: Path, args: list[str], message: str) -> None:
    source = _write_csv(tmp_path / "rows.csv", _rows(3))
    result = CliRunner().invoke(predict, [str(model), str(source), *args])
    assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--keep", "apples"], "clash with the model's outputs"),
        (["--keep", "nope"], "no column 'nope' in the header"),
        (["--keep", "id", "--format", "npy"], "--keep needs CSV, JSON Lines or Parquet output"),
    ],
)
def test_bad_keep(model: Path, tmp_path: Path, args: list[str], message: str) -> None:
    source = _write_csv(tmp_path / "rows.csv", _rows(3))
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(predict, [str(model), str(source), "-o", str(out), *args])
    assert result.exit_code == 1 and message in result.output
    assert not out.exists()


# -- info --------------------------------------------------------------------------------------


def test_info_text_and_json(model: Path) -> None:
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    (model.parent / "manifest.json").write_text(
        json.dumps({"artifacts": {"model.onnx": {"sha256": digest}}})
    )
    result = run_pomona("info", model)
    assert result.returncode == 0, result.stderr
    assert "manifest   ok: matches manifest.json" in result.stdout
    assert "IR 10, opset ai.onnx 18" in result.stdout
    assert "input      features tensor(float) [batch, 3]" in result.stdout
    assert "features   temp, rainfall, humidity" in result.stdout
    facts = json.loads(CliRunner().invoke(info, [str(model), "--json"]).output)
    assert facts["sha256"] == digest
    assert facts["opset"] == {"": 18}
    assert facts["target_names"] == ["apples", "oranges"]
    assert facts["outputs"] == [
        {"name": "predictions", "type": "tensor(float)", "shape": ["batch", 2]}
    ]


@pytest.mark.parametrize(
    ("manifest", "status"),
    [
        (None, "none"),
        ("{}", "unreadable"),
        ('{"artifacts": {"model.onnx": {"sha256": "0"}}}', "mismatch"),
    ],
)
def test_info_manifest_status(model: Path, manifest: str | None, status: str) -> None:
    if manifest is not None:
        (model.parent / "manifest.json").write_text(manifest)
    result = CliRunner().invoke(info, [str(model), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["manifest"]["status"] == status


def test_info_bad_model(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"junk")
    result = run_pomona("info", bad)
    assert result.returncode == 1 and "not a valid ONNX model" in result.stderr


def test_help() -> None:
    result = run_pomona("predict", "--help")
    assert result.returncode == 0
    for option in (
        "--output",
        "--format",
        "--batch-size",
        "--keep",
        "--no-manifest-check",
        "--threads",
    ):
        assert option in result.stdout


def test_write_failure_leaves_no_file(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs("pyarrow")
    source = _write_csv(tmp_path / "big.csv", _rows(40_000, seed=8))

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(csv_write.CsvWriter, "_write_arrow", disk_full)
    out = tmp_path / "out.csv"
    with pytest.raises(DataError, match="cannot write: No space left on device"):
        data.predict_file(Predictor(model), str(source), str(out), batch_size=5000)
    assert not out.exists()
    assert not list(tmp_path.glob(".out.csv*"))
