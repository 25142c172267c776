"""The artifact contract (format 1), in one place for train, export, runtime and tests.

What ``pomona train`` and ``pomona export`` write and what the runtime reads: file
names, the ``metadata_props`` keys of ``model.onnx``, its tensor names, the format
version, the equivalence tolerance, and the one check of a model against the
``manifest.json`` beside it. Imports numpy and the standard library only, so the
runtime can use it without torch and export can use it without onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from pomona.runtime.errors import ArtifactError
from pomona.runtime.files import file_sha256
from pomona.runtime.onnx_proto import external_data_locations, inside_folder

__all__ = [
    "ATOL",
    "CHECKPOINT_FILE",
    "DEFAULT_FOLDER",
    "FEATURE_NAMES_KEY",
    "FORMAT_KEY",
    "FORMAT_VERSION",
    "HISTORY_FILE",
    "INPUT_NAME",
    "MANIFEST_FILE",
    "METRICS_FILE",
    "MODEL_FILES",
    "ONNX_FILE",
    "ORT_CONFIG_FILE",
    "ORT_FILE",
    "OUTPUT_NAME",
    "PLOT_FILE",
    "RTOL",
    "SUPPORTED_FORMATS",
    "TARGET_NAMES_KEY",
    "TOLERANCE_RULE",
    "TORCHSCRIPT_FILE",
    "TRAINING_KEY",
    "ExternalData",
    "ManifestCheck",
    "allowed_difference",
    "check_format",
    "check_manifest",
    "read_external_data",
]

# -- format ------------------------------------------------------------------------------

#: Version of this contract: ``pomona.format`` in ``model.onnx`` (as a string) and
#: ``format`` in ``manifest.json`` (as a number).
FORMAT_VERSION = 1
#: The ``pomona.format`` values this runtime reads.
SUPPORTED_FORMATS: tuple[str, ...] = (str(FORMAT_VERSION),)

# -- files -------------------------------------------------------------------------------

#: Folder ``pomona train`` writes to and ``pomona export`` reads from by default.
DEFAULT_FOLDER = "artifacts"
#: Written by ``pomona train``.
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
PLOT_FILE = "loss_curve.png"
#: Written by ``pomona export`` (the manifest last).
ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"
#: Written by ``pomona export --ort``: the model in onnxruntime's ORT format, and the
#: operators it needs (input to a reduced onnxruntime build, ``--include_ops_by_config``).
ORT_FILE = "model.ort"
ORT_CONFIG_FILE = "required_operators.config"
#: The manifest entries that are models the runtime loads. In a folder with a manifest
#: that lists one, a model file of any name must have the content of one of them.
MODEL_FILES: tuple[str, ...] = (ONNX_FILE, ORT_FILE)

# -- model.onnx --------------------------------------------------------------------------

#: ``metadata_props`` keys: the format version, JSON lists of the feature and target
#: names, and a JSON training summary (numbers only).
FORMAT_KEY = "pomona.format"
FEATURE_NAMES_KEY = "pomona.feature_names"
TARGET_NAMES_KEY = "pomona.target_names"
TRAINING_KEY = "pomona.training"
#: The one input, float32 ``[batch, F]``, and the one output, float32 ``[batch, T]``.
INPUT_NAME = "features"
OUTPUT_NAME = "predictions"

# -- equivalence -------------------------------------------------------------------------

#: Absolute tolerance, multiplied by the output column's scale ``max(1, max |reference|)``.
ATOL = 1e-5
#: Relative tolerance, multiplied by ``|reference|`` element by element.
RTOL = 1e-5
#: The rule :func:`allowed_difference` computes, in words (it is in every manifest).
TOLERANCE_RULE = (
    "|artifact - reference| <= atol * max(1, max|reference column|) + rtol * |reference|"
)


def allowed_difference(reference: np.ndarray) -> np.ndarray:
    """Per element, the largest difference from ``reference`` that passes (:data:`TOLERANCE_RULE`).

    ``reference`` is ``[rows, targets]``; each target column has its own scale, so a
    target in the thousands is held to as many significant digits as one near 1.
    """
    ref = np.abs(np.asarray(reference, dtype=np.float64))
    finite = np.where(np.isfinite(ref), ref, 0.0)
    scale = np.maximum(1.0, finite.max(axis=0, initial=0.0))
    return ATOL * scale + RTOL * ref


# -- checks ------------------------------------------------------------------------------


def check_format(metadata: Mapping[str, str], path: str | os.PathLike[str]) -> None:
    """Refuse a model whose ``pomona.format`` this runtime does not read.

    A model without the key (a plain ONNX file from elsewhere) passes.
    """
    found = metadata.get(FORMAT_KEY)
    if found is not None and found not in SUPPORTED_FORMATS:
        raise ArtifactError(
            f"{path}: model format {found!r} is not supported "
            f"(this pomona reads format {', '.join(SUPPORTED_FORMATS)}); "
            "export it again with this version of pomona, or upgrade pomona"
        )


class ExternalData(NamedTuple):
    """An external data file of a model: ``location`` as the model writes it, its bytes."""

    location: str
    sha256: str
    content: bytes


class ManifestCheck(NamedTuple):
    """How a model file compares with the ``manifest.json`` in its folder.

    ``status`` is ``ok`` (the manifest records this file's sha256 under one of
    :data:`MODEL_FILES`, whatever the file's own name, and the sha256 of every external
    data file it points to), ``none`` (no manifest, or one that lists no model),
    ``mismatch`` (the model, or an external data file, is not what the manifest records)
    or ``unreadable``; ``detail`` says it in words.
    """

    status: Literal["ok", "none", "mismatch", "unreadable"]
    detail: str
    #: With ``status`` ok and the caller's ``data``: the external data files as they were
    #: hashed, for the backend to run exactly those bytes.
    external: tuple[ExternalData, ...] = ()

    @property
    def refused(self) -> bool:
        """Whether a loader that checks manifests must refuse the model."""
        return self.status in ("mismatch", "unreadable")

    def as_dict(self) -> dict[str, str]:
        return {"status": self.status, "detail": self.detail}


def _model_entries(manifest_path: Path) -> tuple[dict[str, Any], dict[str, str]] | ManifestCheck:
    """The manifest's artifacts and the recorded sha256 of each model it lists."""
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    listed = manifest.get("artifacts") if isinstance(manifest, dict) else None
    if not isinstance(listed, dict):
        return ManifestCheck("unreadable", f"unreadable {MANIFEST_FILE} (no artifacts)")
    models: dict[str, str] = {}
    for name in MODEL_FILES:
        if name in listed:
            expected = _recorded_sha256(listed, name)
            if expected is None:
                return ManifestCheck(
                    "unreadable", f"unreadable {MANIFEST_FILE} (no artifacts.{name}.sha256)"
                )
            models[name] = expected
    return listed, models


def _recorded_sha256(listed: dict[str, Any], name: str) -> str | None:
    entry = listed.get(name)
    expected = entry.get("sha256") if isinstance(entry, dict) else None
    return expected if isinstance(expected, str) else None


def _short(sha: str) -> str:
    return f"{sha[:12]}…"


def check_manifest(
    model: str | os.PathLike[str], sha256: str | None = None, data: bytes | None = None
) -> ManifestCheck:
    """Compare ``model`` with the manifest in its folder (``sha256``: the model's, if known;
    ``data``: its bytes, when the caller has read them and will run exactly those).

    The model is matched by content: in a folder with a manifest that lists a model, a
    file of any name must have the sha256 of one of them. Its external data files (ONNX
    tensors stored outside the model file) must each be listed with their sha256 too.
    """
    path = Path(model)
    manifest_path = path.parent / MANIFEST_FILE
    if not manifest_path.is_file():
        return ManifestCheck("none", f"no {MANIFEST_FILE} beside the model")
    found = _model_entries(manifest_path)
    if isinstance(found, ManifestCheck):
        return found
    listed, models = found
    if not models:
        return ManifestCheck("none", f"{MANIFEST_FILE} lists no model ({', '.join(MODEL_FILES)})")
    read = data is not None  # the caller runs these bytes: keep the external data read too
    try:
        data = path.read_bytes() if data is None else data
    except OSError as err:
        return ManifestCheck("unreadable", f"cannot read the model: {err.strerror or err}")
    actual = sha256 if sha256 is not None else _sha256(data)
    matches = [name for name, expected in models.items() if expected == actual]
    if not matches:
        if path.name in models:
            return ManifestCheck(
                "mismatch",
                f"model changed since {MANIFEST_FILE} was written "
                f"(sha256 {_short(actual)} != {_short(models[path.name])} recorded)",
            )
        return ManifestCheck(
            "mismatch",
            f"not a model {MANIFEST_FILE} lists: sha256 {_short(actual)} matches none of "
            f"{', '.join(models)}",
        )
    external = _check_external_data(path, data, listed, keep=read)
    if isinstance(external, str):
        return ManifestCheck("mismatch", external)
    named = "" if path.name in matches else f" (as {matches[0]})"
    return ManifestCheck("ok", f"matches {MANIFEST_FILE}{named}", external)


def _check_external_data(
    path: Path, data: bytes, listed: dict[str, Any], keep: bool
) -> str | tuple[ExternalData, ...]:
    """What is wrong with the external data of a model the manifest vouches for, if anything;
    else (``keep``) each file's bytes, read once: hashed here, then run by the backend."""
    try:
        locations = external_data_locations(data)
    except ValueError as err:
        return (
            "not a valid ONNX model (empty, truncated or corrupt?), so its external data "
            f"cannot be listed: {err}"
        )
    kept: list[ExternalData] = []
    for location in locations:
        if not inside_folder(location):
            return f"external data {location!r} is not a file in the model's folder"
        name = _external_name(location)
        expected = _recorded_sha256(listed, name)
        if expected is None:
            return (
                f"external data file {name} is not listed with its sha256 in {MANIFEST_FILE} "
                "(every byte of the model must be)"
            )
        try:
            content = (path.parent / name).read_bytes() if keep else None
            actual = file_sha256(path.parent / name) if content is None else _sha256(content)
        except OSError as err:
            return f"cannot read external data file {name}: {err.strerror or err}"
        if actual != expected:
            return (
                f"external data file {name} changed since {MANIFEST_FILE} was written "
                f"(sha256 {_short(actual)} != {_short(expected)} recorded)"
            )
        if content is not None:
            kept.append(ExternalData(location, actual, content))
    return tuple(kept)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _external_name(location: str) -> str:
    """The external data file a ``location`` names, relative to the model's folder."""
    return posixpath.normpath(location.replace("\\", "/"))


def read_external_data(model: Path, sha256: Mapping[str, str]) -> tuple[ExternalData, ...]:
    """The external data files of ``model`` (``location`` -> sha256, as a check found them),
    read again and held to those hashes: a copy of a predictor in another process runs the
    bytes the original ran, or fails."""
    found = []
    for location, expected in sha256.items():
        name = _external_name(location)
        try:
            content = (model.parent / name).read_bytes()
        except OSError as err:
            raise ArtifactError(
                f"{model}: cannot read external data file {name}: {err.strerror or err}"
            ) from None
        if _sha256(content) != expected:
            raise ArtifactError(f"{model}: external data file {name} changed since it was loaded")
        found.append(ExternalData(location, expected, content))
    return tuple(found)
