"""The training rows an export is checked on, read through the runtime's data layer.

At most :data:`SAMPLE_ROWS` of them: a seeded sample, uniform over all rows of all
shards, drawn while the data stream past (memory and export time do not grow with the
data); a smaller data set is used whole.

When the checkpoint's training file is gone, the export is checked on random rows only,
as the report says. When the file is there but cannot be read (edited, truncated,
columns renamed since training), the export goes on the same way but first says why on
stderr, in the data layer's words: the artifacts do not depend on the training file,
and random rows spanning the training distribution still prove them equivalent, so a
changed data file should not block an export; but the user should learn that the check
did not use the rows they expect.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

import numpy as np

from pomona.runtime.data.shards import find_shards, shard_blocks
from pomona.runtime.errors import DataError

__all__ = ["SAMPLE_ROWS", "sample_rows", "training_features"]

#: Training rows an export is checked on, at most (plus the random rows).
SAMPLE_ROWS = 10_240
_SEED = 0

_log = logging.getLogger("pomona.export")


def sample_rows(
    blocks: Iterable[np.ndarray], size: int = SAMPLE_ROWS, seed: int = _SEED
) -> np.ndarray | None:
    """A uniform sample of ``size`` rows (all rows when there are fewer), in their order.

    Each row gets a seeded random key; the rows with the ``size`` smallest keys are kept
    as the blocks pass, so only ``size`` rows and one block are held at a time.
    """
    rng = np.random.default_rng(seed)
    kept: np.ndarray | None = None
    keys = np.empty(0)
    order = np.empty(0, dtype=np.int64)
    seen = 0
    for block in blocks:
        block_keys = rng.random(len(block))
        rows = block if kept is None else np.concatenate([kept, block])
        keys = np.concatenate([keys, block_keys])
        order = np.concatenate([order, np.arange(seen, seen + len(block))])
        seen += len(block)
        if len(keys) > size:
            best = np.argpartition(keys, size)[:size]
            rows, keys, order = rows[best], keys[best], order[best]
        kept = rows
    if kept is None:
        return None
    return kept[np.argsort(order, kind="stable")]


def training_features(state: Mapping[str, Any]) -> np.ndarray | None:
    """The feature columns of (a sample of) the checkpoint's training data, if they can
    still be read.

    The config names a data file, folder or glob, or none for the bundled crop data.
    Returns ``None``
    when the file is gone, or (after a warning naming the problem) cannot be read.
    """
    config = state.get("config") or {}
    names = list(state["feature_names"])
    data = config.get("data")
    if data is None:
        files = [str(resources.files("pomona.train").joinpath("data", "crop.csv"))]
    else:
        try:
            files = find_shards(str(data))
        except DataError:  # gone
            return None
    try:
        sample = sample_rows(block for _, block in shard_blocks(files, names))
        return None if sample is None else sample.astype(np.float64)
    except DataError as err:
        _log.warning("Warning: %s; checking the export on random rows only", err)
        return None
