"""Regression metrics and the closed-form least-squares reference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "MetricSums",
    "least_squares_mse",
    "least_squares_mse_of",
    "merged",
    "regression_metrics",
]


class MetricSums:
    """The sums behind MSE, MAE and R², added batch by batch (float64), so that metrics over
    data streamed from disk equal those over the whole array.

    ``SS_tot`` comes from the targets' running mean and sum of squared deviations, merged
    per batch (Chan et al.), which stays exact for constant targets.
    """

    def __init__(self, n_targets: int) -> None:
        self.rows = 0
        self.squared = np.zeros(n_targets)
        self.absolute = np.zeros(n_targets)
        self.mean = np.zeros(n_targets)
        self.ss_tot = np.zeros(n_targets)

    def add(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        pred = predictions.detach().to("cpu", torch.float64).numpy()
        true = targets.detach().to("cpu", torch.float64).numpy()
        n_b = len(true)
        if not n_b:
            return
        err = pred - true
        part = MetricSums(len(self.squared))
        part.rows = n_b
        part.squared = (err**2).sum(axis=0)
        part.absolute = np.abs(err).sum(axis=0)
        part.mean = true.mean(axis=0)
        part.ss_tot = ((true - part.mean) ** 2).sum(axis=0)
        self.merge(part)

    def merge(self, other: MetricSums) -> None:
        """Add the sums of ``other`` (other rows of the same targets), as if added here."""
        n_b = other.rows
        if not n_b:
            return
        n = self.rows + n_b
        delta = other.mean - self.mean
        self.squared += other.squared
        self.absolute += other.absolute
        self.ss_tot += other.ss_tot + delta**2 * (self.rows * n_b / n)
        self.mean += delta * (n_b / n)
        self.rows = n

    def result(self, names: Sequence[str]) -> dict[str, Any]:
        """MSE, MAE and R² over all targets and per target.

        R² is ``1 - SS_res / SS_tot`` per target; it is None where a target does not vary
        (``SS_tot == 0``), and the overall R² is the mean of the defined per-target values.
        """
        rows = max(self.rows, 1)
        per_target: dict[str, dict[str, float | None]] = {}
        r2_values: list[float] = []
        for j, name in enumerate(names):
            r2 = None if self.ss_tot[j] == 0 else float(1 - self.squared[j] / self.ss_tot[j])
            if r2 is not None:
                r2_values.append(r2)
            per_target[name] = {
                "mse": float(self.squared[j] / rows),
                "mae": float(self.absolute[j] / rows),
                "r2": r2,
            }
        cells = rows * max(len(names), 1)
        return {
            "rows": self.rows,
            "mse": float(self.squared.sum() / cells),
            "mae": float(self.absolute.sum() / cells),
            "r2": sum(r2_values) / len(r2_values) if r2_values else None,
            "targets": per_target,
        }


def merged(parts: Sequence[MetricSums]) -> MetricSums:
    """The sums of all ``parts`` (one per rank, in rank order); the only one when alone."""
    first, *rest = parts
    if not rest:
        return first
    total = MetricSums(len(first.squared))
    for part in parts:
        total.merge(part)
    return total


def regression_metrics(
    predictions: torch.Tensor, targets: torch.Tensor, names: Sequence[str]
) -> dict[str, Any]:
    """MSE, MAE and R² of whole arrays (see :meth:`MetricSums.result`), in float64."""
    sums = MetricSums(len(names))
    sums.add(predictions, targets)
    return sums.result(names)


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


def least_squares_mse_of(comoment: np.ndarray, rows: int, n_features: int) -> float:
    """:func:`least_squares_mse` from the co-moment matrix of ``[features, targets]`` columns
    (sums of products of deviations from the means; see ``pomona.train.stream.Moments``).

    With an intercept, the residual sum of squares of target ``t`` is
    ``S_tt - S_tx S_xx^+ S_xt`` on centred sums.
    """
    sxx = comoment[:n_features, :n_features]
    sxy = comoment[:n_features, n_features:]
    syy = np.diag(comoment)[n_features:]
    explained = (sxy * (np.linalg.pinv(sxx, hermitian=True) @ sxy)).sum(axis=0)
    residual = np.maximum(syy - explained, 0.0)
    return float(residual.sum() / (max(rows, 1) * max(len(syy), 1)))
