"""``pomona predict --engine ray``: the real CLI, one local Ray cluster for the run that
predicts; refusals are found before Ray starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import needs, run_pomona
from tests.onnx_models import make_linear_onnx

needs("ray")
pa = needs("pyarrow")
pq = needs("pyarrow.parquet")

FEATURES = ["temp", "rainfall", "humidity"]


def _shards(folder: Path, n: int = 3, rows: int = 300) -> Path:
    folder.mkdir()
    for i in range(n):
        x = np.random.default_rng(i).uniform(-50, 50, size=(rows, 3)).astype(np.float32)
        columns = {"id": [f"{i}-{j}" for j in range(rows)]}
        columns.update({name: x[:, k] for k, name in enumerate(FEATURES)})
        pq.write_table(pa.table(columns), folder / f"rows-{i}.parquet")
    return folder


@pytest.fixture
def model(tmp_path: Path) -> Path:
    (tmp_path / "m").mkdir()
    return make_linear_onnx(tmp_path / "m" / "model.onnx")


@pytest.mark.slow
def test_cli_writes_csv_shards_equal_to_single_process(model: Path, tmp_path: Path) -> None:
    shards = _shards(tmp_path / "in")
    done = run_pomona(
        "predict",
        "--engine",
        "ray",
        "--workers",
        "2",
        "--keep",
        "id",
        "--format",
        "csv",
        model,
        shards / "*.parquet",
        "-o",
        tmp_path / "out",
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stderr.splitlines()) <= 3, done.stderr  # quiet: no logs, no progress bars
    parts = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in parts] == ["part-00000.csv", "part-00001.csv", "part-00002.csv"]
    for i, part in enumerate(parts):
        single = run_pomona("predict", "--keep", "id", model, shards / f"rows-{i}.parquet")
        assert single.returncode == 0, single.stderr
        assert part.read_text() == single.stdout  # same text, row for row


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing", "rows-1.parquet: no column 'humidity'"),
        ("bad-model", "not a valid ONNX model"),
        ("full-output", "the output folder exists and is not empty"),
        ("stdout", "--engine ray writes a folder of shards"),
    ],
)
def test_cli_refusals_are_one_error_line(
    model: Path, tmp_path: Path, change: str, message: str
) -> None:
    shards = _shards(tmp_path / "in", rows=5)
    output = tmp_path / "out"
    if change == "missing":
        table = pq.read_table(shards / "rows-1.parquet").drop(["humidity"])
        pq.write_table(table, shards / "rows-1.parquet")
    elif change == "bad-model":
        model.write_bytes(b"garbage")
    elif change == "full-output":
        output.mkdir()
        (output / "old.parquet").write_bytes(b"x")
    args = ["-o", output] if change != "stdout" else []
    done = run_pomona("predict", "--engine", "ray", "--no-manifest-check", model, shards, *args)
    assert done.returncode == 1
    assert done.stderr.count("Error:") == 1 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
