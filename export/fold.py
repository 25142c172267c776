"""Fold the standardizations into the first and last ``nn.Linear``, where float32 allows.

A trained model is ``Standardize`` (``(x - mu) / sigma``), ``Linear`` or
``Linear``/``ReLU`` layers, then ``Destandardize`` (``z * s + m``). Because the
layers next to them are linear,

    W ((x - mu) / sigma) + b  =  W' x + b'    with  W' = W / sigma,  b' = b - W' mu
    s (W z + b) + m           =  W" z + b"    with  W" = s W,         b" = s b + m

(``W / sigma`` divides column ``j`` by ``sigma_j``; ``s W`` multiplies row ``i`` by
``s_i``). The folded model takes raw features, returns raw-scale targets and is a
plain ``nn.Sequential`` of ``Linear`` and ``ReLU`` layers, so the default linear
model exports as a single ONNX ``Gemm``. The new weights are computed in float64
and rounded once to float32.

Folding is exact in real numbers but not in float32: a column whose mean is far
from zero relative to its spread (a calendar year: mean 1954, std 4.6) makes
``W' x`` and ``b'`` large and nearly cancelling, and their rounding errors can
exceed the export's equivalence tolerance. :func:`fold_standardization` therefore
checks each candidate against the unfolded model on the export's random rows and
keeps a standardization as separate operations (``Sub``/``Div`` before the first
``Gemm``, ``Mul``/``Add`` after the last) when folding it would not stay well
within the tolerance. :func:`folding_note` says which was kept and why.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from pomona.export.equivalence import compare_outputs, evaluation_rows, predict_eager
from pomona.runtime.errors import ArtifactError
from pomona.train.model import Destandardize, Standardize

__all__ = ["FOLD_MARGIN", "fold_standardization", "folding_note"]

#: A fold is used only if its largest difference from the unfolded model on the
#: export's random rows is at most this share of the equivalence tolerance, leaving
#: the rest for the artifacts' own rounding.
FOLD_MARGIN = 0.25
_PROBE_BATCH = 4096


def _float64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(device="cpu", dtype=torch.float64).numpy()


def _check_layout(model: nn.Sequential) -> list[nn.Module]:
    layers = list(model)
    if len(layers) < 2 or not isinstance(layers[0], Standardize):
        raise ArtifactError("model does not start with a Standardize layer")
    if not isinstance(layers[1], nn.Linear):
        raise ArtifactError("the layer after Standardize is not nn.Linear")
    body = layers[1:-1] if isinstance(layers[-1], Destandardize) else layers[1:]
    for layer in body:
        if not isinstance(layer, nn.Linear | nn.ReLU):
            raise ArtifactError(f"cannot export a {type(layer).__name__} layer")
        for param in layer.parameters():
            if not torch.isfinite(param).all():
                raise ArtifactError("the model has non-finite weights (training diverged?)")
    for scale in (layers[0], layers[-1]):
        if isinstance(scale, Standardize | Destandardize):
            mean, std = _float64(scale.mean), _float64(scale.std)
            if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
                raise ArtifactError(
                    "normalization statistics must be finite with std > 0 "
                    f"(mean={mean.tolist()}, std={std.tolist()})"
                )
    return layers


def _linear(weight: np.ndarray, bias: np.ndarray) -> nn.Linear:
    largest = float(np.finfo(np.float32).max)
    if not (np.abs(weight).max() <= largest and np.abs(bias).max() <= largest):
        raise ArtifactError("folding the normalization into the first layer overflows float32")
    linear = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
        linear.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
    return linear


def _fold_into(
    layer: nn.Linear,
    inputs: tuple[np.ndarray, np.ndarray] | None,
    outputs: tuple[np.ndarray, np.ndarray] | None,
) -> nn.Linear:
    """``layer`` with ``(x - mu) / sigma`` before it and ``z * s + m`` after it folded in.

    ``inputs`` is ``(mu, sigma)`` and ``outputs`` is ``(m, s)``, either None to leave
    that side alone. Computed in float64, rounded to float32 once.
    """
    weight = _float64(layer.weight)  # [out, in]
    bias = _float64(layer.bias) if layer.bias is not None else np.zeros(weight.shape[0])
    if inputs is not None:
        mean, std = inputs
        weight = weight / std  # broadcasts over rows: column j / std_j
        bias = bias - weight @ mean
    if outputs is not None:
        mean, std = outputs
        weight = std[:, None] * weight  # row i * s_i
        bias = std * bias + mean
    return _linear(weight, bias)


def _statistics(layer: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    return _float64(layer.mean), _float64(layer.std)  # type: ignore[arg-type]


def _folded(layers: list[nn.Module], features: bool, targets: bool) -> nn.Sequential:
    """A copy of the model with the chosen standardizations folded into their Linear."""
    standardize = layers[0]
    output = layers[-1] if isinstance(layers[-1], Destandardize) else None
    body = [copy.deepcopy(layer) for layer in layers[1 : len(layers) - (output is not None)]]
    linears = [i for i, layer in enumerate(body) if isinstance(layer, nn.Linear)]
    first, last = linears[0], linears[-1]
    inputs = _statistics(standardize) if features else None
    outputs = _statistics(output) if targets and output is not None else None
    if first == last:
        body[first] = _fold_into(body[first], inputs, outputs)  # type: ignore[arg-type]
    else:
        body[first] = _fold_into(body[first], inputs, None)  # type: ignore[arg-type]
        body[last] = _fold_into(body[last], None, outputs)  # type: ignore[arg-type]
    head = [] if features else [copy.deepcopy(standardize)]
    tail = [] if output is None or targets else [copy.deepcopy(output)]
    return nn.Sequential(*head, *body, *tail).eval()


def _within_margin(model: nn.Sequential, candidate: nn.Sequential) -> bool:
    """Whether ``candidate`` matches ``model`` on the export's random rows, with room to spare."""
    mean, std = _statistics(model[0])
    rows = evaluation_rows(mean, std)
    reference = predict_eager(model, rows, _PROBE_BATCH)
    outputs = {_PROBE_BATCH: predict_eager(candidate, rows, _PROBE_BATCH)}
    check = compare_outputs("folded", outputs, reference)
    return check.worst_fraction_of_tolerance <= FOLD_MARGIN


def fold_standardization(model: nn.Sequential) -> nn.Sequential:
    """The model to export: a new model computing the same function as ``model``.

    Both standardizations are folded into the first and last ``nn.Linear`` when float32
    keeps the result within :data:`FOLD_MARGIN` of the equivalence tolerance; otherwise
    the feature standardization, and if need be the target one too, stays as a separate
    layer (see :func:`folding_note`). ``model`` is left unchanged. Raises
    :class:`ArtifactError` when the model does not have the layout of
    :func:`pomona.train.model.build_model` (older ones without ``Destandardize`` too),
    has a non-positive or non-finite ``std``, or has non-finite weights.
    """
    layers = _check_layout(model)
    was_training = model.training
    try:
        for features, targets in ((True, True), (False, True)):
            candidate = _folded(layers, features, targets)
            if _within_margin(model, candidate):
                return candidate
        return _folded(layers, features=False, targets=False)
    finally:
        model.train(was_training)


def _far_from_zero(standardize: nn.Module) -> str:
    mean, std = _statistics(standardize)
    j = int(np.argmax(np.abs(mean) / std))
    return f"feature {j + 1} has mean {mean[j]:.6g} and std {std[j]:.3g}"


def folding_note(exported: nn.Sequential) -> str | None:
    """Which standardization :func:`fold_standardization` kept as separate operations, and why.

    None when both were folded (the usual case).
    """
    kept_features = isinstance(exported[0], Standardize)
    kept_targets = isinstance(exported[-1], Destandardize)
    if not (kept_features or kept_targets):
        return None
    kept = " and ".join(
        name for name, flag in (("feature", kept_features), ("target", kept_targets)) if flag
    )
    why = f" ({_far_from_zero(exported[0])})" if kept_features else ""
    return (
        f"{kept} standardization kept as separate operations: folding it into the weights "
        f"would lose float32 precision beyond the equivalence tolerance{why}"
    )
