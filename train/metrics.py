"""Regression metrics and the closed-form least-squares reference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["least_squares_mse", "regression_metrics"]


def regression_metrics(
    predictions: torch.Tensor, targets: torch.Tensor, names: Sequence[str]
) -> dict[str, Any]:
    """MSE, MAE and R² over all targets and per target, computed in float64.

    R² is ``1 - SS_res / SS_tot`` per target; it is None where a target does not vary
    (``SS_tot == 0``), and the overall R² is the mean of the defined per-target values.
    """
    pred = predictions.detach().to("cpu", torch.float64)
    true = targets.detach().to("cpu", torch.float64)
    err = pred - true
    ss_res = (err**2).sum(dim=0)
    ss_tot = ((true - true.mean(dim=0)) ** 2).sum(dim=0)
    per_target: dict[str, dict[str, float | None]] = {}
    r2_values: list[float] = []
    for j, name in enumerate(names):
        r2 = None if ss_tot[j] == 0 else float(1 - ss_res[j] / ss_tot[j])
        if r2 is not None:
            r2_values.append(r2)
        per_target[name] = {
            "mse": float((err[:, j] ** 2).mean()),
            "mae": float(err[:, j].abs().mean()),
            "r2": r2,
        }
    return {
        "rows": int(true.shape[0]),
        "mse": float((err**2).mean()),
        "mae": float(err.abs().mean()),
        "r2": sum(r2_values) / len(r2_values) if r2_values else None,
        "targets": per_target,
    }


def least_squares_mse(features: torch.Tensor, targets: torch.Tensor) -> float:
    """The lowest MSE any linear model (weights plus intercept) reaches on these rows.

    Solved in float64 with ``torch.linalg.lstsq``; the mean runs over every row and target,
    like the training loss.
    """
    x = features.detach().to("cpu", torch.float64)
    y = targets.detach().to("cpu", torch.float64)
    design = torch.cat([x, torch.ones(x.shape[0], 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, y, driver="gelsd").solution
    return float(((design @ solution - y) ** 2).mean())
