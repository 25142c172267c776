"""Open an ONNX model with onnxruntime and read what it takes and returns.

The loading half of :class:`~pomona.runtime.predictor.Predictor`: the session (with
its options and providers), the one float32 ``[batch, F]`` input and ``[batch, T]``
output, the feature and target names from ``metadata_props``, and the format check.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import onnxruntime as ort

from pomona.runtime.artifacts import FEATURE_NAMES_KEY, TARGET_NAMES_KEY, check_format
from pomona.runtime.errors import ArtifactError

__all__ = ["ModelInterface", "default_providers", "fast_run", "open_session", "read_interface"]


class ModelInterface(NamedTuple):
    """The tensors and names a model exposes."""

    input_name: str
    output_name: str
    feature_names: list[str]
    target_names: list[str]
    metadata: dict[str, str]


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
) -> ort.InferenceSession:
    """An onnxruntime session for ``path``; :class:`ArtifactError` if it cannot be loaded."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; warnings would pollute stderr
    if intra_op_threads is not None:
        if intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
        options.intra_op_num_threads = intra_op_threads
    if not allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(
            str(path),
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


def read_interface(session: ort.InferenceSession, path: Path) -> ModelInterface:
    """Check the model's tensors and format; names from metadata, else by position."""
    model_input, model_output = _tensors(session, path)
    metadata: dict[str, str] = dict(session.get_modelmeta().custom_metadata_map)
    check_format(metadata, path)
    features = _names(metadata, FEATURE_NAMES_KEY, model_input.shape[1], "input", path)
    targets = _names(metadata, TARGET_NAMES_KEY, model_output.shape[1], "output", path)
    return ModelInterface(model_input.name, model_output.name, features, targets, metadata)


def _tensors(session: ort.InferenceSession, path: Path) -> tuple[Any, Any]:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise ArtifactError(
            f"{path}: expected one input and at least one output, "
            f"got {len(inputs)} input(s) and {len(outputs)} output(s)"
        )
    for side, tensor in (("input", inputs[0]), ("output", outputs[0])):
        if tensor.type != "tensor(float)" or len(tensor.shape) != 2:
            raise ArtifactError(
                f"{path}: {side} {tensor.name!r} must be a float32 [batch, {_SIDES[side][0]}] "
                f"tensor, got {tensor.type} with shape {tensor.shape}"
            )
    return inputs[0], outputs[0]


# side -> (what its second dimension counts, prefix of the names by position)
_SIDES = {"input": ("features", "f"), "output": ("targets", "y")}


def _names(metadata: Mapping[str, str], key: str, width: Any, side: str, path: Path) -> list[str]:
    """The names under ``key``, or ``f0, f1, ...`` (``y0, ...``) when the width is fixed."""
    what, prefix = _SIDES[side]
    names = _json_names(metadata, key, path)
    if names is None:
        if not isinstance(width, int):
            raise ArtifactError(
                f"{path}: the number of {what} is neither fixed in the {side} shape "
                f"nor given by metadata {key!r}"
            )
        return [f"{prefix}{i}" for i in range(width)]
    if isinstance(width, int) and width != len(names):
        raise ArtifactError(f"{path}: {side} has {width} {what} but metadata names {len(names)}")
    return names


def _json_names(metadata: Mapping[str, str], key: str, path: Path) -> list[str] | None:
    raw = metadata.get(key)
    if raw is None:
        return None
    try:
        names = json.loads(raw)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ArtifactError(f"{path}: metadata {key!r} is not a JSON list of names: {raw[:80]!r}")
    return names
