"""The loss-curve picture. matplotlib is imported only when a picture is drawn."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from pomona.runtime.files import atomic_write

__all__ = ["plot_history"]


def _plain_log_formatter(minor: bool) -> Any:
    """Loss-axis labels as plain numbers (0.2, 1, 1.05, 1e-05) where matplotlib's log
    scale would put a label; its own labels are mathtext (``2x10^-1``), whose parser
    took half of the drawing time."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        def __call__(self, x: float, pos: int | None = None) -> str:
            return self.fix_minus(f"{x:g}") if super().__call__(x, pos) else ""

    return PlainLogFormatter(labelOnlyBase=not minor)


def plot_history(history: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Draw training (and validation) loss per epoch on a log scale into a PNG file.

    Uses matplotlib's object API with the Agg canvas, so no global backend is changed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(epochs, [row["train_loss"] for row in history], label="train")
    val = [(row["epoch"], row["val_loss"]) for row in history if row["val_loss"] is not None]
    if val:
        ax.plot([e for e, _ in val], [v for _, v in val], label="validation")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_plain_log_formatter(minor=False))
    ax.yaxis.set_minor_formatter(_plain_log_formatter(minor=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", metadata={"Software": None})
