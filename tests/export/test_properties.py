"""Folded exports agree with the trained model: property-based, then exactly on exact numbers.

These tests run the export steps in memory (fold, ONNX export, TorchScript) and
compare with the same tolerance constants ``pomona export`` uses. Every artifact runs
the way the runtime runs it: eager is the reference; TorchScript; ``model.onnx`` on
both runtime backends, onnxruntime and numpy.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pomona.export.equivalence import (
    NUMPY_CHECK,
    check_equivalence,
    compare_outputs,
    predict_eager,
    predict_runtime,
    predict_torchscript,
)
from pomona.export.fold import fold_standardization
from pomona.export.onnx_export import export_onnx, serialize_onnx
from pomona.export.torchscript import load_torchscript, torchscript_bytes
from pomona.runtime.artifacts import ATOL, ONNX_FILE, RTOL, TORCHSCRIPT_FILE
from pomona.runtime.predictor import Predictor
from pomona.train.model import build_model
from tests.export.checkpoints import make_model

BATCH_SIZES = (1, 7, 4096)


@contextmanager
def _artifacts(model: nn.Sequential) -> Iterator[dict[str, object]]:
    """Fold, export and load back the artifacts: name -> predict(rows, batch_size).

    ``model.onnx`` is loaded from a file by the runtime's Predictor, as export does, once
    per backend.
    """
    folded = fold_standardization(model)
    n_features = model[0].mean.numel()
    scripted = load_torchscript(torchscript_bytes(folded))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ONNX_FILE
        path.write_bytes(serialize_onnx(export_onnx(folded, n_features, {})))
        predictor = Predictor(path, providers=["CPUExecutionProvider"], backend="onnxruntime")
        numpy = Predictor(path, backend="numpy")
        yield {
            TORCHSCRIPT_FILE: lambda x, b: predict_torchscript(scripted, x, b),
            ONNX_FILE: lambda x, b: predict_runtime(predictor, x, b),
            NUMPY_CHECK: lambda x, b: predict_runtime(numpy, x, b),
        }


@st.composite
def trained_models(draw: st.DrawFn, max_hidden_layers: int = 2) -> nn.Sequential:
    n_features = draw(st.integers(1, 5))
    n_targets = draw(st.integers(1, 3))
    hidden = draw(st.lists(st.integers(1, 12), max_size=max_hidden_layers))
    # sigma from 1e-4 to 1e4; the mean up to 20 sigma away from zero.
    log_std = draw(st.lists(st.floats(-4, 4), min_size=n_features, max_size=n_features))
    offsets = draw(st.lists(st.floats(-20, 20), min_size=n_features, max_size=n_features))
    std = [10.0**e for e in log_std]
    mean = [s * k for s, k in zip(std, offsets, strict=True)]
    seed = draw(st.integers(0, 2**16))
    weight_scale = 10.0 ** draw(st.floats(-2, 2))
    return make_model(n_features, n_targets, hidden, mean, std, seed, weight_scale)


def _rows(model: nn.Sequential, n_rows: int, seed: int, spread: float) -> np.ndarray:
    """float64 rows around the model's mean, cast to float32 as every caller must."""
    mean = model[0].mean.double().numpy()
    std = model[0].std.double().numpy()
    rng = np.random.default_rng(seed)
    rows = mean + std * spread * rng.standard_normal((n_rows, mean.size))
    return rows.astype(np.float32)


@settings(max_examples=10, deadline=None, derandomize=True, database=None)
@given(
    model=trained_models(),
    n_rows=st.one_of(st.just(1), st.integers(2, 64), st.integers(1000, 5000)),
    spread=st.sampled_from([1.0, 10.0]),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_exports_agree_with_the_trained_model(
    model: nn.Sequential, n_rows: int, spread: float, seed: int, data: st.DataObject
) -> None:
    middle = data.draw(st.integers(1, n_rows), label="batch size")
    batch_sizes = sorted({1, middle, n_rows})
    rows = _rows(model, n_rows, seed, spread)
    with _artifacts(model) as artifacts:
        report = check_equivalence(model, artifacts, rows, batch_sizes=batch_sizes)
    assert report.passed and report.batch_sizes == tuple(batch_sizes)
    assert [c.artifact for c in report.checks] == [TORCHSCRIPT_FILE, ONNX_FILE, NUMPY_CHECK]


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(model=trained_models(max_hidden_layers=3), seed=st.integers(0, 2**16))
def test_folding_preserves_the_function(model: nn.Sequential, seed: int) -> None:
    rows = _rows(model, 512, seed, spread=10.0)
    reference = predict_eager(model, rows, 512)
    folded = fold_standardization(model)
    assert not any(type(layer).__name__ == "Standardize" for layer in folded)
    check = compare_outputs("folded", {512: predict_eager(folded, rows, 512)}, reference)
    assert check.passed, check.describe()


def _exact_model(hidden: Sequence[int], power_of_two_std: bool) -> nn.Sequential:
    """Weights k/8, biases k/4, integer means and power-of-two std: every sum is exact."""
    generator = torch.Generator().manual_seed(len(hidden))
    n_features, n_targets = 4, 3
    model = build_model(n_features, n_targets, list(hidden))
    with torch.no_grad():
        for layer in model[1:]:
            if isinstance(layer, nn.Linear):
                layer.weight.copy_(
                    torch.randint(-8, 9, layer.weight.shape, generator=generator) / 8
                )
                layer.bias.copy_(torch.randint(-8, 9, layer.bias.shape, generator=generator) / 4)
        if power_of_two_std:
            model[0].mean.copy_(torch.tensor([3.0, -5.0, 0.0, 12.0]))
            model[0].std.copy_(torch.tensor([2.0, 0.5, 4.0, 1.0]))
    return model.eval()


@pytest.mark.parametrize(
    ("hidden", "power_of_two_std"),
    [((), False), ((), True), ((4,), True), ((3, 5), False)],
)
def test_exactly_representable_models_give_exact_outputs(
    hidden: tuple[int, ...], power_of_two_std: bool
) -> None:
    model = _exact_model(hidden, power_of_two_std)
    folded = fold_standardization(model)
    std, first = model[0].std, model[1]
    assert torch.equal(folded[0].weight, first.weight / std)
    assert torch.equal(folded[0].bias, first.bias - (first.weight / std) @ model[0].mean)

    rows = np.random.default_rng(0).integers(-16, 17, (4096 + 7 + 3, 4)).astype(np.float32)
    reference = predict_eager(model, rows, 4096)
    assert np.array_equal(reference, predict_eager(model, rows, 1))
    with _artifacts(model) as artifacts:
        assert set(artifacts) == {TORCHSCRIPT_FILE, ONNX_FILE, NUMPY_CHECK}
        for name, predict in artifacts.items():
            for batch_size in BATCH_SIZES:
                out = predict(rows, batch_size)  # type: ignore[operator]
                assert out.dtype == np.float32
                assert np.array_equal(out, reference), (name, batch_size)


def test_tolerance_constants_are_the_documented_ones() -> None:
    assert (ATOL, RTOL) == (1e-5, 1e-5)
