"""What ``pomona info`` prints: a model's inputs, outputs, names, metadata, opset, manifest.

The IR version and opsets are read straight from the top level of the ONNX protobuf
(:mod:`pomona.runtime.onnx_proto`: onnxruntime does not expose them and the runtime does
not depend on the onnx package). The backend is the one ``pomona predict`` would use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pomona.runtime.artifacts import check_manifest
from pomona.runtime.backends import choose_backend
from pomona.runtime.errors import ArtifactError
from pomona.runtime.onnx_proto import read_header
from pomona.runtime.predictor import Predictor

__all__ = ["describe", "onnx_header"]


def onnx_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """IR version, opsets (domain -> version) and producer of an ONNX file."""
    try:
        return read_header(Path(path).read_bytes())
    except ValueError:
        return {"ir_version": None, "opset": {}, "producer": ""}


def describe(model: str | os.PathLike[str], backend: str = "auto") -> dict[str, Any]:
    """Everything ``pomona info`` shows, as plain JSON-ready data."""
    predictor = Predictor(model, check_manifest=False, backend=backend)
    path = predictor.path
    sha256 = predictor.sha256  # of the bytes loaded, not of a second read
    choice = choose_backend(backend, path)

    def tensors(items: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "type": t.type, "shape": list(t.shape)} for t in items]

    header = onnx_header(path)
    if header["ir_version"] is None and path.suffix != ".ort":  # ORT format: no protobuf
        raise ArtifactError(f"{path}: cannot read the ONNX header")
    return {
        "path": str(path),
        "sha256": sha256,
        "size": path.stat().st_size,
        "format": "ort" if path.suffix == ".ort" else "onnx",
        "manifest": check_manifest(path, sha256).as_dict(),
        **header,
        "backend": {"name": choice.name, "reason": choice.reason},
        "inputs": tensors(predictor.inputs),
        "outputs": tensors(predictor.outputs),
        "feature_names": predictor.feature_names,
        "target_names": predictor.target_names,
        "metadata": predictor.metadata,
        "providers": predictor.providers,
    }
