"""What the server says about its model: the name it serves, metadata, Triton's model config.

- :func:`served_name`: the name ``pomona export --name`` gave the model (the ONNX graph
  name of a Pomona model), so a server needs no ``--name`` to match its export.
- :func:`model_metadata`: the Open Inference Protocol's model metadata, with the model's
  sha256 and format in ``parameters`` so a client can tell which model answered.
- :func:`model_config`: ``GET /v2/models/{name}/config``, shaped as Triton's model
  configuration JSON (what ``tritonclient``'s ``get_model_config`` reads).
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pomona.runtime.artifacts import FORMAT_KEY
from pomona.runtime.predictor import Predictor

__all__ = ["model_config", "model_metadata", "pomona_version", "served_name"]

#: Names ``pomona export --name`` accepts; anything else is not taken as a served name.
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def pomona_version() -> str:
    """This package's version, as the server metadata reports it."""
    try:
        return version("pomona")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


def served_name(predictor: Predictor, default: str) -> str:
    """The model's exported name (a Pomona model's graph name), else ``default``."""
    if FORMAT_KEY not in predictor.metadata:
        return default
    name = predictor.graph_name
    return name if _NAME.fullmatch(name or "") else default


def model_metadata(predictor: Predictor, name: str, version: str, sha256: str) -> dict[str, Any]:
    """The Open Inference Protocol model metadata of the served model."""
    return {
        "name": name,
        "versions": [version],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": predictor.input_name, "datatype": "FP32", "shape": [-1, predictor.n_features]}
        ],
        "outputs": [
            {"name": predictor.output_name, "datatype": "FP32", "shape": [-1, predictor.n_targets]}
        ],
        "parameters": {
            "feature_names": ",".join(predictor.feature_names),
            "target_names": ",".join(predictor.target_names),
            "version": version,
            "sha256": sha256,
            "format": predictor.metadata.get(FORMAT_KEY, ""),
        },
    }


def model_config(predictor: Predictor, name: str) -> dict[str, Any]:
    """Triton's model configuration (JSON form) of the served model; batch dimension -1."""
    return {
        "name": name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": 0,
        "input": [
            {
                "name": predictor.input_name,
                "data_type": "TYPE_FP32",
                "format": "FORMAT_NONE",
                "dims": [-1, predictor.n_features],
            }
        ],
        "output": [
            {
                "name": predictor.output_name,
                "data_type": "TYPE_FP32",
                "dims": [-1, predictor.n_targets],
            }
        ],
        "parameters": {},
    }
