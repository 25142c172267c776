"""Training-loop feeding: Pomona's DataLoader against a plain tensor-slicing loop.

Both loops run the same SGD steps of the linear crop model over 1M synthetic rows at
batch 1024; only the way batches are fetched differs. Reported as a ratio measured in
one run (best of five epochs each, interleaved), so a busy machine slows both alike.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from pomona.train.batches import BatchTensors, batch_loader
from pomona.train.loop import train_epoch
from pomona.train.model import build_model

ROWS = 1_000_000
BATCH = 1024
REPEATS = 5
LIMIT = 1.3


def _slices(
    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    order = torch.randperm(len(x), generator=generator)
    for start in range(0, len(x), BATCH):
        index = order[start : start + BATCH]
        yield x[index], y[index]


def main() -> None:
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
