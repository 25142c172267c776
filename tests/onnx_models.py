"""Tiny ONNX models built with ``onnx.helper`` (no torch), for runtime and serving tests.

They follow the artifact contract: input ``features`` float32 ``[batch, F]``,
output ``predictions`` float32 ``[batch, T]``, names in ``metadata_props``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pomona.runtime.artifacts import (
    FEATURE_NAMES_KEY,
    FORMAT_KEY,
    FORMAT_VERSION,
    INPUT_NAME,
    OUTPUT_NAME,
    TARGET_NAMES_KEY,
)

CROP_FEATURES = ["temp", "rainfall", "humidity"]
CROP_TARGETS = ["apples", "oranges"]
# Exactly representable weights: outputs are exact in float32 for small integer inputs.
CROP_WEIGHTS = np.array([[0.5, -0.25], [0.75, 1.0], [0.125, 0.5]], dtype=np.float32)  # [F, T]
CROP_BIAS = np.array([1.0, -2.0], dtype=np.float32)


def make_linear_onnx(
    path: Path,
    weights: np.ndarray = CROP_WEIGHTS,
    bias: np.ndarray = CROP_BIAS,
    feature_names: Sequence[str] = CROP_FEATURES,
    target_names: Sequence[str] = CROP_TARGETS,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``predictions = features @ weights + bias`` as a single-Gemm ONNX file."""
    weights = np.asarray(weights, dtype=np.float32)
    bias = np.asarray(bias, dtype=np.float32)
    n_features, n_targets = weights.shape
    graph = helper.make_graph(
        [helper.make_node("Gemm", [INPUT_NAME, "W", "b"], [OUTPUT_NAME])],
        "pomona",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", n_targets])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    metadata = {
        FORMAT_KEY: str(FORMAT_VERSION),
        FEATURE_NAMES_KEY: json.dumps(list(feature_names)),
        TARGET_NAMES_KEY: json.dumps(list(target_names)),
        **(extra_metadata or {}),
    }
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))
    return path


def reference_predictions(
    x: np.ndarray, weights: np.ndarray = CROP_WEIGHTS, bias: np.ndarray = CROP_BIAS
) -> np.ndarray:
    """What :func:`make_linear_onnx`'s model returns, computed with numpy in float32."""
    return (np.asarray(x, dtype=np.float32) @ weights + bias).astype(np.float32)
