"""Training data larger than memory: statistics in one pass, then shuffled batches per epoch.

Nothing here holds the data set: every pass reads the shards block by block
(:func:`pomona.runtime.data.shards.shard_blocks`). Needs numpy, not torch.

* :class:`Moments`: count, means, co-moments, minimum and maximum of the columns, merged
  block by block with Chan et al.'s parallel update (numerically stable, float64).
* :func:`validation_mask`: whether a row is held out, from a seeded hash of its global
  row number, so the split is the same in every run and whatever the block boundaries.
* :func:`scan`: the one pass over the data before training.
* :func:`epoch_rows`: one epoch's training rows: shards in a seeded order, each block's
  rows through a seeded shuffle buffer, cut into batches.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from pomona.runtime.data.shards import available_memory, estimate_rows, shard_blocks
from pomona.train.dataset import locate

__all__ = [
    "DEFAULT_SHUFFLE_BUFFER",
    "MEMORY_SHARE",
    "Moments",
    "Scan",
    "epoch_rows",
    "needs_streaming",
    "scan",
    "selected_blocks",
    "shuffled_batches",
    "validation_mask",
]

#: Rows held in the shuffle buffer unless ``--shuffle-buffer`` says otherwise.
DEFAULT_SHUFFLE_BUFFER = 65536
_MASK64 = (1 << 64) - 1
#: The in-memory run peaks at about ten times the float32 values (read and concatenated,
#: split, float64 statistics and the least-squares reference; 8.9 GiB for 50M x 5 columns
#: in ``make bench``); it is chosen only when that fits in this share of the available memory.
MEMORY_SHARE = 0.5
_COPIES = 10


def needs_streaming(
    path: str | os.PathLike[str] | None, columns: int, processes: int = 1
) -> str | None:
    """Why the data would not fit in memory (a sentence for the output), or None.

    ``processes`` hold the data each (the ranks on one machine under torchrun).
    """
    if path is None:
        return None
    _, files = locate(path)
    rows = estimate_rows(files)
    need = rows * columns * 4 * _COPIES * processes
    free = available_memory()
    if free is None or need <= MEMORY_SHARE * free:
        return None
    return (
        f"about {rows:,} rows x {columns} columns would need ~{need / 2**30:.1f} GiB, "
        f"{free / 2**30:.1f} GiB is available: streaming from disk (--stream)"
    )


class Moments:
    """Running count, mean, co-moment matrix (sum of outer products of deviations from the
    mean), minimum and maximum of ``k`` columns, in float64.

    Blocks are merged with the pairwise update of Chan, Golub and LeVeque, which stays
    accurate where a running sum of squares would cancel (large means, small spreads).
    """

    def __init__(self, k: int) -> None:
        self.n = 0
        self.mean = np.zeros(k)
        self.comoment = np.zeros((k, k))
        self.low = np.full(k, np.inf)
        self.high = np.full(k, -np.inf)

    def add(self, block: np.ndarray) -> None:
        """Merge the rows of ``block`` ``[rows, k]``."""
        if not len(block):
            return
        x = np.asarray(block, dtype=np.float64)
        n_b = len(x)
        mean_b = x.mean(axis=0)
        deviation = x - mean_b
        n = self.n + n_b
        delta = mean_b - self.mean
        self.comoment += deviation.T @ deviation + np.outer(delta, delta) * (self.n * n_b / n)
        self.mean += delta * (n_b / n)
        self.n = n
        self.low = np.minimum(self.low, x.min(axis=0))
        self.high = np.maximum(self.high, x.max(axis=0))

    @property
    def variance(self) -> np.ndarray:
        """Population variance per column."""
        return np.diag(self.comoment) / max(self.n, 1)

    def std(self) -> np.ndarray:
        """Population standard deviation per column; a constant column gets 1 (left unscaled)."""
        std = np.sqrt(self.variance)
        return np.where(std > 0, std, 1.0)

    def constant(self) -> np.ndarray:
        """Whether each column held one value on every row."""
        return np.asarray(self.low == self.high)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer on uint64 arrays (wrapping arithmetic)."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def validation_mask(first: int, count: int, fraction: float, seed: int) -> np.ndarray:
    """Whether each of the rows ``first .. first + count - 1`` (0-based, over all shards)
    is held out for validation: a seeded hash of the row number, uniform in [0, 1),
    below ``fraction``."""
    if fraction <= 0:
        return np.zeros(count, dtype=bool)
    key = _splitmix64(np.array([seed & _MASK64], dtype=np.uint64))
    rows = np.arange(first, first + count, dtype=np.uint64)
    unit = (_splitmix64(rows ^ key) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return unit < fraction


@dataclass
class Scan:
    """What the pass before training learned: rows per shard and the training rows' moments
    (features, then targets)."""

    shard_rows: list[int]
    moments: Moments
    validation_rows: int
    offsets: list[int] = field(init=False)  # global number of each shard's first row

    def __post_init__(self) -> None:
        self.offsets = [0, *np.cumsum(self.shard_rows)[:-1].tolist()]

    @property
    def rows(self) -> int:
        return int(sum(self.shard_rows))

    @property
    def training_rows(self) -> int:
        return self.moments.n


def scan(files: Sequence[str], columns: Sequence[str], fraction: float, seed: int) -> Scan:
    """One pass over every shard: row counts and the moments of the training rows."""
    shard_rows = [0] * len(files)
    moments = Moments(len(columns))
    held_out = 0
    row = 0
    for shard, block in shard_blocks(files, columns):
        held = validation_mask(row, len(block), fraction, seed)
        moments.add(block[~held])
        held_out += int(held.sum())
        shard_rows[shard] += len(block)
        row += len(block)
    return Scan(shard_rows, moments, held_out)


def selected_blocks(
    files: Sequence[str],
    columns: Sequence[str],
    found: Scan,
    fraction: float,
    seed: int,
    *,
    validation: bool,
    order: Sequence[int] | None = None,
) -> Iterator[np.ndarray]:
    """The training rows (or, with ``validation``, the held-out rows) of each block, reading
    the shards in ``order`` (default: as given)."""
    order = list(range(len(files))) if order is None else list(order)
    chosen = [files[i] for i in order]
    row = {shard: found.offsets[i] for shard, i in enumerate(order)}
    for shard, block in shard_blocks(chosen, columns):
        held = validation_mask(row[shard], len(block), fraction, seed)
        row[shard] += len(block)
        rows = block[held] if validation else block[~held]
        if len(rows):
            yield rows


def shuffled_batches(
    blocks: Iterator[np.ndarray], batch_size: int, buffer_rows: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Batches of ``batch_size`` rows (the last may be smaller) through a shuffle buffer.

    Each block joins a pool of the ``buffer_rows`` rows held back so far; the pool is
    shuffled and all but ``buffer_rows`` of its rows go out. At the end the pool is
    shuffled and emptied. Every row comes out exactly once.
    """
    pool = np.empty((0, 0), dtype=np.float32)
    pending: np.ndarray | None = None  # fewer than batch_size rows waiting for a batch
    for block in blocks:
        pool = block if not pool.size else np.concatenate([pool, block])
        if len(pool) <= buffer_rows:
            continue
        order = rng.permutation(len(pool))
        cut = len(pool) - buffer_rows
        out, pool = pool[order[:cut]], pool[order[cut:]]
        pending = yield from _batches(out, pending, batch_size)
    if pool.size:
        pending = yield from _batches(pool[rng.permutation(len(pool))], pending, batch_size)
    if pending is not None and len(pending):
        yield pending


def _batches(
    rows: np.ndarray, pending: np.ndarray | None, batch_size: int
) -> Generator[np.ndarray, None, np.ndarray]:
    """Yield whole batches of ``pending`` then ``rows``; returns the rows left over."""
    if pending is not None and len(pending):
        rows = np.concatenate([pending, rows])
    whole = len(rows) - len(rows) % batch_size
    for start in range(0, whole, batch_size):
        yield rows[start : start + batch_size]
    return rows[whole:]


def epoch_rows(
    files: Sequence[str],
    columns: Sequence[str],
    found: Scan,
    *,
    fraction: float,
    seed: int,
    epoch: int,
    batch_size: int,
    buffer_rows: int,
) -> Iterator[np.ndarray]:
    """Epoch ``epoch``'s training batches ``[rows, len(columns)]``, the same on every run:
    shard order and shuffle depend only on ``seed`` and ``epoch``."""
    rng = np.random.default_rng([seed & _MASK64, epoch])
    order = rng.permutation(len(files)).tolist()
    blocks = selected_blocks(files, columns, found, fraction, seed, validation=False, order=order)
    return shuffled_batches(blocks, batch_size, buffer_rows, rng)
