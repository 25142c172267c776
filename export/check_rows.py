"""The training rows an export is checked on, read through the runtime's data layer.

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
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from pomona.runtime.data import read_numbers
from pomona.runtime.errors import DataError

__all__ = ["training_features"]

_log = logging.getLogger("pomona.export")


def training_features(state: Mapping[str, Any]) -> np.ndarray | None:
    """The feature columns of the checkpoint's training data, if they can still be read.

    The config names a data file, or none for the bundled crop data. Returns ``None``
    when the file is gone, or (after a warning naming the problem) cannot be read.
    """
    config = state.get("config") or {}
    names = list(state["feature_names"])
    data = config.get("data")
    if data is None:
        path: Any = Path(str(resources.files("pomona.train").joinpath("data", "crop.csv")))
    else:
        path = str(data)
        if not Path(path).is_file():
            return None
    try:
        return read_numbers(path, names).astype(np.float64)
    except DataError as err:
        _log.warning("Warning: %s; checking the export on random rows only", err)
        return None
