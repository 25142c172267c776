"""Pomona's runtime: onnxruntime + numpy, never torch.

``Predictor`` is imported on first use, so ``import pomona.runtime`` stays cheap.
Public modules that train and export share with the runtime:
:mod:`pomona.runtime.artifacts` (the artifact contract), :mod:`pomona.runtime.files`
(atomic writes, checksums), :mod:`pomona.runtime.clikit` (CLI messages and errors)
and :mod:`pomona.runtime.errors`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pomona.runtime.errors import ArtifactError, DataError, InputError, PomonaError

if TYPE_CHECKING:
    from pomona.runtime.predictor import Predictor

__all__ = ["ArtifactError", "DataError", "InputError", "PomonaError", "Predictor"]


def __getattr__(name: str) -> Any:
    if name == "Predictor":
        from pomona.runtime.predictor import Predictor

        return Predictor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
