"""The training configuration: every setting of a run, with its default, in one place.

The defaults were chosen by ``make sweep`` (bench/defaults_sweep.py) over public data
sets; docs/training-defaults.md has the table and the method.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pomona.train.stream import DEFAULT_SHUFFLE_BUFFER

__all__ = [
    "DEFAULT_FEATURES",
    "DEFAULT_TARGETS",
    "RESUME_KEYS",
    "SCHEDULES",
    "TrainConfig",
    "default_lr",
]

DEFAULT_FEATURES = ("temp", "rainfall", "humidity")
DEFAULT_TARGETS = ("apples", "oranges")
#: Learning-rate schedules: warm-up then cosine or linear decay to zero, or constant.
SCHEDULES = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. Saved in the checkpoint as plain values."""

    # A CSV (with a header line), JSON Lines or Parquet file, or a folder or glob of such
    # files (shards with the same columns); None trains on the bundled crop data (15 rows).
    data: str | None = None
    # Input columns, in the order the model takes them.
    features: tuple[str, ...] = DEFAULT_FEATURES
    # Output columns, in the order the model returns them.
    targets: tuple[str, ...] = DEFAULT_TARGETS
    # Hidden layer sizes of the MLP; empty means one Linear layer (a linear model).
    hidden: tuple[int, ...] = ()
    # Peak SGD step size of the schedule. Features and targets are both standardized
    # inside the model, so one value suits data of any scale; an MLP takes 0.03 (see
    # default_lr).
    lr: float = 0.01
    # SGD momentum (heavy ball); 0 is plain SGD.
    momentum: float = 0.9
    # L2 penalty added by SGD to every parameter's gradient.
    weight_decay: float = 0.0
    # Passes over the training split.
    epochs: int = 200
    # Rows per SGD step; the last batch of an epoch may be smaller.
    batch_size: int = 32
    # Learning rate over the run: a short linear warm-up, then "cosine" or "linear"
    # decay to zero at the last step, or "constant" (no warm-up, no decay).
    schedule: str = "cosine"
    # Precondition the first layer's gradient by the inverse correlation of the features
    # (SGD as if on decorrelated inputs), so collinear columns do not stall training.
    precondition: bool = True
    # Share of rows held out for validation (0 trains on all rows).
    val_fraction: float = 0.2
    # Stop after this many epochs without a better validation loss (None: never). With a
    # validation split the model of the best epoch is kept either way.
    early_stopping: int | None = None
    # Seeds the weight initialisation, the train/validation split and the batch order.
    seed: int = 0
    # "auto" (CUDA when available), "cpu" or "cuda".
    device: str = "auto"
    # Folder for checkpoint.pt, metrics.json, history.csv and loss_curve.png.
    out: str = "artifacts"
    # Train from record batches without holding the data (--stream); the command line
    # also switches it on when the data would not fit in memory.
    stream: bool = False
    # Rows of the shuffle buffer when streaming (0: shard order and file order only).
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
    # torch intra-op threads; None: the CPUs this process may use.
    threads: int | None = None
    # Write the checkpoint every this many epochs, and/or when this many seconds have
    # passed since the last one (None: not on that account); always at the end.
    checkpoint_epochs: int | None = None
    checkpoint_seconds: float | None = 60.0

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (str, int, float, list, None), as ``weights_only`` loading needs."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }


# Settings that must match for --resume to continue the same run. ``device``, ``out``,
# ``threads`` and the checkpoint interval may change, ``epochs`` may grow under the
# constant schedule (a decaying schedule spans the run, so there it must match too), and
# the data are compared by checksum (of every shard), not path.
RESUME_KEYS = (
    "features",
    "targets",
    "hidden",
    "lr",
    "momentum",
    "weight_decay",
    "batch_size",
    "schedule",
    "precondition",
    "val_fraction",
    "early_stopping",
    "seed",
    "stream",
    "shuffle_buffer",
)


def default_lr(hidden: tuple[int, ...]) -> float:
    """The peak learning rate ``pomona train`` uses when ``--lr`` is not given.

    Features and targets are standardized and the first layer's gradient preconditioned,
    so the linear model's loss has curvature near 1 in every direction whatever the data;
    0.01 with momentum 0.9 reached the least-squares optimum on every data set of the
    sweep, and 0.03 gave the MLP its lowest worst-case training loss there
    (docs/training-defaults.md).
    """
    return 0.03 if hidden else 0.01
