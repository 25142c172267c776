"""Training on data larger than memory: ``pomona train --stream`` over Parquet shards.

* 50M rows in 10 Parquet shards (``POMONA_BENCH_SCALE_ROWS`` sets the count) against
  1M rows in 10 shards, both streamed: the peak RSS of the large run must stay within
  :data:`RSS_LIMIT` times the small one's (memory does not grow with the data).
* The large run's final training MSE against an in-memory run on the same shards:
  within :data:`MSE_TOLERANCE`.

One epoch at batch 4096 on every row (``--val-fraction 0``), one torch thread. The data
are generated once into ``bench/out/train/`` and reused (about 1.1 GB at 50M rows).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.predict import _child
from bench.train_process import CACHE, pomona_train, write_data

ROWS = int(os.environ.get("POMONA_BENCH_SCALE_ROWS", "50000000"))
SMALL_ROWS = 1_000_000
SHARDS = 10
RSS_LIMIT = 1.2
MSE_TOLERANCE = 0.01
OPTIONS = ["--epochs", "1", "--batch-size", "4096", "--val-fraction", "0", "--threads", "1",
           "--device", "cpu", "--checkpoint-every", "1000"]  # fmt: skip


def _run(data: Path, name: str, *options: str) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MiB) and final training MSE of one ``pomona train``."""
    out = CACHE / name
    wall, rss = _child(pomona_train(data, out, *OPTIONS, *options))
    metrics = json.loads((out / "metrics.json").read_text())
    return wall, rss, float(metrics["train"]["mse"])


def main() -> None:
    small = write_data(CACHE / f"{SMALL_ROWS}-rows", SMALL_ROWS, SHARDS)[0].parent
    large = write_data(CACHE / f"{ROWS}-rows", ROWS, SHARDS)[0].parent
    runs = {
        f"--stream, {SMALL_ROWS:,} rows": _run(small, "scale-small", "--stream"),
        f"--stream, {ROWS:,} rows": _run(large, "scale-large", "--stream"),
        f"in memory, {ROWS:,} rows": _run(large, "scale-memory"),
    }
    print(f"Parquet in {SHARDS} shards, 1 epoch, batch 4096, 1 torch thread, whole process:")
    for name, (wall, rss, mse) in runs.items():
        print(f"  {name:<30}{wall:8.1f} s   peak RSS {rss:6.0f} MiB   train MSE {mse:.5f}")
    (_, small_rss, _), (_, large_rss, streamed), (_, _, in_memory) = runs.values()
    ratio = large_rss / small_rss
    print(f"  peak RSS {ROWS:,} / {SMALL_ROWS:,} rows streamed {ratio:.2f} (limit {RSS_LIMIT}): "
          f"{'met' if ratio <= RSS_LIMIT else 'NOT MET'}")  # fmt: skip
    gap = abs(streamed / in_memory - 1)
    print(f"  train MSE streamed vs in memory: {gap:.2%} apart (limit {MSE_TOLERANCE:.0%}): "
          f"{'met' if gap <= MSE_TOLERANCE else 'NOT MET'}")  # fmt: skip


if __name__ == "__main__":
    main()
