"""Pomona's export stage: checkpoint -> TorchScript and ONNX, proven equivalent (needs torch)."""

from __future__ import annotations

from pomona.export.equivalence import (
    ATOL,
    BATCH_SIZES,
    RTOL,
    ArtifactCheck,
    EquivalenceError,
    EquivalenceReport,
    check_equivalence,
)
from pomona.export.exporter import ExportResult, export_checkpoint
from pomona.export.fold import fold_standardization
from pomona.export.onnx_export import export_onnx, strip_provenance
from pomona.export.torchscript import load_torchscript, torchscript_bytes
from pomona.export.triton import config_pbtxt

__all__ = [
    "ATOL",
    "BATCH_SIZES",
    "RTOL",
    "ArtifactCheck",
    "EquivalenceError",
    "EquivalenceReport",
    "ExportResult",
    "check_equivalence",
    "config_pbtxt",
    "export_checkpoint",
    "export_onnx",
    "fold_standardization",
    "load_torchscript",
    "strip_provenance",
    "torchscript_bytes",
]
