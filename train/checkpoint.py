"""The checkpoint: one plain dict, saved atomically, loadable with ``weights_only=True``.

Keys (format 1):

``format``           int, :data:`CHECKPOINT_FORMAT`
``model_state``      the model's ``state_dict`` (includes the standardization buffers)
``optimizer_state``  the SGD optimizer's ``state_dict``
``epoch``            number of completed epochs
``rng``              ``{"torch": ByteTensor, "cuda": [ByteTensor, ...]}`` after that epoch,
                     plus ``"sampler"``: the batch-order generator's state, for ``--resume``
``config``           the training configuration as plain values (see ``TrainConfig``)
``feature_names``    list of str, the model's input columns in order
``target_names``     list of str, the model's output columns in order
``hidden``           list of int, hidden layer sizes (empty for the linear model)
``normalization``    ``{"mean": [float], "std": [float]}`` from the training split
``history``          list of ``{"epoch": int, "train_loss": float, "val_loss": float | None}``
``metrics``          the final metrics dict (same as ``metrics.json``), or None before the end
``data_sha256``      sha256 of the training data file; ``--resume`` refuses other data
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pomona.runtime.errors import ArtifactError
from pomona.runtime.files import atomic_write
from pomona.train.model import build_model

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "model_from_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = 1

_REQUIRED = ("format", "model_state", "epoch", "feature_names", "target_names", "hidden")


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, then rename)."""
    state = {"format": CHECKPOINT_FORMAT, **state}
    with atomic_write(path, "wb") as handle:
        torch.save(state, handle)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate a checkpoint; raise :class:`ArtifactError` with a readable reason."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: no such checkpoint (train one with 'pomona train')")
    damaged = f"{p}: not a readable Pomona checkpoint (corrupt or truncated?)"
    # torch.save writes a zip archive: anything else (random bytes, an empty or truncated
    # file) is refused before the unpickler sees it.
    if not zipfile.is_zipfile(p):
        raise ArtifactError(damaged)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # the weights-only unpickler raises arbitrary types on bad bytes
        raise ArtifactError(f"{damaged}: {type(err).__name__}") from err
    if not isinstance(state, dict) or "format" not in state:
        raise ArtifactError(f"{p}: not a Pomona checkpoint (no 'format' key)")
    if state["format"] != CHECKPOINT_FORMAT:
        raise ArtifactError(
            f"{p}: checkpoint format {state['format']!r} is not supported "
            f"(this pomona reads format {CHECKPOINT_FORMAT}); retrain with this version"
        )
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise ArtifactError(f"{p}: checkpoint lacks {', '.join(missing)}")
    return state


def model_from_checkpoint(state: dict[str, Any]) -> nn.Sequential:
    """Rebuild the trained model (on CPU, in eval mode) from a loaded checkpoint."""
    model = build_model(len(state["feature_names"]), len(state["target_names"]), state["hidden"])
    try:
        model.load_state_dict(state["model_state"])
    except RuntimeError as err:
        raise ArtifactError(f"checkpoint weights do not fit the model it describes: {err}") from err
    return model.eval()
