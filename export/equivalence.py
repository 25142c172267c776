"""Prove exported artifacts compute what the trained model computes.

The reference is the model as trained, in PyTorch eager mode, *unfolded* (its
``Standardize`` layer intact). Each artifact runs the same float32 rows at
every batch size in :data:`BATCH_SIZES`, and every output value must satisfy

    |artifact - reference| <= ATOL * scale + RTOL * |reference|

where ``scale = max(1, max |reference|)`` over that output column (target): the
absolute tolerance grows with the magnitude of the output, so a target in the
thousands is held to the same number of significant digits as one near 1. The
constants and the rule belong to the artifact contract
(:mod:`pomona.runtime.artifacts`); they are re-exported here.

The report gives, per artifact, the largest absolute difference and the largest
difference relative to the column's magnitude (``|a - b| / max |reference|``),
plus ``worst_fraction_of_tolerance``: the largest ``|a - b| / allowed``, which
is at most 1 when the artifact passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pomona.runtime.artifacts import ATOL, RTOL, TOLERANCE_RULE, allowed_difference
from pomona.runtime.errors import ArtifactError

if TYPE_CHECKING:
    from pomona.runtime.predictor import Predictor

__all__ = [
    "ATOL",
    "BATCH_SIZES",
    "NUMPY_CHECK",
    "RANDOM_ROWS",
    "RTOL",
    "SPAN_SIGMAS",
    "ArtifactCheck",
    "EquivalenceError",
    "EquivalenceReport",
    "allowed_difference",
    "check_equivalence",
    "compare_outputs",
    "evaluation_rows",
    "predict_eager",
    "predict_runtime",
    "predict_torchscript",
]

#: Every artifact is run at each of these batch sizes.
BATCH_SIZES: tuple[int, ...] = (1, 7, 4096)
#: Random rows added to the training rows at every export.
RANDOM_ROWS = 10_240
#: Half of the random rows are uniform in ``mean ± SPAN_SIGMAS * std`` per feature
#: (far beyond the training range); the other half are normal around the mean.
SPAN_SIGMAS = 10.0
_SEED = 0
#: The report's name for ``model.onnx`` run by the runtime's numpy backend (the plain
#: ``model.onnx`` check runs it with onnxruntime).
NUMPY_CHECK = "model.onnx (numpy)"

Predict = Callable[[np.ndarray, int], np.ndarray]


class EquivalenceError(ArtifactError):
    """One or more artifacts disagree with the trained model beyond the tolerance."""

    def __init__(self, report: EquivalenceReport) -> None:
        self.report = report
        failing = [check for check in report.checks if not check.passed]
        details = "; ".join(check.describe() for check in failing)
        super().__init__(
            f"exported artifacts differ from the trained model beyond the tolerance "
            f"(|diff| <= {report.atol:g}*scale + {report.rtol:g}*|reference|): {details}"
        )


@dataclass(frozen=True)
class ArtifactCheck:
    """How one artifact compares with the eager reference over all rows and batch sizes."""

    artifact: str
    max_abs_diff: float
    max_rel_diff: float
    worst_fraction_of_tolerance: float
    rows: int
    batch_sizes: tuple[int, ...]
    passed: bool
    problem: str | None = None

    def describe(self) -> str:
        if self.problem is not None:
            return f"{self.artifact}: {self.problem}"
        return (
            f"{self.artifact}: max abs diff {self.max_abs_diff:.3g}, "
            f"max rel diff {self.max_rel_diff:.3g} "
            f"({self.worst_fraction_of_tolerance:.3g} of the tolerance)"
        )


@dataclass(frozen=True)
class EquivalenceReport:
    """All artifact checks of one export, with the tolerance and the rows they used."""

    checks: tuple[ArtifactCheck, ...]
    rows: int
    training_rows: int
    random_rows: int
    batch_sizes: tuple[int, ...]
    atol: float = ATOL
    rtol: float = RTOL
    reference: str = "pytorch eager, unfolded (Standardize layer intact)"
    tolerance: str = TOLERANCE_RULE

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form; non-finite numbers become ``None``."""
        data = asdict(self)
        data["passed"] = self.passed
        data["checks"] = {check["artifact"]: check for check in data["checks"]}
        for check in data["checks"].values():
            del check["artifact"]
            if check["problem"] is None:
                del check["problem"]
        return _finite_or_none(data)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(item) for item in value]
    return value


def compare_outputs(
    artifact: str, outputs: Mapping[int, np.ndarray], reference: np.ndarray
) -> ArtifactCheck:
    """Compare an artifact's outputs (one array per batch size) with the reference."""
    ref = np.asarray(reference, dtype=np.float64)
    batch_sizes = tuple(outputs)
    for batch_size, out in outputs.items():
        if np.shape(out) != ref.shape:
            return ArtifactCheck(
                artifact, math.inf, math.inf, math.inf, ref.shape[0], batch_sizes, False,
                f"output shape {np.shape(out)} at batch size {batch_size}, expected {ref.shape}",
            )  # fmt: skip
    allowed = allowed_difference(ref)
    column_scale = np.abs(np.where(np.isfinite(ref), ref, 0.0)).max(axis=0, initial=0.0)
    column_scale = np.where(column_scale > 0, column_scale, 1.0)
    max_abs = max_rel = worst = 0.0
    for out in outputs.values():
        actual = np.asarray(out, dtype=np.float64)
        same = (actual == ref) | (np.isnan(actual) & np.isnan(ref))
        with np.errstate(invalid="ignore"):
            diff = np.where(same, 0.0, np.abs(actual - ref))
        diff = np.where(np.isnan(diff), math.inf, diff)
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float((diff / column_scale).max()))
            worst = max(worst, float((diff / allowed).max()))
    return ArtifactCheck(artifact, max_abs, max_rel, worst, ref.shape[0], batch_sizes, worst <= 1)


def evaluation_rows(
    mean: Sequence[float] | np.ndarray,
    std: Sequence[float] | np.ndarray,
    training: np.ndarray | None = None,
    n_random: int = RANDOM_ROWS,
    seed: int = _SEED,
) -> np.ndarray:
    """The rows an export is checked on, float32 ``[rows, F]``, the same on every run.

    ``training`` rows first (if given), then ``n_random`` rows drawn in float64 and
    cast to float32: half normal around ``mean`` with ``std``, half uniform in
    ``mean ± SPAN_SIGMAS * std``.
    """
    mu = np.asarray(mean, dtype=np.float64)
    sigma = np.asarray(std, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n_normal = n_random // 2
    normal = mu + sigma * rng.standard_normal((n_normal, mu.size))
    wide = mu + sigma * rng.uniform(-SPAN_SIGMAS, SPAN_SIGMAS, (n_random - n_normal, mu.size))
    parts = [normal, wide]
    if training is not None:
        parts.insert(0, np.asarray(training, dtype=np.float64).reshape(-1, mu.size))
    return np.concatenate(parts).astype(np.float32)


def _in_batches(
    fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch_size: int
) -> np.ndarray:
    parts = [fn(x[start : start + batch_size]) for start in range(0, len(x), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


@torch.no_grad()
def predict_eager(model: nn.Module, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Run a PyTorch module on float32 rows, ``batch_size`` rows per call."""
    model.eval()
    return _in_batches(lambda b: model(torch.from_numpy(b)).numpy(), x, batch_size)


@torch.no_grad()
def predict_torchscript(
    module: torch.jit.ScriptModule, x: np.ndarray, batch_size: int
) -> np.ndarray:
    """Run a loaded TorchScript module, ``batch_size`` rows per call."""
    return _in_batches(lambda b: module(torch.from_numpy(b)).numpy(), x, batch_size)


def predict_runtime(predictor: Predictor, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Run a model through the runtime's :class:`Predictor` (whichever backend it uses),
    ``batch_size`` rows per call."""
    return _in_batches(predictor.predict, x, batch_size)


def check_equivalence(
    reference: nn.Module,
    artifacts: Mapping[str, Predict],
    rows: np.ndarray,
    *,
    training_rows: int = 0,
    batch_sizes: Sequence[int] = BATCH_SIZES,
) -> EquivalenceReport:
    """Run the reference and each artifact on ``rows``; raise :class:`EquivalenceError` on failure.

    ``artifacts`` maps an artifact name to ``predict(rows, batch_size)``. The
    reference runs in batches of the largest batch size. Returns the report when
    every artifact passes.
    """
    x = np.ascontiguousarray(rows, dtype=np.float32)
    sizes = tuple(batch_sizes)
    expected = predict_eager(reference, x, max(sizes))
    checks = []
    for name, predict in artifacts.items():
        outputs = {size: predict(x, size) for size in sizes}
        checks.append(compare_outputs(name, outputs, expected))
    report = EquivalenceReport(
        checks=tuple(checks),
        rows=len(x),
        training_rows=training_rows,
        random_rows=len(x) - training_rows,
        batch_sizes=sizes,
    )
    if not report.passed:
        raise EquivalenceError(report)
    return report
