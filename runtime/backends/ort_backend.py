"""The onnxruntime backend: an ``InferenceSession`` for a ``.onnx`` or ``.ort`` file.

The only runtime module that imports onnxruntime; :mod:`pomona.runtime.backends` imports
it only when this backend is chosen, so the runtime starts where onnxruntime is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort

from pomona.runtime.errors import ArtifactError
from pomona.runtime.onnx_proto import TensorInfo
from pomona.runtime.system import available_cpus

__all__ = ["default_providers", "fast_run", "open_session", "tensors", "version"]

# Where a model built from bytes finds its external data files (onnxruntime >= 1.17).
_EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"
# External data files handed over from memory (onnxruntime >= 1.23).
_EXTERNAL_DATA_IN_MEMORY = "add_external_initializers_from_files_in_memory"


def version() -> str:
    """The onnxruntime version this backend runs."""
    return str(ort.__version__)


def default_providers() -> list[str]:
    """CUDA when this onnxruntime build offers it, then CPU."""
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def open_session(
    path: Path,
    *,
    intra_op_threads: int | None,
    allow_spinning: bool,
    providers: Sequence[str] | None,
    data: bytes | None = None,
    external: Mapping[str, bytes] | None = None,
) -> ort.InferenceSession:
    """An onnxruntime session for ``path``; :class:`ArtifactError` if it cannot be loaded.

    With ``data`` (the model's bytes, already read) the session is built from those bytes,
    so it runs what was checked. ``external`` (location -> bytes, already read and checked)
    hands it the external data files from memory too, where this onnxruntime can take them
    (>= 1.23); other external data files are read from ``path``'s folder.

    ``intra_op_threads=None`` uses the CPUs this process may run on
    (:func:`~pomona.runtime.system.available_cpus`), not onnxruntime's default of every
    physical core of the machine, which oversubscribes a container limited to fewer.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; warnings would pollute stderr
    if intra_op_threads is not None and intra_op_threads < 1:
        raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
    options.intra_op_num_threads = intra_op_threads or available_cpus()
    if not allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if data is not None:
        options.add_session_config_entry(_EXTERNAL_DATA_FOLDER, str(path.parent.resolve()))
    if external and hasattr(options, _EXTERNAL_DATA_IN_MEMORY):
        names, contents = list(external), list(external.values())
        getattr(options, _EXTERNAL_DATA_IN_MEMORY)(names, contents, [len(c) for c in contents])
    try:
        return ort.InferenceSession(
            str(path) if data is None else data,
            sess_options=options,
            providers=list(providers) if providers is not None else default_providers(),
        )
    except Exception as err:  # onnxruntime raises its own untyped errors
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ArtifactError(
            f"{path}: not a valid ONNX model (empty, truncated or corrupt?): {reason}"
        ) from err


def fast_run(session: ort.InferenceSession) -> Any:
    """``session.run``, minus its per-call Python checks when only the CPU provider runs.

    ``InferenceSession.run`` validates input names and OrtValue ownership and handles
    execution-provider fallback in Python before calling the compiled session; at batch 1
    that costs about as much as the model. The predictor always passes its one input as a
    numpy array, so on CPU it calls the compiled session (same signature) directly.
    """
    compiled = getattr(session, "_sess", None)
    if session.get_providers() == ["CPUExecutionProvider"] and callable(
        getattr(compiled, "run", None)
    ):
        return compiled.run  # type: ignore[union-attr]
    return session.run


def tensors(session: ort.InferenceSession) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The session's inputs and outputs, described as the numpy backend describes its own."""

    def info(items: Any) -> list[TensorInfo]:
        return [TensorInfo(t.name, t.type, list(t.shape)) for t in items]

    return info(session.get_inputs()), info(session.get_outputs())
