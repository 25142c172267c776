"""What ``pomona info`` prints: a model's inputs, outputs, names, metadata, opset, manifest.

The IR version and opsets are read straight from the top level of the ONNX protobuf
(onnxruntime does not expose them and the runtime does not depend on the onnx package).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pomona.runtime.artifacts import check_manifest
from pomona.runtime.errors import ArtifactError
from pomona.runtime.files import file_sha256
from pomona.runtime.onnx_proto import fields
from pomona.runtime.predictor import Predictor

__all__ = ["describe", "onnx_header"]

# ModelProto field numbers (onnx/onnx.proto)
_IR_VERSION, _PRODUCER_NAME, _PRODUCER_VERSION, _OPSET_IMPORT = 1, 2, 3, 8
# OperatorSetIdProto field numbers
_DOMAIN, _VERSION = 1, 2


def onnx_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """IR version, opsets (domain -> version) and producer of an ONNX file."""
    facts: dict[str, Any] = {"ir_version": None, "opset": {}, "producer": ""}
    try:
        top = list(fields(Path(path).read_bytes()))
    except ValueError:
        return facts
    producer = []
    for number, value in top:
        if number == _IR_VERSION and isinstance(value, int):
            facts["ir_version"] = value
        elif number in (_PRODUCER_NAME, _PRODUCER_VERSION) and isinstance(value, memoryview):
            producer.append(bytes(value).decode("utf-8", "replace"))
        elif number == _OPSET_IMPORT and isinstance(value, memoryview):
            opset = dict(fields(value))
            domain = opset.get(_DOMAIN, b"")
            domain_name = bytes(domain).decode() if isinstance(domain, memoryview) else ""
            facts["opset"][domain_name] = opset.get(_VERSION)
    facts["producer"] = " ".join(p for p in producer if p)
    return facts


def describe(model: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything ``pomona info`` shows, as plain JSON-ready data."""
    predictor = Predictor(model, check_manifest=False)
    path = predictor.path
    sha256 = file_sha256(path)
    session = predictor.session

    def tensors(items: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "type": t.type, "shape": list(t.shape)} for t in items]

    header = onnx_header(path)
    if header["ir_version"] is None:  # pragma: no cover - onnxruntime parsed it already
        raise ArtifactError(f"{path}: cannot read the ONNX header")
    return {
        "path": str(path),
        "sha256": sha256,
        "size": path.stat().st_size,
        "manifest": check_manifest(path, sha256).as_dict(),
        **header,
        "inputs": tensors(session.get_inputs()),
        "outputs": tensors(session.get_outputs()),
        "feature_names": predictor.feature_names,
        "target_names": predictor.target_names,
        "metadata": predictor.metadata,
        "providers": predictor.providers,
    }
