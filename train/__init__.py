"""pomona.train: read tabular data, train the standardized linear model or MLP, checkpoint it.

Names that need torch load on first use, so reading and checking data stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from pomona.train.config import TrainConfig
from pomona.train.dataset import Table, read_table, split_indices

__all__ = [
    "Table",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "load_checkpoint",
    "model_from_checkpoint",
    "read_table",
    "save_checkpoint",
    "split_indices",
    "train",
]

_LAZY = {
    "TrainResult": "pomona.train.loop",
    "train": "pomona.train.loop",
    "build_model": "pomona.train.model",
    "load_checkpoint": "pomona.train.checkpoint",
    "model_from_checkpoint": "pomona.train.checkpoint",
    "save_checkpoint": "pomona.train.checkpoint",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
