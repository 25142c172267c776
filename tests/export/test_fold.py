"""Folding the standardization into the first layer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pomona.export.equivalence import compare_outputs, evaluation_rows, predict_eager
from pomona.export.exporter import export_checkpoint
from pomona.export.fold import FOLD_MARGIN, fold_standardization, folding_note
from pomona.runtime.errors import ArtifactError
from pomona.train.checkpoint import load_checkpoint, model_from_checkpoint
from pomona.train.model import Standardize
from tests.conftest import run_pomona
from tests.export.checkpoints import (
    CROP_FEATURES,
    CROP_MEAN,
    CROP_STD,
    CROP_TARGETS,
    make_model,
    write_checkpoint,
)


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


# Target standardization: ``z * s + m`` after the last Linear.


@st.composite
def models_with_target_scale(draw: st.DrawFn) -> nn.Sequential:
    n_features, n_targets = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    hidden = draw(st.lists(st.integers(1, 8), max_size=2))
    std = [10.0 ** draw(st.floats(-3, 3)) for _ in range(n_features)]
    mean = [s * draw(st.floats(-5, 5)) for s in std]
    target_std = [10.0 ** draw(st.floats(-3, 6)) for _ in range(n_targets)]
    target_mean = [s * draw(st.floats(-20, 20)) for s in target_std]
    seed = draw(st.integers(0, 2**16))
    return make_model(
        n_features, n_targets, hidden, mean, std, seed,
        target_mean=target_mean, target_std=target_std,
    )  # fmt: skip


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(model=models_with_target_scale(), seed=st.integers(0, 2**16))
def test_target_standardization_is_folded_into_the_last_layer(
    model: nn.Sequential, seed: int
) -> None:
    mean, std = model[0].mean.double().numpy(), model[0].std.double().numpy()
    rows = evaluation_rows(mean, std, n_random=512, seed=seed)
    folded = fold_standardization(model)
    assert [type(layer) for layer in folded if not isinstance(layer, nn.ReLU)] == [nn.Linear] * sum(
        isinstance(layer, nn.Linear) for layer in model
    )
    assert folding_note(folded) is None
    check = compare_outputs("folded", {512: predict_eager(folded, rows, 512)},
                            predict_eager(model, rows, 512))  # fmt: skip
    assert check.passed, check.describe()


@pytest.mark.parametrize("hidden", [(), (3,)])
def test_target_fold_is_exact_for_representable_values(hidden: tuple[int, ...]) -> None:
    model = make_model(2, 2, hidden, mean=[4.0, -2.0], std=[2.0, 0.5],
                       target_mean=[152.0, -3.0], target_std=[64.0, 0.25])  # fmt: skip
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                layer.weight.copy_(torch.round(layer.weight * 8) / 8)
                layer.bias.copy_(torch.round(layer.bias * 4) / 4)
    folded = fold_standardization(model)
    last, output = model[-2], model[-1]
    scale = output.std[:, None]
    if not hidden:
        expected_w = scale * (last.weight / model[0].std)
        expected_b = output.std * (last.bias - (last.weight / model[0].std) @ model[0].mean)
        assert torch.equal(folded[-1].weight, expected_w)
        assert torch.equal(folded[-1].bias, expected_b + output.mean)
    else:
        assert torch.equal(folded[-1].weight, scale * last.weight)
        assert torch.equal(folded[-1].bias, output.std * last.bias + output.mean)
    rows = np.random.default_rng(0).integers(-8, 9, (64, 2)).astype(np.float32)
    assert np.array_equal(predict_eager(folded, rows, 64), predict_eager(model, rows, 64))


def test_a_column_far_from_zero_keeps_its_standardization() -> None:
    # Readings near 2000 that vary by 0.001: folding cancels 2,000,000-fold in float32.
    model = make_model(2, 1, (), mean=[2000.0, 3.0], std=[0.001, 2.0],
                       target_mean=[6e4], target_std=[3.5e3])  # fmt: skip
    folded = fold_standardization(model)
    assert isinstance(folded[0], Standardize)
    assert [type(layer) for layer in folded] == [Standardize, nn.Linear]  # target side folded
    note = folding_note(folded)
    assert note is not None and "feature standardization kept as separate operations" in note
    assert "feature 1 has mean 2000 and std 0.001" in note
    rows = evaluation_rows(model[0].mean.numpy(), model[0].std.numpy())
    check = compare_outputs("kept", {4096: predict_eager(folded, rows, 4096)},
                            predict_eager(model, rows, 4096))  # fmt: skip
    assert check.passed and check.worst_fraction_of_tolerance <= FOLD_MARGIN


def test_a_column_far_from_zero_exports_with_a_note(tmp_path: Path) -> None:
    model = make_model(2, 1, (), mean=[2000.0, 3.0], std=[0.001, 2.0],
                       target_mean=[6e4], target_std=[3.5e3])  # fmt: skip
    checkpoint = write_checkpoint(tmp_path / "checkpoint.pt", model, ["year", "x"], ["y"])
    result = run_pomona("export", "--checkpoint", checkpoint, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "Note: feature standardization kept as separate operations" in result.stderr
    assert "ONNX graph: Sub, Div, Gemm" in result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["equivalence"]["passed"] is True


def test_a_checkpoint_without_target_standardization_still_exports(tmp_path: Path) -> None:
    model = make_model(3, 2, (), CROP_MEAN, CROP_STD)
    old_state = {k: v for k, v in model.state_dict().items() if not k.startswith("2.")}
    assert set(old_state) == {"0.mean", "0.std", "1.weight", "1.bias"}
    checkpoint = write_checkpoint(
        tmp_path / "checkpoint.pt", model, CROP_FEATURES, CROP_TARGETS, model_state=old_state
    )
    result = export_checkpoint(checkpoint, tmp_path / "out")
    assert result.onnx_ops == ("Gemm",) and result.fold_note is None
    rebuilt = model_from_checkpoint(load_checkpoint(checkpoint))
    assert rebuilt[-1].mean.tolist() == [0.0, 0.0] and rebuilt[-1].std.tolist() == [1.0, 1.0]


def _offset_data(path: Path, offset: float, rows: int = 400) -> Path:
    """Crop-like rows whose first feature sits ``offset`` away from zero with spread 1."""
    rng = np.random.default_rng(5)
    x = rng.normal([offset, 90.0, 55.0], [1.0, 30.0, 12.0], size=(rows, 3))
    y = (x - [offset, 0, 0]) @ np.array([[2.0, -1.0], [0.9, 0.8], [0.6, 0.4]])
    y += rng.normal(0, 1, (rows, 2))
    lines = ["temp,rainfall,humidity,apples,oranges"]
    lines += [",".join(repr(float(v)) for v in row) for row in np.hstack([x, y]).astype(np.float32)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_trained_models_on_both_sides_of_the_fold_limit_export_equivalent(tmp_path: Path) -> None:
    # Real trained models, a feature ever farther from zero: folding it cancels more
    # digits in float32, until the exporter keeps the standardization instead.
    from pomona.train.config import TrainConfig
    from pomona.train.loop import train

    folded_at: dict[float, bool] = {}
    for offset in (1e2, 1e5):
        data = _offset_data(tmp_path / f"d{offset:g}.csv", offset)
        out = tmp_path / f"run{offset:g}"
        config = TrainConfig(data=str(data), epochs=3, device="cpu", out=str(out), threads=1)
        train(config)
        result = export_checkpoint(out / "checkpoint.pt", out)
        assert result.report.passed
        assert max(c.worst_fraction_of_tolerance for c in result.report.checks) <= 1
        folded_at[offset] = result.fold_note is None
        assert (result.onnx_ops == ("Gemm",)) == folded_at[offset]
    assert folded_at == {1e2: True, 1e5: False}
