"""Finishing a run: keep the best epoch, compute metrics, judge the result, write
metrics.json, history.csv and the loss curve, and the final checkpoint."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from pomona.runtime.artifacts import HISTORY_FILE, METRICS_FILE, PLOT_FILE
from pomona.runtime.files import atomic_write
from pomona.train import distributed
from pomona.train.checkpoint import save_checkpoint
from pomona.train.fit import shared_sums
from pomona.train.metrics import least_squares_mse
from pomona.train.prepare import Run

__all__ = [
    "HISTORY_FILE",
    "METRICS_FILE",
    "OPTIMUM_RATIO_WARNING",
    "PLOT_FILE",
    "diagnose",
    "finish",
]

#: A linear model whose train MSE exceeds the least-squares optimum by this factor is
#: reported as not converged.
OPTIMUM_RATIO_WARNING = 1.05
_GREW = 1.05  # the last epochs' mean loss over the mean of those before them


def _grew(losses: list[float]) -> bool:
    """Whether the loss of the last tenth of the epochs (at least 3) rose above the tenth before."""
    window = max(3, len(losses) // 10)
    if len(losses) < 2 * window:
        return False
    last = sum(losses[-window:]) / window
    before = sum(losses[-2 * window : -window]) / window
    return last > _GREW * before


def diagnose(metrics: dict[str, Any], history: list[dict[str, Any]]) -> list[str]:
    """Warnings about a finished run that should not pass in silence, each with a fix."""
    notes = []
    optimum = metrics.get("least_squares_mse")
    train_mse = metrics["train"]["mse"]
    if optimum is not None and train_mse > OPTIMUM_RATIO_WARNING * optimum + 1e-12:
        ratio = train_mse / optimum if optimum > 0 else float("inf")
        best, last = metrics.get("best_epoch"), metrics.get("epochs_run")
        if best is not None and last is not None and best < last:
            notes.append(
                f"train MSE is {ratio:.3g}x the least-squares optimum at epoch {best}, kept for "
                f"the lowest validation loss (of {last}): validation preferred a less fitted "
                "model; --val-fraction 0 fits every row"
            )
        else:
            notes.append(
                f"train MSE is {ratio:.3g}x the least-squares optimum: training has not "
                "converged; try more --epochs or another --lr"
            )
    if _grew([row["train_loss"] for row in history]):
        notes.append(
            "the training loss grew over the last epochs: the step is too large; "
            "try a smaller --lr or --schedule cosine"
        )
    return notes


def _write_outputs(out: Path, history: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
    with atomic_write(out / METRICS_FILE, "w", encoding="utf-8") as handle:
        json.dump(metrics, handle, indent=2)
        handle.write("\n")
    with atomic_write(out / HISTORY_FILE, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "train_loss", "val_loss"])
        for row in history:
            val = row["val_loss"]
            writer.writerow(
                [row["epoch"], repr(row["train_loss"]), "" if val is None else repr(val)]
            )


def _plot(out: Path, history: list[dict[str, Any]]) -> str | None:
    """Draw the loss curve; the reason when it cannot be drawn."""
    try:
        from pomona.train.plot import plot_history

        plot_history(history, out / PLOT_FILE)
    except ImportError as err:
        return f"no {PLOT_FILE}: {err.name or 'matplotlib'} is not installed"
    return None


def _measure(run: Run) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Training and validation metrics of the model (validation None without a split)."""
    names = run.config.targets
    if run.stream is not None:
        return run.stream.metrics(run.model, names)
    device = run.device  # under several ranks each measures its share; the sums are merged
    train = shared_sums(run.model, run.x_train.to(device), run.y_train).result(names)
    if not len(run.x_val):
        return train, None
    return train, shared_sums(run.model, run.x_val.to(device), run.y_val).result(names)


def _least_squares(run: Run) -> float:
    if run.stream is not None:
        return run.stream.least_squares_mse()
    return least_squares_mse(run.x_train, run.y_train)


def finish(run: Run) -> tuple[dict[str, Any], str | None]:
    """Metrics of the kept model, the final checkpoint and the output files.

    With a validation split the model kept is that of the epoch with the lowest
    validation loss. Returns the metrics and, if the loss curve was not drawn, why.
    Every rank measures; rank 0 alone writes, once all ranks are done.
    """
    config, best = run.config, run.best
    epochs_run = run.history[-1]["epoch"] if run.history else run.start
    last_state = None
    if best is not None:  # keep the last weights too: --resume with more epochs goes on from them
        last_state = {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}
        run.model.load_state_dict(best.model_state)
    train_metrics, val_metrics = _measure(run)
    metrics: dict[str, Any] = {
        "epochs": config.epochs,
        "epochs_run": epochs_run,
        "best_epoch": None if best is None else best.epoch,
        "stopped_early": best is not None and best.stopped,
        "features": list(config.features),
        "targets": list(config.targets),
        "hidden": list(config.hidden),
        "train": train_metrics,
        "validation": val_metrics,
        "least_squares_mse": None if config.hidden else _least_squares(run),
    }
    metrics["warnings"] = run.warnings + diagnose(metrics, run.history)
    distributed.barrier()
    plot_error = None
    if run.world.main:
        state = run.checkpoint_state(epochs_run, metrics)
        if last_state is not None:
            state["last_model_state"] = last_state
        save_checkpoint(run.checkpoint_path, state)
        _write_outputs(run.out, run.history, metrics)
        plot_error = _plot(run.out, run.history)
    run.model.cpu().eval()
    return metrics, plot_error
