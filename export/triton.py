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
import os
import re
import tempfile
from pathlib import Path

from pomona.runtime.artifacts import INPUT_NAME, ONNX_FILE, OUTPUT_NAME
from pomona.runtime.files import atomic_write_bytes

__all__ = [
    "CONFIG_FILE",
    "MAX_BATCH_SIZE",
    "VERSION",
    "config_pbtxt",
    "place_entry",
    "stage_entry",
    "valid_model_name",
]

#: Largest batch Triton may form from queued requests (the largest batch size the
#: equivalence check runs).
MAX_BATCH_SIZE = 4096
#: The model version folder.
VERSION = "1"
#: The model configuration, beside the version folder.
CONFIG_FILE = "config.pbtxt"
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
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
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


def stage_entry(repo: Path, name: str, onnx_bytes: bytes, n_features: int, n_targets: int) -> Path:
    """Write the entry into a new temporary folder inside ``repo``; return that folder.

    :func:`place_entry` then moves its files into ``repo/name``; the caller removes
    the temporary folder afterwards (or after a failure).
    """
    staged = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=repo))
    atomic_write_bytes(staged / CONFIG_FILE, config_pbtxt(name, n_features, n_targets).encode())
    (staged / VERSION).mkdir()
    atomic_write_bytes(staged / VERSION / ONNX_FILE, onnx_bytes)
    return staged


def place_entry(staged: Path, model_dir: Path) -> list[Path]:
    """Move a staged entry's files into ``model_dir`` with ``os.replace``, the model first."""
    (model_dir / VERSION).mkdir(parents=True, exist_ok=True)
    placed = []
    for relative in (Path(VERSION) / ONNX_FILE, Path(CONFIG_FILE)):
        os.replace(staged / relative, model_dir / relative)
        placed.append(model_dir / relative)
    return placed
