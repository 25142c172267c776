"""Pomona's export stage: checkpoint -> TorchScript and ONNX, proven equivalent (needs torch).

``export_checkpoint`` runs the three steps ``build``, ``verify`` and ``publish``; the
tolerances ``ATOL`` and ``RTOL`` are those of :mod:`pomona.runtime.artifacts`.
"""

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
from pomona.export.exporter import (
    BuiltArtifacts,
    ExportResult,
    build,
    export_checkpoint,
    publish,
    verify,
)
from pomona.export.fold import fold_standardization
from pomona.export.onnx_export import export_onnx, strip_provenance
from pomona.export.torchscript import load_torchscript, torchscript_bytes
from pomona.export.triton import config_pbtxt

__all__ = [
    "ATOL",
    "BATCH_SIZES",
    "RTOL",
    "ArtifactCheck",
    "BuiltArtifacts",
    "EquivalenceError",
    "EquivalenceReport",
    "ExportResult",
    "build",
    "check_equivalence",
    "config_pbtxt",
    "export_checkpoint",
    "export_onnx",
    "fold_standardization",
    "load_torchscript",
    "publish",
    "strip_provenance",
    "torchscript_bytes",
    "verify",
]
