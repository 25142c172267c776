"""Checkpoint in, verified artifacts out: ``pomona export`` in three named steps.

:func:`build`
    checkpoint -> trained model -> folded model -> the bytes of ``model.onnx`` and
    ``model.pt``, in memory.
:func:`verify`
    write them into a staging folder inside the output folder and load them back the
    way they will be used: ``model.onnx`` with the runtime's :class:`Predictor` on both
    backends, onnxruntime and numpy (so anything the runtime would refuse fails the
    export), ``model.ort`` (``--ort``) with onnxruntime, ``model.pt`` with TorchScript;
    check the interface, then the values against the trained model.
:func:`publish`
    stage ``manifest.json`` (and the Triton entry), then move each file into place
    with ``os.replace``, ``manifest.json`` last.

:func:`export_checkpoint` runs the three. A failed export leaves earlier artifacts
as they were.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from pomona.export.check_rows import training_features
from pomona.export.equivalence import (
    NUMPY_CHECK,
    EquivalenceReport,
    check_equivalence,
    evaluation_rows,
    predict_runtime,
    predict_torchscript,
)
from pomona.export.fold import fold_standardization, folding_note
from pomona.export.manifest import artifact_entry, build_manifest, manifest_bytes
from pomona.export.onnx_export import export_onnx, serialize_onnx
from pomona.export.ort import convert_to_ort
from pomona.export.torchscript import load_torchscript, torchscript_bytes
from pomona.export.triton import next_version, place_entry, stage_entry, valid_model_name
from pomona.runtime.artifacts import (
    FEATURE_NAMES_KEY,
    FORMAT_KEY,
    FORMAT_VERSION,
    INPUT_NAME,
    MANIFEST_FILE,
    ONNX_FILE,
    ORT_FILE,
    OUTPUT_NAME,
    TARGET_NAMES_KEY,
    TORCHSCRIPT_FILE,
    TRAINING_KEY,
)
from pomona.runtime.errors import ArtifactError
from pomona.runtime.files import atomic_write_bytes, temporary_folder
from pomona.runtime.predictor import Predictor
from pomona.train.checkpoint import load_checkpoint, model_from_checkpoint
from pomona.train.model import Standardize

__all__ = [
    "BuiltArtifacts",
    "ExportResult",
    "build",
    "export_checkpoint",
    "onnx_metadata",
    "publish",
    "training_features",
    "verify",
]

#: Export checks ``model.onnx`` on the CPU, whatever providers serving will use.
_PROVIDERS = ("CPUExecutionProvider",)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_checkpoint` wrote and how the artifacts compared."""

    out: Path
    files: tuple[Path, ...]
    report: EquivalenceReport
    onnx_ops: tuple[str, ...]
    triton_model_dir: Path | None
    fold_note: str | None = None  # which standardization stayed unfolded, and why


def _json(value: Any) -> str:
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def _plain(value: Any) -> Any:
    """Numbers, booleans, None, and lists/dicts of them; strings and other values dropped."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        kept = {str(k): _plain(v) for k, v in value.items() if _keeps(v)}
        return kept
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return None


def _keeps(value: Any) -> bool:
    """No strings, not even inside lists: names and paths stay out of the summary."""
    if isinstance(value, list | tuple):
        return all(_keeps(item) for item in value)
    return value is None or isinstance(value, bool | int | float | Mapping)


def onnx_metadata(state: Mapping[str, Any]) -> dict[str, str]:
    """``metadata_props`` for ``model.onnx``: format, names and a training summary.

    The summary (``pomona.training``, JSON) keeps only numbers from the
    checkpoint's config and metrics, so no path or name can leak into the file.
    """
    history = state.get("history") or []
    last = history[-1] if history and isinstance(history[-1], Mapping) else {}
    summary = {
        "epochs": state.get("epoch"),
        "hidden": list(state.get("hidden") or []),
        "final_train_loss": last.get("train_loss"),
        "final_val_loss": last.get("val_loss"),
        "config": state.get("config") or {},
        "metrics": state.get("metrics") or {},
    }
    return {
        FORMAT_KEY: str(FORMAT_VERSION),
        FEATURE_NAMES_KEY: json.dumps(list(state["feature_names"])),
        TARGET_NAMES_KEY: json.dumps(list(state["target_names"])),
        TRAINING_KEY: _json(summary),
    }


def _forbidden_strings(*paths: Path) -> list[str]:
    candidates = {os.getcwd(), str(Path.home()), sys.prefix, *(str(p.resolve()) for p in paths)}
    return sorted(c for c in candidates if len(c) > 1)


def _check_no_paths(data: bytes, *paths: Path) -> None:
    for text in _forbidden_strings(*paths):
        if text.encode() in data:
            raise ArtifactError(f"{ONNX_FILE} would contain the local path {text!r}; not written")


# -- the three steps ----------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltArtifacts:
    """What :func:`build` made from a checkpoint, still in memory."""

    name: str
    checkpoint: Path
    state: Mapping[str, Any]
    #: The model as trained (unfolded): the reference every artifact is checked against.
    model: nn.Sequential
    onnx_bytes: bytes
    pt_bytes: bytes
    onnx_ops: tuple[str, ...]
    #: Which standardization stayed unfolded, and why (None: both folded).
    fold_note: str | None = None
    #: ``model.ort`` and ``required_operators.config`` (``--ort``), else empty.
    ort_files: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def files(self) -> dict[str, bytes]:
        """Every artifact file but the manifest: name -> contents."""
        return {ONNX_FILE: self.onnx_bytes, TORCHSCRIPT_FILE: self.pt_bytes, **self.ort_files}

    @property
    def feature_names(self) -> list[str]:
        return list(self.state["feature_names"])

    @property
    def target_names(self) -> list[str]:
        return list(self.state["target_names"])


def build(
    checkpoint: str | os.PathLike[str], name: str = "pomona", ort: bool = False
) -> BuiltArtifacts:
    """Load ``checkpoint``, fold the standardization, and serialize ONNX and TorchScript
    (and with ``ort``, convert the ONNX model to onnxruntime's ORT format)."""
    if not valid_model_name(name):
        raise ArtifactError(f"model name {name!r} must be letters, digits, '_', '.' or '-'")
    path = Path(checkpoint)
    state = load_checkpoint(path)
    model = model_from_checkpoint(state)
    folded = fold_standardization(model)
    proto = export_onnx(folded, len(state["feature_names"]), onnx_metadata(state), graph_name=name)
    onnx_bytes = serialize_onnx(proto)
    return BuiltArtifacts(
        name=name,
        checkpoint=path,
        state=state,
        model=model,
        onnx_bytes=onnx_bytes,
        pt_bytes=torchscript_bytes(folded),
        onnx_ops=tuple(node.op_type for node in proto.graph.node),
        fold_note=folding_note(folded),
        ort_files=convert_to_ort(onnx_bytes) if ort else {},
    )


def verify(built: BuiltArtifacts, staging: Path) -> EquivalenceReport:
    """Write both artifacts into ``staging``, load them back as they will be used, compare.

    Raises :class:`ArtifactError` when the runtime refuses ``model.onnx`` or its
    interface is not the contract's, and
    :class:`~pomona.export.equivalence.EquivalenceError` when values differ.
    """
    for file, data in built.files.items():
        atomic_write_bytes(staging / file, data)
    scripted = load_torchscript(staging / TORCHSCRIPT_FILE)
    artifacts = {TORCHSCRIPT_FILE: lambda x, b: predict_torchscript(scripted, x, b)}
    runs = [(ONNX_FILE, ONNX_FILE, "onnxruntime"), (NUMPY_CHECK, ONNX_FILE, "numpy")]
    if ORT_FILE in built.files:
        runs.append((ORT_FILE, ORT_FILE, "onnxruntime"))
    for check, file, backend in runs:
        predictor = _load_in_runtime(staging / file, built, backend)
        artifacts[check] = functools.partial(predict_runtime, predictor)
    mean, std = _normalization(built.model)
    training = training_features(built.state)
    return check_equivalence(
        built.model,
        artifacts,
        evaluation_rows(mean, std, training),
        training_rows=0 if training is None else len(training),
    )


def publish(
    built: BuiltArtifacts,
    report: EquivalenceReport,
    staging: Path,
    out_dir: Path,
    repo_dir: Path | None = None,
    repo_version: int | None = None,
) -> list[Path]:
    """Stage the manifest (and Triton entry), then move every file into place, manifest last.

    ``staging`` holds the verified ``model.onnx`` and ``model.pt``. The Triton version
    folder (``repo_version``, default the next one) holds both and the manifest, and
    appears whole, in one rename. Returns the paths written.
    """
    manifest = build_manifest(
        name=built.name,
        feature_names=built.feature_names,
        target_names=built.target_names,
        artifacts=built.files,
        checkpoint=_checkpoint_entry(built.checkpoint, built.state),
        equivalence=report.as_dict(),
    )
    manifest_data = manifest_bytes(manifest)
    atomic_write_bytes(staging / MANIFEST_FILE, manifest_data)
    triton: Path | None = None
    try:
        if repo_dir is not None:
            widths = len(built.feature_names), len(built.target_names)
            files = {**built.files, MANIFEST_FILE: manifest_data}
            triton = stage_entry(repo_dir, built.name, files, *widths)
        written = []
        for file in (*built.files, MANIFEST_FILE):
            os.replace(staging / file, out_dir / file)
            written.append(out_dir / file)
        if repo_dir is not None and triton is not None:
            model_dir = repo_dir / built.name
            version = repo_version if repo_version is not None else next_version(model_dir)
            written += place_entry(triton, model_dir, version)
    finally:
        if triton is not None:
            shutil.rmtree(triton, ignore_errors=True)
    return written


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    name: str = "pomona",
    triton_repo: str | os.PathLike[str] | None = None,
    triton_version: int | None = None,
    ort: bool = False,
) -> ExportResult:
    """Export ``checkpoint`` to ``out`` (default: the checkpoint's folder).

    Writes ``model.onnx``, ``model.pt`` and ``manifest.json``, and with
    ``triton_repo`` also ``<triton_repo>/<name>/config.pbtxt`` and the version folder
    ``<triton_repo>/<name>/<triton_version>/`` (default: the next version) with the same
    files, and with ``ort`` also ``model.ort`` and ``required_operators.config`` (in both
    places). Raises :class:`ArtifactError` (or its
    subclass :class:`~pomona.export.equivalence.EquivalenceError`) and writes
    nothing when any step or check fails.
    """
    built = build(checkpoint, name, ort)
    out_dir = Path(out) if out is not None else built.checkpoint.parent
    repo_dir = Path(triton_repo) if triton_repo is not None else None
    _check_no_paths(built.onnx_bytes, built.checkpoint, out_dir, *([repo_dir] if repo_dir else []))
    created_out = not out_dir.exists()
    try:
        with _staging_folder(out_dir, repo_dir) as staging:
            report = verify(built, staging)
            files = publish(built, report, staging, out_dir, repo_dir, triton_version)
    except OSError as err:
        raise ArtifactError(f"cannot write the artifacts: {err}") from err
    finally:
        if created_out:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only succeeds when nothing was written
    return ExportResult(
        out=out_dir,
        files=tuple(files),
        report=report,
        onnx_ops=built.onnx_ops,
        triton_model_dir=None if repo_dir is None else repo_dir / name,
        fold_note=built.fold_note,
    )


# -- helpers of the steps ----------------------------------------------------------------


def _load_in_runtime(path: Path, built: BuiltArtifacts, backend: str) -> Predictor:
    """A model file as ``pomona predict`` and ``pomona serve`` will load it with ``backend``."""
    providers = _PROVIDERS if backend == "onnxruntime" else None
    try:
        predictor = Predictor(path, check_manifest=False, providers=providers, backend=backend)
    except ArtifactError as err:
        reason = str(err).removeprefix(f"{path}: ")
        who = "the runtime" if backend == "onnxruntime" else f"the runtime's {backend} backend"
        raise ArtifactError(f"{who} refuses the exported {path.name}: {reason}") from err
    _check_interface(predictor, built.feature_names, built.target_names)
    return predictor


def _check_interface(predictor: Predictor, features: list[str], targets: list[str]) -> None:
    """One input and one output, with the contract's names, dynamic batch and our names."""
    problems = []
    for kind, args, name, expected, found in (
        ("input", predictor.inputs, INPUT_NAME, features, predictor.feature_names),
        ("output", predictor.outputs, OUTPUT_NAME, targets, predictor.target_names),
    ):
        if len(args) != 1 or args[0].name != name:
            problems.append(f"{kind}s are {[a.name for a in args]}, expected [{name!r}]")
        elif isinstance(args[0].shape[0], int):
            problems.append(f"{kind} {name!r} has a fixed batch size {args[0].shape[0]}")
        if found != expected:
            problems.append(f"{kind} names are {found}, expected {expected}")
    if problems:
        raise ArtifactError(f"{predictor.path.name} has the wrong interface: {'; '.join(problems)}")


def _normalization(model: nn.Sequential) -> tuple[np.ndarray, np.ndarray]:
    standardize = model[0]
    if not isinstance(standardize, Standardize):  # pragma: no cover - build_model guarantees it
        raise ArtifactError("model does not start with a Standardize layer")
    return standardize.mean.double().numpy(), standardize.std.double().numpy()


def _checkpoint_entry(path: Path, state: Mapping[str, Any]) -> dict[str, Any]:
    return {"file": path.name, **artifact_entry(path.read_bytes()), "epoch": state.get("epoch")}


@contextlib.contextmanager
def _staging_folder(out_dir: Path, repo_dir: Path | None) -> Iterator[Path]:
    """Create the output folders; a new, empty staging folder inside ``out_dir``, removed
    at the end (and by a signal that ends ``pomona export``)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if repo_dir is not None:
            repo_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ArtifactError(f"cannot create the output folder: {err}") from err
    with temporary_folder(out_dir, ".pomona-export-") as staging:
        yield staging
