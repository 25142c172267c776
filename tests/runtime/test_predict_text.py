"""Text through the real ``pomona predict``: kept columns verbatim, shortest float32 output.

A kept column is copied as the text it was (``007`` stays ``007``, not ``7``), in CSV and
JSON Lines output, on the small (standard-library) and large (pyarrow) paths. Predictions
are written as the shortest decimal text that reads back to the same float32, checked
against numpy's own shortest representation, not against the runtime's formatter.
"""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pomona.runtime.artifacts import (
    FEATURE_NAMES_KEY,
    FORMAT_KEY,
    FORMAT_VERSION,
    INPUT_NAME,
    OUTPUT_NAME,
    TARGET_NAMES_KEY,
)
from pomona.runtime.data import SMALL_INPUT
from tests.conftest import run_pomona

# Texts a number parser would rewrite; each must come back exactly as written.
KEPT = ["007", "0.50", "1e3", "-0", "+5", "1.000", "0x1F", " 7", "", "12345678901234567890"]

# Input text -> the float32 it denotes; none of them round-trips trivially.
SPECIAL = {
    "0.1": np.float32(0.1),  # 0.100000001490116...
    "16777217": np.float32(16777216),  # 2**24 + 1 is not a float32
    "1e-45": np.float32(1e-45),  # the smallest subnormal, 1.401298464e-45
    "3.4028235e38": np.finfo(np.float32).max,
    "-0.0": np.float32(-0.0),
    "0.3": np.float32(0.3),
    "1.0000001": np.nextafter(np.float32(1), np.float32(2)),
    "1.17549435e-38": np.finfo(np.float32).tiny,
    "1e10": np.float32(1e10),
    "123456.789": np.float32(123456.79),
    "-2.5e-40": np.float32(-2.5e-40),
}
SIZES = {"small": 1, "large": SMALL_INPUT // 40 + 1}  # copies of the rows; large > SMALL_INPUT


@pytest.fixture
def identity(tmp_path: Path) -> Path:
    """A model that returns its one feature ``x`` as its one target ``y``, bit for bit
    (a Gemm would turn -0.0 into 0.0)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", [INPUT_NAME], [OUTPUT_NAME])],
        "identity",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    helper.set_model_props(
        model,
        {
            FORMAT_KEY: str(FORMAT_VERSION),
            FEATURE_NAMES_KEY: json.dumps(["x"]),
            TARGET_NAMES_KEY: json.dumps(["y"]),
        },
    )
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "identity.onnx"
    onnx.save_model(model, str(path))
    return path


def _csv_rows(path: Path, header: list[str], rows: list[list[str]], copies: int) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows(rows)
    path.write_text(",".join(header) + "\n" + buffer.getvalue() * copies)
    return path


def _predict(model: Path, source: Path, out: Path, *options: str) -> str:
    done = run_pomona("predict", model, source, "-o", out, *options)
    assert done.returncode == 0, done.stderr
    return out.read_text()


# -- --keep copies text verbatim -----------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=list(SIZES))
def test_keep_copies_csv_text_verbatim_to_csv(identity: Path, tmp_path: Path, size: str) -> None:
    rows = [[kept, str(i)] for i, kept in enumerate(KEPT)]
    source = _csv_rows(tmp_path / "in.csv", ["id", "x"], rows, SIZES[size])
    if size == "large":
        assert source.stat().st_size > SMALL_INPUT
    text = _predict(identity, source, tmp_path / "out.csv", "--keep", "id")
    got = list(csv.reader(io.StringIO(text)))
    assert got[0] == ["id", "y"]
    assert got[1:] == [[kept, str(i)] for i, kept in enumerate(KEPT)] * SIZES[size]


@pytest.mark.parametrize("size", SIZES, ids=list(SIZES))
def test_keep_copies_csv_text_verbatim_to_jsonl(identity: Path, tmp_path: Path, size: str) -> None:
    rows = [[kept, str(i)] for i, kept in enumerate(KEPT)]
    source = _csv_rows(tmp_path / "in.csv", ["id", "x"], rows, SIZES[size])
    text = _predict(identity, source, tmp_path / "out.jsonl", "--keep", "id")
    records = [json.loads(line) for line in text.splitlines()]
    assert records == [{"id": kept, "y": i} for i, kept in enumerate(KEPT)] * SIZES[size]


def test_keep_copies_jsonl_values_as_they_were(identity: Path, tmp_path: Path) -> None:
    values: list[object] = ["007", 7, "0.50", 0.5, "-0", True, None, "", 12345678901234567890]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": v, "x": i}) + "\n" for i, v in enumerate(values)))
    records = [
        json.loads(line)
        for line in _predict(identity, source, tmp_path / "o.jsonl", "--keep", "id").splitlines()
    ]
    assert [r["id"] for r in records] == values
    assert all(type(r["id"]) is type(v) for r, v in zip(records, values, strict=True))
    rows = list(
        csv.reader(io.StringIO(_predict(identity, source, tmp_path / "o.csv", "--keep", "id")))
    )
    assert [r[0] for r in rows[1:4]] == ["007", "7", "0.50"]


# -- shortest float32 text -----------------------------------------------------------------


def _assert_shortest(text: str, value: np.float32) -> None:
    """``text`` reads back to ``value`` (sign of zero included) and is numpy's shortest text:
    the same decimal number, whatever the notation (``16777216`` or ``1.6777216e+07``)."""
    got = np.float32(text)
    assert got.tobytes() == value.tobytes(), f"{text!r} reads back as {got!r}, not {value!r}"
    shortest = np.format_float_scientific(value, unique=True, trim="-")
    assert Decimal(text) == Decimal(shortest), f"{text!r} is not numpy's shortest {shortest!r}"


def test_the_check_tells_longer_text_apart() -> None:
    _assert_shortest("16777216", np.float32(16777217))
    _assert_shortest("1.6777216e+07", np.float32(16777216))
    with pytest.raises(AssertionError, match="not numpy's shortest"):
        _assert_shortest("0.10000000149011612", np.float32(0.1))
    with pytest.raises(AssertionError, match="not numpy's shortest"):
        _assert_shortest("16777216.0001", np.float32(16777216))
    with pytest.raises(AssertionError, match="reads back"):
        _assert_shortest("0.0", np.float32(-0.0))


@pytest.mark.parametrize("size", SIZES, ids=list(SIZES))
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_predictions_are_the_shortest_float32_text(
    identity: Path, tmp_path: Path, size: str, fmt: str
) -> None:
    source = _csv_rows(tmp_path / "in.csv", ["x"], [[t] for t in SPECIAL], SIZES[size])
    text = _predict(identity, source, tmp_path / f"out.{fmt}")
    lines = text.splitlines()
    if fmt == "csv":
        assert lines[0] == "y"
        written = lines[1:]
    else:
        records = [json.loads(line) for line in lines]  # each line is valid JSON
        assert all(list(r) == ["y"] for r in records)
        written = [line.split(":", 1)[1].strip().rstrip("}").strip() for line in lines]
    first = written[: len(SPECIAL)]
    assert written == first * SIZES[size]
    for cell, value in zip(first, SPECIAL.values(), strict=True):
        _assert_shortest(cell, value)
