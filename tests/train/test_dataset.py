"""Reading, checking and splitting training data; batch feeding."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pomona.runtime.errors import DataError
from pomona.train.batches import BatchTensors, ShuffledBatches, batch_loader, needs_pinning
from pomona.train.dataset import BUNDLED_DATA, Table, read_table, split_indices
from tests.conftest import needs, run_pomona

CROP = ("temp", "rainfall", "humidity"), ("apples", "oranges")
HEADER = "temp,rainfall,humidity,apples,oranges\n"
GOOD_ROW = "73,67,43,56,70\n"


def test_bundled_data_are_the_seed_rows() -> None:
    table = read_table(None, *CROP)
    assert table.source == BUNDLED_DATA
    assert len(table) == 15
    assert table.features.dtype == np.float32
    assert table.features[0].tolist() == [73, 67, 43]
    assert table.targets[-1].tolist() == [102, 120]


def test_columns_are_matched_by_name_in_any_order(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("y, note ,b,a\n1.5,x,2,3\n\n-4e2,y,5,6\n")
    table = read_table(path, ["a", "b"], ["y"])
    assert table.features.tolist() == [[3, 2], [6, 5]]
    assert table.targets.tolist() == [[1.5], [-400]]
    assert table.source == str(path)


def _table(rows: int) -> Table:
    return Table("t.csv", "", ("x",), ("y",), np.zeros((rows, 1), np.float32), np.zeros((rows, 1)))


@settings(max_examples=50, deadline=None)
@given(rows=st.integers(10, 500), fraction=st.floats(0, 0.5), seed=st.integers(0, 2**32))
def test_split_is_a_partition(rows: int, fraction: float, seed: int) -> None:
    train, val = split_indices(_table(rows), fraction, seed)
    assert sorted([*train.tolist(), *val.tolist()]) == list(range(rows))
    assert len(val) == (0 if fraction == 0 else max(1, round(rows * fraction)))
    again = split_indices(_table(rows), fraction, seed)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(2, 400),
    fraction=st.sampled_from([0.0, 0.01, 0.2, 0.5, 0.9]),
    seed=st.integers(0, 2**32),
)
def test_split_is_the_seeded_permutation_sorted(rows: int, fraction: float, seed: int) -> None:
    """The held-out rows are the first of a seeded permutation, each part sorted."""
    n_val = 0 if fraction <= 0 else max(1, round(rows * fraction))
    if rows - n_val < 2:
        return
    order = np.random.default_rng(seed).permutation(rows)
    train, val = split_indices(_table(rows), fraction, seed)
    assert np.array_equal(train, np.sort(order[n_val:])) and train.dtype == np.int64
    assert np.array_equal(val, np.sort(order[:n_val])) and val.dtype == np.int64


def test_split_keeps_two_training_rows() -> None:
    assert [len(part) for part in split_indices(_table(3), 0.2, 0)] == [2, 1]
    with pytest.raises(DataError, match=r"t\.csv: 3 data rows, but training needs at least 3"):
        split_indices(_table(3), 0.5, 0)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 300), batch=st.integers(1, 64), seed=st.integers(0, 1000))
def test_loader_yields_every_row_once_per_epoch(rows: int, batch: int, seed: int) -> None:
    x = torch.arange(rows, dtype=torch.float32).unsqueeze(1)
    loader = batch_loader(BatchTensors(x, 2 * x), batch, torch.Generator().manual_seed(seed))
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == len(loader.sampler) == -(-rows // batch)  # type: ignore[arg-type]
        assert all(len(xb) == batch for xb, _ in batches[:-1])
        seen = torch.cat([xb for xb, _ in batches]).squeeze(1)
        assert sorted(seen.tolist()) == list(range(rows))
        assert all(torch.equal(yb, 2 * xb) for xb, yb in batches)


def test_batch_order_depends_only_on_the_generator() -> None:
    def order(seed: int) -> list[torch.Tensor]:
        return list(ShuffledBatches(100, 7, torch.Generator().manual_seed(seed)))

    assert all(torch.equal(a, b) for a, b in zip(order(1), order(1), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(order(1), order(2), strict=True))


def test_batch_tensors_takes_index_lists_and_tensors() -> None:
    data = BatchTensors(torch.arange(5.0), torch.arange(5) * 10)
    x, y = data[[4, 0]]
    assert x.tolist() == [4.0, 0.0] and y.tolist() == [40, 0]
    assert data[torch.tensor([1])][1].tolist() == [10]
    with pytest.raises(ValueError, match="same number of rows"):
        BatchTensors(torch.zeros(2), torch.zeros(3))


@settings(max_examples=50, deadline=None)
@given(
    rows=st.integers(1, 200),
    columns=st.integers(0, 4),
    data=st.data(),
)
def test_batch_tensors_gathers_the_rows_plain_indexing_does(
    rows: int, columns: int, data: st.DataObject
) -> None:
    index = data.draw(st.lists(st.integers(0, rows - 1), max_size=3 * rows))
    shape = (rows, columns) if columns else (rows,)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(rows))
    y = torch.arange(rows * 2).reshape(rows, 2)
    for form in (index, torch.tensor(index, dtype=torch.int64)):
        got = BatchTensors(x, y)[form]
        assert torch.equal(got[0], x[index]) and got[0].dtype == x.dtype
        assert torch.equal(got[1], y[index]) and got[1].dtype == y.dtype


@pytest.mark.parametrize(
    ("data", "device", "pinned"),
    [
        ("cpu", "cuda", True),  # CPU batches bound for a GPU
        ("cuda:0", "cuda", False),  # the training set already on that GPU (was an error)
        ("cuda:0", "cuda:0", False),
        ("cpu", "cpu", False),
    ],
)
def test_only_cpu_batches_bound_for_a_gpu_are_pinned(data: str, device: str, pinned: bool) -> None:
    assert needs_pinning(torch.device(data), torch.device(device)) is pinned


def test_library_errors_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_table(tmp_path / "missing.csv", *CROP)
    with pytest.raises(DataError, match="is a folder"):
        read_table(tmp_path, *CROP)
    (tmp_path / "bin.csv").write_bytes(b"temp\n\xff\xfe\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read_table(tmp_path / "bin.csv", ["temp"], [])


# (file name, contents or None for a missing file, extra options, expected message parts)
BAD_DATA = {
    "missing file": ("absent.csv", None, [], ["absent.csv: no such file"]),
    "empty file": ("empty.csv", "", [], ["empty.csv: the file is empty"]),
    "missing column": (
        "nohum.csv",
        "temp,rainfall,apples,oranges\n1,2,3,4\n",
        [],
        ["nohum.csv, line 1: no column 'humidity'", "columns: temp, rainfall, apples, oranges"],
    ),
    "non-numeric cell": (
        "word.csv",
        HEADER + GOOD_ROW * 3 + "73,lots,43,56,70\n",
        [],
        ["word.csv, line 5, column 'rainfall': 'lots' is not a number"],
    ),
    "empty cell": (
        "hole.csv",
        HEADER + GOOD_ROW + "73,67,,56,70\n",
        [],
        ["hole.csv, line 3, column 'humidity': empty cell"],
    ),
    "nan cell": (
        "nan.csv",
        HEADER + GOOD_ROW * 2 + "73,67,43,NaN,70\n",
        [],
        ["nan.csv, line 4, column 'apples': 'NaN' is not a finite"],
    ),
    "inf cell": (
        "inf.csv",
        HEADER + GOOD_ROW + "73,67,43,56,-inf\n",
        [],
        ["inf.csv, line 3, column 'oranges': '-inf' is not a finite"],
    ),
    "float32 overflow": (
        "huge.csv",
        HEADER + "1e39,67,43,56,70\n",
        [],
        ["huge.csv, line 2, column 'temp': '1e39' is not a finite float32"],
    ),
    "ragged row": (
        "ragged.csv",
        HEADER + GOOD_ROW + "73,67,43\n",
        [],
        ["ragged.csv, line 3: 3 fields, but the header has 5"],
    ),
    "header only": ("header.csv", HEADER, [], ["header.csv: no data rows after the header"]),
    "too few rows": (
        "two.csv",
        HEADER + GOOD_ROW * 2,
        ["--val-fraction", "0.2"],
        ["two.csv: 2 data rows, but training needs at least 3", "1 for validation"],
    ),
    "one row, no validation": (
        "one.csv",
        HEADER + GOOD_ROW,
        ["--val-fraction", "0"],
        ["one.csv: 1 data row, but training needs at least 2"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_is_one_clear_error(case: str, tmp_path: Path) -> None:
    name, contents, options, expected = BAD_DATA[case]
    if contents is not None:
        (tmp_path / name).write_text(contents)
    out = tmp_path / "out"
    result = run_pomona("train", "--data", name, "--out", out, *options, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for part in expected:
        assert part in lines[0]
    assert result.stdout == ""
    assert not out.exists()


def test_parquet_jsonl_and_compressed_csv_read_like_the_csv(tmp_path: Path) -> None:
    pa = needs("pyarrow")
    pq = needs("pyarrow.parquet")
    bundled = read_table(None, *CROP)
    columns = [*CROP[0], *CROP[1]]
    values = np.hstack([bundled.features, bundled.targets])
    pq.write_table(pa.table(dict(zip(columns, values.T, strict=True))), tmp_path / "crop.parquet")
    lines = [json.dumps(dict(zip(columns, map(float, row), strict=True))) for row in values]
    (tmp_path / "crop.jsonl").write_text("\n".join(lines) + "\n")
    csv_text = ",".join(columns) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in values)
    (tmp_path / "crop.csv.gz").write_bytes(gzip.compress(csv_text.encode()))
    for name in ("crop.parquet", "crop.jsonl", "crop.csv.gz"):
        table = read_table(tmp_path / name, *CROP)
        np.testing.assert_array_equal(table.features, bundled.features)
        np.testing.assert_array_equal(table.targets, bundled.targets)


def test_train_on_parquet(tmp_path: Path) -> None:
    pa = needs("pyarrow")
    pq = needs("pyarrow.parquet")
    bundled = read_table(None, *CROP)
    columns = dict(zip(CROP[0], bundled.features.T, strict=True))
    columns.update(zip(CROP[1], bundled.targets.T, strict=True))
    pq.write_table(pa.table(columns), tmp_path / "crop.parquet")
    out = tmp_path / "out"
    result = run_pomona(
        "train", "--data", "crop.parquet", "--out", out, "--epochs", "2", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert (out / "checkpoint.pt").is_file()
