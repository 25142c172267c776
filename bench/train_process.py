"""``pomona train`` as a whole process against a hand-written trainer, and Parquet vs CSV.

* 1M rows (3 features, 2 targets) as CSV, 3 epochs at batch 1024: ``pomona train``
  against :mod:`bench.train_reference` (pandas with the pyarrow engine, ``usecols``,
  float32, then tensor slicing with the same model and SGD settings). Wall time and peak
  RSS of each whole process.
* The same rows as Parquet: ``pomona train`` must be faster than on the CSV.

The three runs take turns: :data:`REPEATS` rounds, each running all three one after
another, the first of them changing from round to round. A round's ratios compare runs
seconds apart, so a load that comes and goes on a shared machine hits both sides of a
ratio alike; the verdicts are the medians of those per-round ratios, printed with their
lowest and highest values, and each run's median, lowest and highest time.

Both sides train on every row (``--val-fraction 0``) with one torch thread
(``--threads 1``, ``torch.set_num_threads(1)``): on a shared machine, threads contending
for cores are the main noise source, and the same count on both sides keeps it fair.
Pomona's run does more than the reference (checks every cell, writes the checkpoint,
metrics, history and loss curve): the ratio includes that.
``POMONA_BENCH_TRAIN_REPEATS`` sets the number of rounds.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.predict import _child
from bench.train_reference import FEATURES, TARGETS

ROWS = 1_000_000
EPOCHS = 3
BATCH = 1024
REPEATS = int(os.environ.get("POMONA_BENCH_TRAIN_REPEATS", "5"))
TIME_LIMIT = 1.2
RSS_MARGIN_MIB = 50.0
CACHE = Path(__file__).resolve().parent / "out" / "train"
POMONA = [sys.executable, "-m", "pomona.runtime.cli", "train"]
REFERENCE = [sys.executable, "-m", "bench.train_reference"]


def write_data(folder: Path, rows: int, shards: int = 1, seed: int = 0) -> list[Path]:
    """``rows`` synthetic rows as ``shards`` Parquet files (and one CSV when unsharded),
    written once into ``folder``; a noisy linear relation, so the optimum MSE is 1."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    names = [*FEATURES, *TARGETS]
    paths = [folder / f"part-{i:03d}.parquet" for i in range(shards)]
    if shards == 1:
        paths = [folder / "train.parquet", folder / "train.csv"]
    if all(p.exists() for p in paths):
        return paths
    rng = np.random.default_rng(seed)
    weights = np.array([[0.5, -0.2], [0.1, 0.3], [-0.4, 0.2]])
    for i, count in enumerate(np.diff(np.linspace(0, rows, shards + 1).astype(np.int64))):
        x = rng.uniform(0, 200, (count, len(FEATURES)))
        y = x @ weights + rng.normal(0, 1, (count, len(TARGETS)))
        values = np.hstack([x, y]).astype(np.float32)
        table = pa.table(dict(zip(names, values.T, strict=True)))
        pq.write_table(table, paths[i].with_suffix(".tmp"))
        paths[i].with_suffix(".tmp").rename(paths[i])
        if shards == 1:
            pacsv.write_csv(table, paths[1].with_suffix(".tmp"))
            paths[1].with_suffix(".tmp").rename(paths[1])
    return paths


def pomona_train(data: Path | str, out: Path, *options: str) -> list[str]:
    return [*POMONA, "--data", str(data), "--out", str(out), *options]


def _spread(values: Sequence[float]) -> str:
    return f"median {statistics.median(values):6.2f} (range {min(values):.2f} to {max(values):.2f})"


def _rounds(runs: dict[str, list[str]]) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Each run's wall seconds per round, and its highest peak RSS (MiB)."""
    names = list(runs)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    rss = dict.fromkeys(names, 0.0)
    for turn in range(REPEATS):
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            wall, peak = _child(runs[name])
            seconds[name].append(wall)
            rss[name] = max(rss[name], peak)
    return seconds, rss


def _ratios(seconds: dict[str, list[float]], ours: str, theirs: str) -> list[float]:
    return [a / b for a, b in zip(seconds[ours], seconds[theirs], strict=True)]


def main() -> None:
    parquet, csv = write_data(CACHE / "1m", ROWS)
    common = ["--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--val-fraction", "0",
              "--threads", "1", "--device", "cpu", "--checkpoint-every", "1000"]  # fmt: skip
    csv_run, parquet_run = "pomona train (CSV)", "pomona train (Parquet)"
    reference = "pandas + tensor slicing (CSV)"
    runs = {
        csv_run: pomona_train(csv, CACHE / "o-csv", *common),
        parquet_run: pomona_train(parquet, CACHE / "o-parquet", *common),
        reference: [*REFERENCE, str(csv), str(CACHE / "ref.pt"), str(EPOCHS), str(BATCH), "1"],
    }
    load = os.getloadavg()[0]
    seconds, rss = _rounds(runs)
    print(f"{ROWS:,} rows, {EPOCHS} epochs, batch {BATCH}, 1 torch thread, whole process, "
          f"{REPEATS} interleaved rounds (load average {load:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after); seconds, peak RSS the highest:")  # fmt: skip
    for name in runs:
        print(f"  {name:<31}{_spread(seconds[name])} s   peak RSS {rss[name]:4.0f} MiB")
    ratio = _ratios(seconds, csv_run, reference)
    extra = rss[csv_run] - rss[reference]
    print(f"  time CSV / reference, per round: {_spread(ratio)} (limit {TIME_LIMIT}): "
          f"{'met' if statistics.median(ratio) <= TIME_LIMIT else 'NOT MET'}")  # fmt: skip
    print(f"  peak RSS CSV - reference {extra:+.0f} MiB (limit +{RSS_MARGIN_MIB:.0f}): "
          f"{'met' if extra <= RSS_MARGIN_MIB else 'NOT MET'}")  # fmt: skip
    pq_ratio = _ratios(seconds, parquet_run, csv_run)
    print(f"  time Parquet / CSV, per round: {_spread(pq_ratio)} (must be below 1): "
          f"{'met' if statistics.median(pq_ratio) < 1 else 'NOT MET'}")  # fmt: skip
    _reading(csv, parquet)


def _reading(csv: Path, parquet: Path) -> None:
    """The part of the run that differs: reading and checking the data (median of 5,
    interleaved)."""
    import time

    from pomona.train.dataset import read_table

    times: dict[str, list[float]] = {csv.suffix: [], parquet.suffix: []}
    for _ in range(5):
        for path in (csv, parquet):
            start = time.perf_counter()
            read_table(path, FEATURES, TARGETS)
            times[path.suffix].append(time.perf_counter() - start)
    best = {suffix: statistics.median(values) for suffix, values in times.items()}
    ratio = best[".parquet"] / best[".csv"]
    verdict = "met" if ratio < 1 else "NOT MET"
    print(f"  reading the data in-process (median of 5): CSV {best['.csv']:.2f} s, Parquet "
          f"{best['.parquet']:.2f} s, ratio {ratio:.2f}: {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
