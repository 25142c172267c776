"""The model: standardize the features, Linear or an MLP, then restore the targets' scale.

Both standardizations keep their statistics (from the training split) as buffers, so a
trained model takes raw features and returns raw-scale targets, while the weights in
between work on numbers near 1 whatever the data's units: the step size that suits one
data set suits the next.
"""

# No ``from __future__ import annotations``: TorchScript reads the buffers' class
# annotations when an export keeps a standardization unfolded, and needs them evaluated.
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["Destandardize", "Standardize", "build_model"]


class _ColumnStatistics(nn.Module):
    """Per-column ``mean`` and ``std`` as buffers (0 and 1 until set from the data)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_columns: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_columns))
        self.register_buffer("std", torch.ones(n_columns))


class Standardize(_ColumnStatistics):
    """``(x - mean) / std`` with ``mean`` and ``std`` stored as buffers.

    The statistics travel with the model (state dict, checkpoint, export), so a
    trained model always takes raw features.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Destandardize(_ColumnStatistics):
    """``z * std + mean``: standardized predictions back on the targets' scale.

    Checkpoints written before targets were standardized have no such layer; loading
    their state dict leaves it as the identity (mean 0, std 1), so they still load.
    """

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        for name in ("mean", "std"):
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def build_model(n_features: int, n_targets: int, hidden: Sequence[int] = ()) -> nn.Sequential:
    """``Standardize``, ``Linear`` alone or ``Linear``/``ReLU`` layers, then ``Destandardize``.

    Layer 0 is always the :class:`Standardize`; layer 1 is always the first ``nn.Linear``;
    layer -2 the last ``nn.Linear`` and layer -1 the :class:`Destandardize`.
    """
    layers: list[nn.Module] = [Standardize(n_features)]
    width = n_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers += [nn.Linear(width, n_targets), Destandardize(n_targets)]
    return nn.Sequential(*layers)
