"""The training configuration: every setting of a run, with its default, in one place."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_FEATURES",
    "DEFAULT_TARGETS",
    "RESUME_KEYS",
    "TrainConfig",
    "default_lr",
]

DEFAULT_FEATURES = ("temp", "rainfall", "humidity")
DEFAULT_TARGETS = ("apples", "oranges")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. Saved in the checkpoint as plain values."""

    # CSV file with a header line; None trains on the bundled crop data (15 rows).
    data: str | None = None
    # Input columns, in the order the model takes them.
    features: tuple[str, ...] = DEFAULT_FEATURES
    # Output columns, in the order the model returns them.
    targets: tuple[str, ...] = DEFAULT_TARGETS
    # Hidden layer sizes of the MLP; empty means one Linear layer (a linear model).
    hidden: tuple[int, ...] = ()
    # SGD step size. Inputs are standardized inside the model, so 0.1 suits the linear
    # model; an MLP on raw-scale targets needs a smaller one (see default_lr).
    lr: float = 0.1
    # SGD momentum (heavy ball); 0 is plain SGD.
    momentum: float = 0.9
    # L2 penalty added by SGD to every parameter's gradient.
    weight_decay: float = 0.0
    # Passes over the training split. 200 brings the crop data to its least-squares optimum.
    epochs: int = 200
    # Rows per SGD step; the last batch of an epoch may be smaller. 32 > 15 rows of the
    # bundled data, so there every step sees the whole training split.
    batch_size: int = 32
    # Share of rows held out for validation (0 trains on all rows).
    val_fraction: float = 0.2
    # Seeds the weight initialisation, the train/validation split and the batch order.
    seed: int = 0
    # "auto" (CUDA when available), "cpu" or "cuda".
    device: str = "auto"
    # Folder for checkpoint.pt, metrics.json, history.csv and loss_curve.png.
    out: str = "artifacts"

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (str, int, float, list, None), as ``weights_only`` loading needs."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }


# Settings that must match for --resume to continue the same run. ``epochs`` may grow,
# ``device`` and ``out`` may change, and the data are compared by checksum, not path.
RESUME_KEYS = (
    "features",
    "targets",
    "hidden",
    "lr",
    "momentum",
    "weight_decay",
    "batch_size",
    "val_fraction",
    "seed",
)


def default_lr(hidden: tuple[int, ...]) -> float:
    """The learning rate ``pomona train`` uses when ``--lr`` is not given.

    The linear model's loss is a quadratic whose curvature standardized inputs fix near 1,
    so 0.1 (with momentum 0.9) converges fast. An MLP's curvature grows with its weights,
    which must reach the targets' raw scale; 0.001 stays stable there.
    """
    return 0.001 if hidden else 0.1
