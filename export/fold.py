"""Fold the standardization layer into the first ``nn.Linear``.

A trained model is ``Standardize`` (``(x - mean) / std``) followed by ``Linear``
or ``Linear``/``ReLU`` layers. Because the first layer after it is linear,

    W ((x - mu) / sigma) + b  =  W' x + b'    with  W' = W / sigma,  b' = b - W' mu

(``W / sigma`` divides column ``j`` by ``sigma_j``). The folded model takes raw
features and is a plain ``nn.Sequential`` of ``Linear`` and ``ReLU`` layers, so
the default linear model exports as a single ONNX ``Gemm``. The new weights are
computed in float64 and rounded once to float32.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pomona.runtime.errors import ArtifactError
from pomona.train.model import Standardize

__all__ = ["fold_standardization"]


def _float64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(device="cpu", dtype=torch.float64).numpy()


def fold_standardization(model: nn.Sequential) -> nn.Sequential:
    """Return a new model without its ``Standardize`` layer, computing the same function.

    ``model`` is left unchanged. Raises :class:`ArtifactError` when the model does
    not have the layout of :func:`pomona.train.model.build_model`, has a
    non-positive or non-finite ``std``, or has non-finite weights.
    """
    layers = list(model)
    if len(layers) < 2 or not isinstance(layers[0], Standardize):
        raise ArtifactError("model does not start with a Standardize layer")
    if not isinstance(layers[1], nn.Linear):
        raise ArtifactError("the layer after Standardize is not nn.Linear")
    for layer in layers[1:]:
        if not isinstance(layer, nn.Linear | nn.ReLU):
            raise ArtifactError(f"cannot export a {type(layer).__name__} layer")
        for param in layer.parameters():
            if not torch.isfinite(param).all():
                raise ArtifactError("the model has non-finite weights (training diverged?)")

    standardize, first = layers[0], layers[1]
    mean, std = _float64(standardize.mean), _float64(standardize.std)
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise ArtifactError(
            "normalization statistics must be finite with std > 0 "
            f"(mean={mean.tolist()}, std={std.tolist()})"
        )
    weight = _float64(first.weight)  # [out, in]
    bias = _float64(first.bias) if first.bias is not None else np.zeros(weight.shape[0])
    folded_weight = weight / std  # broadcasts over rows: column j / std_j
    folded_bias = bias - folded_weight @ mean
    largest = float(np.finfo(np.float32).max)
    if not (np.abs(folded_weight).max() <= largest and np.abs(folded_bias).max() <= largest):
        raise ArtifactError("folding the normalization into the first layer overflows float32")
    w32, b32 = folded_weight.astype(np.float32), folded_bias.astype(np.float32)

    linear = nn.Linear(first.in_features, first.out_features)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w32))
        linear.bias.copy_(torch.from_numpy(b32))

    rest: list[nn.Module] = []
    for layer in layers[2:]:
        if isinstance(layer, nn.Linear):
            copy = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
            copy.load_state_dict(layer.state_dict())
            rest.append(copy)
        else:
            rest.append(nn.ReLU())
    return nn.Sequential(linear, *rest).eval()
