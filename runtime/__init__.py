"""Pomona's runtime: onnxruntime + numpy, never torch."""

from __future__ import annotations

from pomona.runtime.errors import ArtifactError, DataError, InputError, PomonaError

__all__ = ["ArtifactError", "DataError", "InputError", "PomonaError"]
