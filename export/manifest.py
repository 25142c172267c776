"""``manifest.json``: what an export wrote, with checksums and its equivalence report.

The runtime reads it back with :func:`pomona.runtime.artifacts.check_manifest`.
Layout (format 1, :data:`~pomona.runtime.artifacts.FORMAT_VERSION`)::

    {
      "format": 1,
      "name": "pomona",
      "versions": {"pomona": ..., "torch": ..., "onnx": ..., "onnxruntime": ...},
      "feature_names": [...],
      "target_names": [...],
      "artifacts": {"model.onnx": {"sha256": ..., "size": N}, "model.pt": {...},
                    "model.ort": {...}, "required_operators.config": {...}},  # last two: --ort
      "checkpoint": {"file": "checkpoint.pt", "sha256": ..., "size": N, "epoch": E},
      "equivalence": {...}
    }

File names are relative to the manifest's folder; the manifest holds no
absolute path and no time stamp, so the same checkpoint gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pomona.runtime.artifacts import FORMAT_VERSION

__all__ = ["artifact_entry", "build_manifest", "manifest_bytes", "versions"]


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def versions() -> dict[str, str]:
    """Installed versions of the packages that produced and checked the artifacts."""
    return {name: _version(name) for name in ("pomona", "torch", "onnx", "onnxruntime")}


def artifact_entry(data: bytes) -> dict[str, Any]:
    """``{"sha256": hex, "size": bytes}`` of a file's contents."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def build_manifest(
    *,
    name: str,
    feature_names: Sequence[str],
    target_names: Sequence[str],
    artifacts: Mapping[str, bytes],
    checkpoint: Mapping[str, Any],
    equivalence: Mapping[str, Any],
) -> dict[str, Any]:
    """The manifest as a dict; ``artifacts`` maps file names to their contents."""
    return {
        "format": FORMAT_VERSION,
        "name": name,
        "versions": versions(),
        "feature_names": list(feature_names),
        "target_names": list(target_names),
        "artifacts": {file: artifact_entry(data) for file, data in sorted(artifacts.items())},
        "checkpoint": dict(checkpoint),
        "equivalence": dict(equivalence),
    }


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """Indented UTF-8 JSON with a final newline."""
    return (json.dumps(manifest, indent=2, allow_nan=False) + "\n").encode()
