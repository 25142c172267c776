"""The numpy backend equals onnxruntime within the contract's tolerance, on random models.

Random linear and MLP graphs in the layout ``pomona export`` writes (``Gemm`` with
``transB=1``, ``Relu``, and the unfolded standardizations ``Sub``/``Div`` and
``Mul``/``Add``), batch sizes from 1 to large; the tolerance is
:func:`pomona.runtime.artifacts.allowed_difference`, the one every export is held to.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np
import onnx
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from pomona.runtime.artifacts import INPUT_NAME, ONNX_FILE, OUTPUT_NAME, allowed_difference
from pomona.runtime.predictor import Predictor


@st.composite
def graphs(draw: st.DrawFn) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """A random exported-layout model, and the mean and std its rows are drawn around."""
    n_features = draw(st.integers(1, 8))
    widths = [n_features, *draw(st.lists(st.integers(1, 32), max_size=3)), draw(st.integers(1, 3))]
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    scale = 10.0 ** draw(st.floats(-2, 2))
    # As in export: sigma from 1e-2 to 1e2, the mean up to 20 sigma from zero (farther,
    # export keeps the standardization unfolded: float32 could not hold the folded one).
    std = 10.0 ** rng.uniform(-2, 2, n_features)
    mean = std * rng.uniform(-20, 20, n_features)
    keep_features, keep_targets = draw(st.booleans()), draw(st.booleans())
    nodes, arrays, current = [], {}, INPUT_NAME
    if keep_features:
        arrays |= {"mean": mean, "std": std}
        nodes += [helper.make_node("Sub", [current, "mean"], ["c"]),
                  helper.make_node("Div", ["c", "std"], ["s"])]  # fmt: skip
        current = "s"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        bound = scale / fan_in**0.5
        if not keep_features and i == 0:  # folded: the weights see raw features
            arrays[f"W{i}"] = rng.uniform(-bound, bound, (fan_out, fan_in)) / std
        else:
            arrays[f"W{i}"] = rng.uniform(-bound, bound, (fan_out, fan_in))
        arrays[f"b{i}"] = rng.uniform(-bound, bound, fan_out)
        if not keep_features and i == 0:
            arrays[f"b{i}"] = arrays[f"b{i}"] - arrays[f"W{i}"] @ mean
        nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"b{i}"], [f"h{i}"], transB=1))
        current = f"h{i}"
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"]))
            current = f"r{i}"
    if keep_targets:
        arrays |= {
            "t_std": rng.uniform(0.1, 50, widths[-1]),
            "t_mean": rng.uniform(-50, 50, widths[-1]),
        }
        nodes += [helper.make_node("Mul", [current, "t_std"], ["m"]),
                  helper.make_node("Add", ["m", "t_mean"], ["out"])]  # fmt: skip
        current = "out"
    nodes[-1].output[0] = OUTPUT_NAME
    graph = helper.make_graph(
        nodes,
        "pomona",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", widths[-1]])],
        initializer=[numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model, mean, std


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(
    drawn=graphs(),
    n_rows=st.one_of(st.just(1), st.integers(2, 64), st.integers(1000, 20_000)),
    spread=st.sampled_from([1.0, 10.0]),
    seed=st.integers(0, 2**16),
)
def test_numpy_backend_equals_onnxruntime(
    drawn: tuple[onnx.ModelProto, np.ndarray, np.ndarray], n_rows: int, spread: float, seed: int
) -> None:
    model, mean, std = drawn
    rows = mean + spread * std * np.random.default_rng(seed).standard_normal((n_rows, mean.size))
    x = rows.astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ONNX_FILE
        onnx.save_model(model, str(path))
        expected = Predictor(path, backend="onnxruntime", intra_op_threads=1).predict(x)
        got = Predictor(path, backend="numpy").predict(x)
    assert got.dtype == np.float32 and got.shape == expected.shape
    diff = np.abs(got.astype(np.float64) - expected)
    worst = float((diff / allowed_difference(expected)).max())
    assert worst <= 1, f"numpy differs from onnxruntime by {worst:.3g} of the tolerance"
