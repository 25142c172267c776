"""``pomona train``: parse options, run the loop, report one line (or a progress bar)."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import click

from pomona.runtime.clikit import say, user_errors
from pomona.runtime.errors import PomonaError
from pomona.train.config import (
    DEFAULT_FEATURES,
    DEFAULT_TARGETS,
    SCHEDULES,
    TrainConfig,
    default_lr,
)
from pomona.train.dataset import read_table, split_indices
from pomona.train.distributed import launched
from pomona.train.stream import DEFAULT_SHUFFLE_BUFFER, needs_streaming

if TYPE_CHECKING:
    from pomona.train.loop import EpochCallback, TrainResult

# torch loads only once the data have been read and checked, so a bad file is reported
# at once; without torch, `pomona` names the extra to install (pomona.runtime.cli.COMMANDS).

__all__ = ["train"]

_DEFAULTS = TrainConfig()


class _NameList(click.ParamType):
    """A comma-separated list of distinct, non-empty column names."""

    name = "NAMES"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        names = tuple(part.strip() for part in str(value).split(","))
        if not all(names):
            self.fail(f"{value!r}: expected comma-separated column names", param, ctx)
        if len(set(names)) != len(names):
            self.fail(f"{value!r}: a column is named twice", param, ctx)
        return names


class _SizeList(click.ParamType):
    """A comma-separated list of positive layer sizes; empty means none."""

    name = "SIZES"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        if not text:
            return ()
        try:
            sizes = tuple(int(part) for part in text.split(","))
        except ValueError:
            self.fail(f"{value!r}: expected comma-separated layer sizes, like 32,32", param, ctx)
        if any(size < 1 for size in sizes):
            self.fail(f"{value!r}: layer sizes must be at least 1", param, ctx)
        return sizes


class _Every(click.ParamType):
    """``N`` epochs, or a time: ``90s``, ``5m``, ``1h``."""

    name = "EVERY"
    _UNITS: ClassVar[dict[str, int]] = {"s": 1, "m": 60, "h": 3600}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        text = str(value).strip().lower()
        unit = self._UNITS.get(text[-1:]) if text else None
        try:
            number = float(text[:-1]) if unit else int(text)
        except ValueError:
            number = 0
        if number <= 0:
            self.fail(f"{value!r}: expected a number of epochs (5) or a time (90s, 5m)", param, ctx)
        return (None, number * unit) if unit else (int(number), None)


def _validation_text(metrics: dict[str, Any]) -> str:
    val = metrics["validation"]
    if val is None:
        return "val MSE -"
    kept = f"best epoch {metrics['best_epoch']} kept"
    if metrics.get("stopped_early"):
        kept += f", stopped early after epoch {metrics['epochs_run']}"
    return f"val MSE {val['mse']:.4f} ({kept})"


def _summary(result: TrainResult, rows: int) -> str:
    metrics = result.metrics
    config = result.config
    train_mse = metrics["train"]["mse"]
    optimum = metrics["least_squares_mse"]
    reference = f" (least-squares optimum {optimum:.4f})" if optimum is not None else ""
    resumed = (
        f" (resumed at epoch {result.resumed_from})" if result.resumed_from is not None else ""
    )
    warnings = "".join(f"; WARNING: {note}" for note in metrics.get("warnings") or [])
    ranks = f" ({result.world.describe(config.batch_size)})" if result.world.size > 1 else ""
    return (
        f"trained {rows} rows x {len(config.features)} features -> {len(config.targets)} targets, "
        f"{config.epochs} epochs{resumed} on {result.device.type}{ranks}: train MSE {train_mse:.4f}"
        f"{reference}, {_validation_text(metrics)}{warnings}; wrote {result.out}/"
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data",
    type=click.Path(path_type=str),
    default=None,
    help="CSV (with a header line), JSON Lines or Parquet file, or a folder or glob "
    "('data/part-*.parquet') of such files with the same columns. Default: the bundled "
    "crop data (15 rows).",
)
@click.option(
    "--features",
    type=_NameList(),
    default=",".join(DEFAULT_FEATURES),
    show_default=True,
    help="Input columns, comma-separated, in model order.",
)
@click.option(
    "--targets",
    type=_NameList(),
    default=",".join(DEFAULT_TARGETS),
    show_default=True,
    help="Output columns, comma-separated, in model order.",
)
@click.option(
    "--hidden",
    type=_SizeList(),
    default="",
    help="Hidden layer sizes for an MLP with ReLU, e.g. 32,32. Default: a linear model.",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help=f"Peak SGD learning rate. Default: {default_lr(())} for the linear model, "
    f"{default_lr((1,))} with --hidden.",
)
@click.option(
    "--momentum",
    type=click.FloatRange(min=0, max=1, max_open=True),
    default=_DEFAULTS.momentum,
    show_default=True,
    help="SGD momentum.",
)
@click.option(
    "--weight-decay",
    type=click.FloatRange(min=0),
    default=_DEFAULTS.weight_decay,
    show_default=True,
    help="SGD weight decay (L2 penalty).",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=_DEFAULTS.epochs,
    show_default=True,
    help="Passes over the training split.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=_DEFAULTS.batch_size,
    show_default=True,
    help="Rows per SGD step. Under torchrun this is the global batch, shared among the ranks.",
)
@click.option(
    "--schedule",
    type=click.Choice(SCHEDULES),
    default=_DEFAULTS.schedule,
    show_default=True,
    help="Learning rate over the run: short warm-up then cosine or linear decay to zero, "
    "or constant.",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(min=0, max=1, max_open=True),
    default=_DEFAULTS.val_fraction,
    show_default=True,
    help="Share of rows held out for validation; 0 trains on every row.",
)
@click.option(
    "--early-stopping",
    "early_stopping",
    type=click.IntRange(min=1),
    default=_DEFAULTS.early_stopping,
    metavar="PATIENCE",
    help="Stop after PATIENCE epochs without a lower validation loss. With a validation "
    "split the best epoch's model is kept either way.  [default: off]",
)
@click.option(
    "--seed",
    type=int,
    default=_DEFAULTS.seed,
    show_default=True,
    help="Seed for initialisation, split and batch order.",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default=_DEFAULTS.device,
    show_default=True,
    help="Where to train; auto picks CUDA when available.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=str),
    default=_DEFAULTS.out,
    show_default=True,
    help="Folder for checkpoint.pt, metrics.json, history.csv, loss_curve.png.",
)
@click.option(
    "--stream",
    is_flag=True,
    help="Train from record batches read from disk, without holding the data in memory "
    "(chosen by itself when the data would not fit).",
)
@click.option(
    "--shuffle-buffer",
    type=click.IntRange(min=0),
    default=DEFAULT_SHUFFLE_BUFFER,
    show_default=True,
    metavar="ROWS",
    help="With --stream: rows held and shuffled before they form batches (shards are "
    "also read in a seeded order each epoch).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="torch threads for training.  [default: the CPUs this process may use, shared "
    "among the ranks on this machine under torchrun]",
)
@click.option(
    "--checkpoint-every",
    type=_Every(),
    default="60s",
    show_default=True,
    help="Write OUT/checkpoint.pt every N epochs (5) or after a time (90s, 5m); always at the end.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue from OUT/checkpoint.pt (same data and settings; --epochs may grow "
    "only with --schedule constant).",
)
@user_errors
def train(
    data: str | None,
    features: tuple[str, ...],
    targets: tuple[str, ...],
    hidden: tuple[int, ...],
    lr: float | None,
    momentum: float,
    weight_decay: float,
    epochs: int,
    batch_size: int,
    schedule: str,
    val_fraction: float,
    early_stopping: int | None,
    seed: int,
    device: str,
    out: str,
    stream: bool,
    shuffle_buffer: int,
    threads: int | None,
    checkpoint_every: tuple[int | None, float | None],
    resume: bool,
) -> None:
    """Train a regression model on the crop data or your own (file, folder or glob).

    Writes OUT/checkpoint.pt as --checkpoint-every says and at the end, then
    OUT/metrics.json, OUT/history.csv and OUT/loss_curve.png.

    On several processes or machines: torchrun --nproc-per-node N --no-python pomona
    train ... (DistributedDataParallel; rank 0 writes and prints; see docs/scale.md).
    """
    overlap = sorted(set(features) & set(targets))
    if overlap:
        raise click.BadParameter(
            f"{', '.join(overlap)} is both a feature and a target", param_hint="'--targets'"
        )
    if early_stopping is not None and val_fraction == 0:
        raise click.BadParameter(
            "needs a validation split (--val-fraction above 0)", param_hint="'--early-stopping'"
        )
    config = TrainConfig(
        data=data,
        features=features,
        targets=targets,
        hidden=hidden,
        lr=default_lr(hidden) if lr is None else lr,
        momentum=momentum,
        weight_decay=weight_decay,
        epochs=epochs,
        batch_size=batch_size,
        schedule=schedule,
        val_fraction=val_fraction,
        early_stopping=early_stopping,
        seed=seed,
        device=device,
        out=str(Path(out)),
        stream=stream,
        shuffle_buffer=shuffle_buffer,
        threads=threads,
        checkpoint_epochs=checkpoint_every[0],
        checkpoint_seconds=checkpoint_every[1],
    )
    here = launched()
    table = None
    if not stream:
        reason = needs_streaming(data, len(features) + len(targets), here.local_size)
        if reason is not None and here.size > 1:  # every rank must make the same choice
            raise PomonaError(f"{reason.rpartition(': ')[0]}: pass --stream under torchrun")
        if reason is not None:
            say(reason)
            config = dataclasses.replace(config, stream=True)
    if not config.stream:
        table = read_table(data, features, targets)
        split_indices(table, val_fraction, seed)  # fails early when there are too few rows

    from pomona.train.loop import train as run_training

    with contextlib.ExitStack() as stack:
        on_epoch: EpochCallback | None = None
        if here.main and sys.stderr.isatty():
            bar = stack.enter_context(
                click.progressbar(length=epochs, label="training", file=sys.stderr, show_pos=True)
            )

            def advance(epoch: int, record: dict[str, Any]) -> None:
                bar.label = f"training (loss {record['train_loss']:.4g})"
                bar.update(epoch - bar.pos)

            on_epoch = advance

        result = run_training(config, resume=resume, on_epoch=on_epoch, table=table)
    if not here.main:  # rank 0 speaks for the run
        return
    if result.plot_error:
        say(result.plot_error)
    say(_summary(result, result.metrics["train"]["rows"]))
