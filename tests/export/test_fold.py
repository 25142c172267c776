"""Folding the standardization into the first layer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pomona.export.fold import fold_standardization
from pomona.runtime.errors import ArtifactError
from tests.export.checkpoints import make_model


def test_folded_weights_follow_the_formula_in_float64() -> None:
    model = make_model(3, 2, (), mean=[85.0, 85.0, 55.0], std=[12.0, 30.0, 12.0])
    folded = fold_standardization(model)
    assert [type(layer) for layer in folded] == [nn.Linear]
    w = model[1].weight.double()
    mean, std = model[0].mean.double(), model[0].std.double()
    expected_w = w / std
    expected_b = model[1].bias.double() - expected_w @ mean
    assert torch.equal(folded[0].weight, expected_w.float())
    assert torch.equal(folded[0].bias, expected_b.float())


def test_mlp_keeps_later_layers_and_leaves_the_model_alone() -> None:
    model = make_model(3, 2, (5, 4), mean=[1.0, 2.0, 3.0], std=[2.0, 3.0, 4.0])
    before = {key: value.clone() for key, value in model.state_dict().items()}
    folded = fold_standardization(model)
    assert [type(layer) for layer in folded] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert torch.equal(folded[2].weight, model[3].weight)
    assert folded[2].weight is not model[3].weight
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_unusable_statistics_are_rejected(bad: float) -> None:
    model = make_model(2, 1, (), mean=[0.0, 0.0], std=[1.0, bad])
    with pytest.raises(ArtifactError, match="std > 0"):
        fold_standardization(model)


def test_overflow_and_nonfinite_weights_are_rejected() -> None:
    model = make_model(2, 1, (), mean=[0.0, 0.0], std=[1.0, 1e-40])
    with pytest.raises(ArtifactError, match="overflows float32"):
        fold_standardization(model)
    model = make_model(2, 1, (3,))
    with torch.no_grad():
        model[3].weight[0, 0] = math.nan
    with pytest.raises(ArtifactError, match="non-finite weights"):
        fold_standardization(model)
