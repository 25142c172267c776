"""The learning-rate schedule: a short linear warm-up, then decay to zero over the run.

A constant step size with mini-batch noise hovers above the optimum at a distance that
grows with the step; decaying it to zero lets SGD settle. The schedule is stepped once
per SGD step, and its position is part of the checkpoint, so a resumed run continues
exactly where the interrupted one stopped.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR

from pomona.train.config import SCHEDULES

__all__ = ["WARMUP_SHARE", "build_scheduler", "lr_factor"]

#: Share of all steps spent warming up linearly from a small rate to the peak ``--lr``.
WARMUP_SHARE = 0.05


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """The multiple of the peak learning rate used at ``step`` (0-based) of ``total_steps``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    if schedule == "constant":
        return 1.0
    warmup = max(1, math.ceil(WARMUP_SHARE * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress  # linear


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int) -> LambdaLR:
    """A ``LambdaLR`` following :func:`lr_factor`; call its ``step()`` after each SGD step."""
    return LambdaLR(optimizer, partial(lr_factor, schedule, total_steps=total_steps))
