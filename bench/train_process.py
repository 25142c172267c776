"""``pomona train`` as a whole process against a hand-written trainer, and Parquet vs CSV.

* 1M rows (3 features, 2 targets) as CSV, 3 epochs at batch 1024: ``pomona train``
  against :mod:`bench.train_reference` (pandas with the pyarrow engine, ``usecols``,
  float32, then tensor slicing with the same model and SGD settings). Wall time and peak
  RSS of each whole process, best of :data:`REPEATS` interleaved runs.
* The same rows as Parquet: ``pomona train`` must be faster than on the CSV.

Both sides train on every row (``--val-fraction 0``) with one torch thread
(``--threads 1``, ``torch.set_num_threads(1)``): on a shared machine, threads contending
for cores are the main noise source, and the same count on both sides keeps it fair.
Pomona's run does more than the reference (checks every cell, writes the checkpoint,
metrics, history and loss curve): the ratio includes that.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bench.predict import _child
from bench.train_reference import FEATURES, TARGETS

ROWS = 1_000_000
EPOCHS = 3
BATCH = 1024
REPEATS = 2
TIME_LIMIT = 1.2
RSS_MARGIN_MIB = 50.0
CACHE = Path(__file__).resolve().parent / "out" / "train"
POMONA = [sys.executable, "-m", "pomona.runtime.cli", "train"]


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


def main() -> None:
    parquet, csv = write_data(CACHE / "1m", ROWS)
    common = ["--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--val-fraction", "0",
              "--threads", "1", "--device", "cpu", "--checkpoint-every", "1000"]  # fmt: skip
    runs = {
        "pomona train (CSV)": pomona_train(csv, CACHE / "o-csv", *common),
        "pomona train (Parquet)": pomona_train(parquet, CACHE / "o-parquet", *common),
        "pandas + tensor slicing (CSV)": [
            sys.executable,
            "-m",
            "bench.train_reference",
            str(csv),
            str(CACHE / "ref.pt"),
            str(EPOCHS),
            str(BATCH),
            "1",
        ],
    }
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    rss: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(REPEATS):
        for name, command in runs.items():
            wall, peak = _child(command)
            seconds[name].append(wall)
            rss[name].append(peak)
    print(f"{ROWS:,} rows, {EPOCHS} epochs, batch {BATCH}, 1 torch thread, whole process "
          f"(best of {REPEATS}, interleaved; peak RSS the highest):")  # fmt: skip
    for name in runs:
        print(f"  {name:<34}{min(seconds[name]):7.2f} s   peak RSS {max(rss[name]):6.0f} MiB")
    ours, theirs = min(seconds["pomona train (CSV)"]), min(seconds["pandas + tensor slicing (CSV)"])
    ratio = ours / theirs
    extra = max(rss["pomona train (CSV)"]) - max(rss["pandas + tensor slicing (CSV)"])
    print(f"  time ratio CSV / reference {ratio:.2f} (limit {TIME_LIMIT}): "
          f"{'met' if ratio <= TIME_LIMIT else 'NOT MET'}")  # fmt: skip
    print(f"  peak RSS CSV - reference {extra:+.0f} MiB (limit +{RSS_MARGIN_MIB:.0f}): "
          f"{'met' if extra <= RSS_MARGIN_MIB else 'NOT MET'}")  # fmt: skip
    pq_ratio = min(seconds["pomona train (Parquet)"]) / ours
    print(f"  whole process Parquet / CSV {pq_ratio:.2f} (must be below 1): "
          f"{'met' if pq_ratio < 1 else 'NOT MET'}")  # fmt: skip
    _reading(csv, parquet)


def _reading(csv: Path, parquet: Path) -> None:
    """The part of the run that differs: reading and checking the data (best of 3)."""
    import time

    from pomona.train.dataset import read_table

    best = {}
    for path in (csv, parquet):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            read_table(path, FEATURES, TARGETS)
            times.append(time.perf_counter() - start)
        best[path.suffix] = min(times)
    ratio = best[".parquet"] / best[".csv"]
    verdict = "met" if ratio < 1 else "NOT MET"
    print(f"  reading the data in-process: CSV {best['.csv']:.2f} s, Parquet "
          f"{best['.parquet']:.2f} s, ratio {ratio:.2f}: {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
