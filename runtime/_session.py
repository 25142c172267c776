"""What a loaded model takes and returns, whichever backend loaded it.

The checking half of :class:`~pomona.runtime.predictor.Predictor`: the one float32
``[batch, F]`` input and ``[batch, T]`` output, the feature and target names from
``metadata_props``, and the format check. Loading lives in
:mod:`pomona.runtime.backends`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pomona.runtime.artifacts import FEATURE_NAMES_KEY, TARGET_NAMES_KEY, check_format
from pomona.runtime.errors import ArtifactError
from pomona.runtime.onnx_proto import TensorInfo

__all__ = ["ModelInterface", "read_interface"]


class ModelInterface(NamedTuple):
    """The tensors and names a model exposes."""

    input_name: str
    output_name: str
    feature_names: list[str]
    target_names: list[str]
    metadata: dict[str, str]


def read_interface(
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    metadata: Mapping[str, str],
    path: Path,
) -> ModelInterface:
    """Check the model's tensors and format; names from metadata, else by position."""
    model_input, model_output = _tensors(inputs, outputs, path)
    check_format(metadata, path)
    features = _names(metadata, FEATURE_NAMES_KEY, model_input.shape[1], "input", path)
    targets = _names(metadata, TARGET_NAMES_KEY, model_output.shape[1], "output", path)
    return ModelInterface(model_input.name, model_output.name, features, targets, dict(metadata))


def _tensors(
    inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], path: Path
) -> tuple[TensorInfo, TensorInfo]:
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
