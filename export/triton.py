"""A Triton Inference Server model repository entry for the exported ONNX file.

Layout, loadable by Triton (and KServe's Triton runtime) as is::

    REPO/<name>/config.pbtxt
    REPO/<name>/1/model.onnx

The configuration uses the onnxruntime backend with dynamic batching; the batch
dimension is implicit in Triton, so ``dims`` name the per-row shapes ``[F]`` and
``[T]``.
"""

from __future__ import annotations

import json
import re

__all__ = ["MAX_BATCH_SIZE", "VERSION", "config_pbtxt", "valid_model_name"]

#: Largest batch Triton may form from queued requests (the largest batch size the
#: equivalence check runs).
MAX_BATCH_SIZE = 4096
#: The model version folder.
VERSION = "1"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def valid_model_name(name: str) -> bool:
    """A name that is one safe path component (letters, digits, ``_``, ``.``, ``-``)."""
    return _NAME.fullmatch(name) is not None and name not in {".", ".."}


def _quote(text: str) -> str:
    return json.dumps(text)  # a protobuf text-format string literal for plain names


def config_pbtxt(
    name: str,
    n_features: int,
    n_targets: int,
    input_name: str = "features",
    output_name: str = "predictions",
    max_batch_size: int = MAX_BATCH_SIZE,
) -> str:
    """``config.pbtxt`` text in Triton's ``ModelConfig`` protobuf text format."""
    return f"""name: {_quote(name)}
backend: "onnxruntime"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{
    name: {_quote(input_name)}
    data_type: TYPE_FP32
    dims: [ {n_features} ]
  }}
]
output [
  {{
    name: {_quote(output_name)}
    data_type: TYPE_FP32
    dims: [ {n_targets} ]
  }}
]
dynamic_batching {{ }}
version_policy: {{ latest: {{ num_versions: 1 }} }}
"""
