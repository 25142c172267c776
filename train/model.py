"""The model: a standardization layer (statistics as buffers) then Linear or an MLP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["Standardize", "build_model"]


class Standardize(nn.Module):
    """``(x - mean) / std`` with ``mean`` and ``std`` stored as buffers.

    The statistics travel with the model (state dict, checkpoint, export), so a
    trained model always takes raw features.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def build_model(n_features: int, n_targets: int, hidden: Sequence[int] = ()) -> nn.Sequential:
    """``Standardize``, then ``Linear`` alone or ``Linear``/``ReLU`` layers of ``hidden`` sizes.

    Layer 0 is always the :class:`Standardize`; layer 1 is always the first ``nn.Linear``.
    """
    layers: list[nn.Module] = [Standardize(n_features)]
    width = n_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, n_targets))
    return nn.Sequential(*layers)
