"""Streaming pieces on their own: running moments, the hashed split, the shuffle buffer,
shard discovery, streamed metrics and least squares against numpy."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pomona.export.check_rows import sample_rows
from pomona.runtime.data.shards import estimate_rows, find_shards, shards_sha256
from pomona.runtime.errors import DataError
from pomona.train.metrics import MetricSums, least_squares_mse_of, regression_metrics
from pomona.train.stream import Moments, shuffled_batches, validation_mask

finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    values=hnp.arrays(
        np.float32, st.tuples(st.integers(1, 300), st.integers(1, 4)), elements=finite
    ),
    cuts=st.lists(st.integers(0, 300), max_size=6),
    offset=st.sampled_from([0.0, 1e4, 1e7]),
)
def test_streamed_moments_equal_numpy_on_the_whole_array(
    values: np.ndarray, cuts: list[int], offset: float
) -> None:
    x = values.astype(np.float64) + offset
    moments = Moments(x.shape[1])
    bounds = [0, *sorted(c % (len(x) + 1) for c in cuts), len(x)]
    for start, stop in itertools.pairwise(bounds):
        moments.add(x[start:stop])
    centred = x - x.mean(axis=0)
    scale = max(1.0, float(np.abs(centred).max()) ** 2) * len(x)
    assert moments.n == len(x)
    np.testing.assert_allclose(moments.mean, x.mean(axis=0), rtol=1e-12, atol=1e-9 * max(1, offset))
    np.testing.assert_allclose(moments.comoment, centred.T @ centred, rtol=1e-9, atol=1e-9 * scale)
    np.testing.assert_allclose(moments.variance, x.var(axis=0), rtol=1e-9, atol=1e-9 * scale)
    assert (moments.low == x.min(axis=0)).all() and (moments.high == x.max(axis=0)).all()


def test_a_constant_column_has_no_spread_and_std_one() -> None:
    moments = Moments(2)
    for part in np.split(np.array([[3.0, 1e8 + 1], [3.0, 1e8 + 3]] * 50), 10):
        moments.add(part)
    assert moments.constant().tolist() == [True, False]
    assert moments.std()[0] == 1.0 and moments.variance[0] == 0.0
    assert moments.std()[1] == pytest.approx(1.0, rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 5000), cut=st.integers(0, 5000), fraction=st.floats(0.01, 0.9),
    seed=st.integers(-(2**63), 2**64 - 1),
)  # fmt: skip
def test_the_hashed_split_does_not_depend_on_block_boundaries(
    rows: int, cut: int, fraction: float, seed: int
) -> None:
    cut %= rows + 1
    whole = validation_mask(0, rows, fraction, seed)
    parts = np.concatenate([validation_mask(0, cut, fraction, seed),
                            validation_mask(cut, rows - cut, fraction, seed)])  # fmt: skip
    assert np.array_equal(whole, parts)


def test_the_hashed_split_holds_out_the_fraction_and_follows_the_seed() -> None:
    mask = validation_mask(0, 100_000, 0.2, 0)
    assert 0.19 < mask.mean() < 0.21
    assert not np.array_equal(mask, validation_mask(0, 100_000, 0.2, 1))
    assert not validation_mask(0, 1000, 0.0, 0).any()


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 90), min_size=1, max_size=8),
    batch=st.integers(1, 40), buffer=st.integers(0, 120), seed=st.integers(0, 99),
)  # fmt: skip
def test_the_shuffle_buffer_yields_every_row_once_in_batches(
    sizes: list[int], batch: int, buffer: int, seed: int
) -> None:
    total = sum(sizes)
    rows = np.arange(total, dtype=np.float32).reshape(-1, 1)
    blocks = np.split(rows, np.cumsum(sizes)[:-1])

    def run() -> list[np.ndarray]:
        return list(shuffled_batches(iter(blocks), batch, buffer, np.random.default_rng(seed)))

    out = run()
    assert all(len(b) == batch for b in out[:-1]) and (not out or 0 < len(out[-1]) <= batch)
    seen = np.concatenate(out).ravel() if out else np.empty(0)
    assert sorted(seen.tolist()) == rows.ravel().tolist()
    assert all(np.array_equal(a, b) for a, b in zip(out, run(), strict=True))


def test_the_shuffle_buffer_mixes_rows_within_its_reach() -> None:
    rows = np.arange(10_000, dtype=np.float32).reshape(-1, 1)
    blocks = iter(np.split(rows, 100))
    first = next(shuffled_batches(blocks, 100, 1000, np.random.default_rng(0))).ravel()
    assert not np.array_equal(first, np.arange(100))  # shuffled
    assert first.max() < 1100  # but only among the rows the buffer held


def test_streamed_metrics_equal_the_whole_array() -> None:
    rng = np.random.default_rng(1)
    pred, true = (
        torch.from_numpy(rng.normal(size=(1000, 2))),
        torch.from_numpy(rng.normal(5, 2, size=(1000, 2))),
    )
    sums = MetricSums(2)
    for start in range(0, 1000, 77):
        sums.add(pred[start : start + 77], true[start : start + 77])
    streamed, whole = sums.result(["a", "b"]), regression_metrics(pred, true, ["a", "b"])
    err = (pred - true).numpy()
    ss_tot = ((true.numpy() - true.numpy().mean(axis=0)) ** 2).sum(axis=0)
    assert streamed["mse"] == pytest.approx(float((err**2).mean()), rel=1e-12)
    assert streamed["mae"] == pytest.approx(float(np.abs(err).mean()), rel=1e-12)
    r2 = 1 - (err**2).sum(axis=0) / ss_tot
    assert streamed["r2"] == pytest.approx(float(r2.mean()), rel=1e-10)
    assert streamed["targets"]["b"]["r2"] == pytest.approx(float(r2[1]), rel=1e-10)
    assert streamed["rows"] == whole["rows"] == 1000
    assert streamed["mse"] == pytest.approx(whole["mse"], rel=1e-12)


def test_least_squares_from_moments_equals_lstsq_with_an_intercept() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal([50, -3, 1e3], [5, 1, 40], size=(500, 3))
    y = x @ rng.normal(size=(3, 2)) + 300.0 + rng.normal(0, 0.5, (500, 2))
    design = np.hstack([x, np.ones((500, 1))])
    residual = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    moments = Moments(5)
    for part in np.array_split(np.hstack([x, y]), 7):
        moments.add(part)
    ours = least_squares_mse_of(moments.comoment, moments.n, 3)
    assert ours == pytest.approx(float((residual**2).mean()), rel=1e-8)
    # Without the intercept the optimum is far worse: the reference would notice.
    no_intercept = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
    assert float((no_intercept**2).mean()) > 1.5 * ours


def test_shards_are_found_in_a_folder_and_by_glob(tmp_path: Path) -> None:
    for name in ("b.csv", "a.csv", "c.parquet", "notes.md", ".hidden.csv", "_SUCCESS"):
        (tmp_path / name).write_text("x\n1\n")
    assert find_shards(tmp_path) == [str(tmp_path / n) for n in ("a.csv", "b.csv", "c.parquet")]
    assert find_shards(str(tmp_path / "*.csv")) == [
        str(tmp_path / "a.csv"),
        str(tmp_path / "b.csv"),
    ]
    assert find_shards(tmp_path / "a.csv") == [str(tmp_path / "a.csv")]
    with pytest.raises(DataError, match=r"no files match"):
        find_shards(str(tmp_path / "*.jsonl"))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match=r"nothing: is a folder with no data files"):
        find_shards(tmp_path / "nothing")
    with pytest.raises(DataError, match=r"absent\.csv: no such file"):
        find_shards(tmp_path / "absent.csv")


def test_the_checksum_covers_every_shard(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("x\n1\n")
    b.write_text("x\n2\n")
    both = shards_sha256([str(a), str(b)])
    assert shards_sha256([str(a)]) != both
    b.write_text("x\n3\n")
    assert shards_sha256([str(a), str(b)]) != both


def test_rows_are_estimated_for_the_memory_check(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("x,y\n" + "1.5,2.5\n" * 10_000)
    assert 9_000 < estimate_rows([str(path)]) < 11_000


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(0, 50), min_size=1, max_size=6), size=st.integers(1, 120))
def test_the_export_sample_is_a_seeded_subset_in_row_order(sizes: list[int], size: int) -> None:
    rows = np.arange(sum(sizes), dtype=np.float64).reshape(-1, 1)
    blocks = np.split(rows, np.cumsum(sizes)[:-1])
    sample = sample_rows(iter(blocks), size)
    if not len(rows):
        assert sample is None or not len(sample)
        return
    assert sample is not None
    values = sample.ravel().tolist()
    assert len(values) == min(size, len(rows)) and values == sorted(set(values))
    again = sample_rows(iter(np.split(rows, [len(rows) // 2])), size)
    assert again is not None and len(again) == len(sample)
