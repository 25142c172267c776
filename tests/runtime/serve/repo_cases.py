"""Model repositories for serving tests: hand-made ONNX versions with distinguishable outputs.

Version ``v`` of the model at index ``i`` is the crop model of :mod:`tests.onnx_models`
with its bias shifted by ``offset(i, v)``, so every response tells which model and
version answered it. Versions are published as ``pomona export`` does: written into a
hidden folder, then renamed into place.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from pomona.runtime.artifacts import MANIFEST_FILE, ONNX_FILE
from pomona.runtime.files import file_sha256
from tests.onnx_models import CROP_BIAS, CROP_WEIGHTS, make_linear_onnx

MODELS = ("apples", "oranges")


def offset(model: str, version: int) -> float:
    """The bias shift of one model version: 100 x version, plus 1000 for the second model."""
    return 1000.0 * MODELS.index(model) + 100.0 * version if model in MODELS else 100.0 * version


def bias(model: str, version: int) -> np.ndarray:
    return (CROP_BIAS + np.float32(offset(model, version))).astype(np.float32)


def which_version(model: str, predictions: np.ndarray, x: np.ndarray) -> int:
    """The version whose bias produced ``predictions`` for ``x`` (exact for small integers)."""
    base = np.asarray(x, dtype=np.float32) @ CROP_WEIGHTS + CROP_BIAS
    shift = float(np.asarray(predictions)[0, 0] - base[0, 0])
    version = round((shift - offset(model, 0)) / 100.0)
    assert shift == offset(model, version), f"{predictions} is from no version of {model}"
    return version


def write_manifest(folder: Path, *files: str) -> None:
    listed = {name: {"sha256": file_sha256(folder / name)} for name in files or (ONNX_FILE,)}
    (folder / MANIFEST_FILE).write_text(json.dumps({"format": 1, "artifacts": listed}))


def write_version(folder: Path, model: str, version: int, *, manifest: bool = True) -> Path:
    """Write one version's files straight into ``folder`` (not atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    make_linear_onnx(folder / ONNX_FILE, bias=bias(model, version))
    if manifest:
        write_manifest(folder)
    return folder


def publish_version(repo: Path, model: str, version: int) -> Path:
    """Publish one version as ``pomona export`` does: staged, then renamed into place."""
    model_dir = repo / model
    model_dir.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    write_version(staged, model, version)
    target = model_dir / str(version)
    os.rename(staged, target)
    return target


def publish_broken(repo: Path, model: str, version: int) -> Path:
    """Publish a version whose model.onnx is garbage but matches its manifest."""
    model_dir = repo / model
    model_dir.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    (staged / ONNX_FILE).write_bytes(b"not an onnx model")
    write_manifest(staged)
    target = model_dir / str(version)
    os.rename(staged, target)
    return target


def make_repository(repo: Path, versions: tuple[int, ...] = (1, 2)) -> Path:
    """Two models, ``apples`` and ``oranges``, each with ``versions``."""
    for model in MODELS:
        for version in versions:
            publish_version(repo, model, version)
    return repo
