"""Training-data speed: reading the training file, and feeding the training loop.

* ``read_table`` (the data layer, every cell checked) on a 1M-row CSV against
  ``pandas.read_csv`` of the same columns, best of three interleaved reads.
* Pomona's DataLoader against a plain tensor-slicing loop: both run the same SGD steps
  of the linear crop model over 1M synthetic rows at batch 1024; only the way batches
  are fetched differs (best of five epochs each, interleaved).

Both are ratios measured in one run, so a busy machine slows both sides alike.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pomona.train.batches import BatchTensors, batch_loader
from pomona.train.dataset import read_table
from pomona.train.loop import train_epoch
from pomona.train.model import build_model

ROWS = 1_000_000
BATCH = 1024
REPEATS = 5
LIMIT = 1.3
READ_LIMIT = 2.0  # every cell is checked (float32 range, finiteness), and both paths agree
COLUMNS = ["temp", "rainfall", "humidity", "apples", "oranges"]


def _slices(
    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    order = torch.randperm(len(x), generator=generator)
    for start in range(0, len(x), BATCH):
        index = order[start : start + BATCH]
        yield x[index], y[index]


def _read_ratio() -> None:
    import pandas as pd

    values = np.random.default_rng(0).uniform(0, 200, (ROWS, len(COLUMNS))).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="pomona-bench-") as tmp:
        path = Path(tmp) / "train.csv"
        pd.DataFrame(values, columns=COLUMNS).to_csv(path, index=False, float_format="%.6g")
        timings: dict[str, list[float]] = {"read_table": [], "pandas": []}
        for _ in range(3):
            start = time.perf_counter()
            table = read_table(path, COLUMNS[:3], COLUMNS[3:])
            timings["read_table"].append(time.perf_counter() - start)
            start = time.perf_counter()
            frame = pd.read_csv(path, usecols=COLUMNS)
            frame[COLUMNS].to_numpy(np.float32)
            timings["pandas"].append(time.perf_counter() - start)
        size = path.stat().st_size / 1e6
    assert len(table) == ROWS
    ours, theirs = min(timings["read_table"]), min(timings["pandas"])
    ratio = ours / theirs
    print(f"{ROWS:,}-row training CSV ({size:.0f} MB), 5 columns (best of 3):")
    print(f"  {'read_table (every cell checked)':<46}{ours:.3f} s")
    print(f"  {'pandas.read_csv + to_numpy':<46}{theirs:.3f} s")
    verdict = "ok" if ratio <= READ_LIMIT else "TOO SLOW"
    print(f"  ratio {ratio:.2f} (limit {READ_LIMIT}): {verdict}")


def main() -> None:
    _read_ratio()
    # One intra-op thread: on a shared machine, thread contention is the main noise source.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(ROWS, 3)
    y = x @ torch.randn(3, 2) + 0.1 * torch.randn(ROWS, 2)
    model = build_model(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    loader = batch_loader(BatchTensors(x, y), BATCH, generator)
    timings: dict[str, list[float]] = {"dataloader": [], "slicing": []}
    train_epoch(model, loader, optimizer)  # warm-up
    for _ in range(REPEATS):
        for name in timings:
            batches = loader if name == "dataloader" else _slices(x, y, generator)
            start = time.perf_counter()
            train_epoch(model, batches, optimizer)
            timings[name].append(time.perf_counter() - start)
    loader_s, slicing_s = min(timings["dataloader"]), min(timings["slicing"])
    ratio = loader_s / slicing_s
    print(
        f"{ROWS:,} rows x 3 features, batch {BATCH}, one SGD epoch, 1 thread (best of {REPEATS}):"
    )
    print(f"  {'DataLoader (ShuffledBatches, whole batches)':<46}{loader_s:.3f} s")
    print(f"  {'tensor slicing (randperm + index)':<46}{slicing_s:.3f} s")
    verdict = "ok" if ratio <= LIMIT else "TOO SLOW"
    print(f"  ratio {ratio:.2f} (limit {LIMIT}): {verdict}")


if __name__ == "__main__":
    main()
