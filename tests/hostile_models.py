"""Hostile variants of the tiny test model, built with the onnx package: a wrong output
width, weights in external data files, and manifests that do or do not cover them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx.external_data_helper import convert_model_to_external_data

from pomona.runtime.artifacts import MANIFEST_FILE, TARGET_NAMES_KEY
from tests.onnx_models import CROP_TARGETS, make_linear_onnx


def make_wide_output_onnx(path: Path) -> Path:
    """A model that declares ``[batch, 2]`` (apples, oranges) but returns ``[batch, 3]``."""
    make_linear_onnx(path, weights=np.ones((3, 3), np.float32), bias=np.zeros(3, np.float32))
    model = onnx.load(str(path))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 2
    for prop in model.metadata_props:
        if prop.key == TARGET_NAMES_KEY:
            prop.value = json.dumps(CROP_TARGETS)
    onnx.save_model(model, str(path))
    return path


def make_external_data_onnx(path: Path, location: str = "weights.bin") -> Path:
    """The crop model with every initializer stored in ``location`` beside it."""
    make_linear_onnx(path)
    model = onnx.load(str(path))
    convert_model_to_external_data(model, location=location, size_threshold=0)
    onnx.save_model(model, str(path))
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(folder: Path, files: dict[str, Path]) -> Path:
    """A manifest listing each name with the sha256 and size of the file given for it."""
    artifacts = {
        name: {"sha256": sha256_of(file), "size": file.stat().st_size}
        for name, file in files.items()
    }
    path = folder / MANIFEST_FILE
    path.write_text(json.dumps({"format": 1, "artifacts": artifacts}))
    return path
