"""``--resume``: refuse a checkpoint of another run, and restore the state of the same one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from pomona.runtime.errors import ArtifactError, PomonaError
from pomona.train.checkpoint import load_checkpoint
from pomona.train.config import RESUME_KEYS, TrainConfig

if TYPE_CHECKING:
    from pomona.train.prepare import Run

__all__ = ["BestEpoch", "DataSet", "restore", "resume_state", "rng_state"]


class DataSet(Protocol):
    """What --resume knows of the data: the name given and the checksum of its files."""

    @property
    def source(self) -> str: ...

    @property
    def sha256(self) -> str: ...


@dataclass
class BestEpoch:
    """The epoch with the lowest validation loss so far, its weights, and the wait since."""

    epoch: int
    val_loss: float
    model_state: dict[str, torch.Tensor]
    epochs_without_improvement: int = 0
    stopped: bool = False  # early stopping ended the run

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "val_loss": self.val_loss,
            "model_state": self.model_state,
            "epochs_without_improvement": self.epochs_without_improvement,
            "stopped": self.stopped,
        }


def rng_state(sampler: torch.Generator) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "sampler": sampler.get_state(),
    }


def _restore_rng(rng: dict[str, Any], sampler: torch.Generator) -> None:
    sampler.set_state(rng["sampler"])
    torch.set_rng_state(rng["torch"])
    cuda = rng.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "(none)"
    return str(value)


def resume_state(path: Path, config: TrainConfig, table: DataSet) -> dict[str, Any]:
    """Load the checkpoint to continue from, refusing one from a different run."""
    if not path.is_file():
        raise ArtifactError(
            f"--resume: no checkpoint at {path} to continue from; run without --resume to start"
        )
    state = load_checkpoint(path)
    if not isinstance(state.get("rng"), dict) or "sampler" not in state["rng"]:
        raise ArtifactError(f"{path}: the checkpoint has no training state (RNG) to resume from")
    saved = state.get("config") or {}
    now = config.to_dict()
    keys = RESUME_KEYS if config.schedule == "constant" else (*RESUME_KEYS, "epochs")
    changes = [
        f"--{key.replace('_', '-')} {_show(saved.get(key))} there, {_show(now[key])} now"
        for key in keys
        if saved.get(key) != now[key]
    ]
    if state.get("data_sha256") != table.sha256:
        changes.append(f"the data differ ({table.source} is not the file it was trained on)")
    if changes:
        spans = "; the --schedule spans all --epochs" if "epochs" in keys else ""
        raise PomonaError(
            f"cannot resume from {path}: it comes from a different run: {'; '.join(changes)}"
            f"{spans}. Use the same settings, or drop --resume to start over"
        )
    if state["epoch"] > config.epochs:
        raise PomonaError(
            f"cannot resume from {path}: it has {state['epoch']} epochs already, "
            f"more than --epochs {config.epochs}"
        )
    return state


def restore(run: Run, previous: dict[str, Any]) -> None:
    # A finished run's model_state is its best epoch; the last epoch's weights continue.
    run.model.load_state_dict(previous.get("last_model_state") or previous["model_state"])
    run.optimizer.load_state_dict(previous["optimizer_state"])
    if previous.get("scheduler_state") is not None:
        run.scheduler.load_state_dict(previous["scheduler_state"])
    _restore_rng(previous["rng"], run.sampler)
    run.history = [dict(row) for row in previous.get("history") or []]
    best = previous.get("best")
    if best:
        run.best = BestEpoch(**best)
