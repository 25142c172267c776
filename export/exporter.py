"""Checkpoint in, verified artifacts out: the whole of ``pomona export`` as one function.

Every file is first written to a temporary folder inside the output folder,
loaded back from there and checked (interface, then values against the trained
model); only when all checks pass is each file moved into place with
``os.replace``, ``manifest.json`` last. A failed export leaves earlier
artifacts as they were.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from torch import nn

from pomona.export.equivalence import (
    EquivalenceReport,
    check_equivalence,
    evaluation_rows,
    onnx_session,
    predict_onnx,
    predict_torchscript,
)
from pomona.export.fold import fold_standardization, folding_note
from pomona.export.manifest import build_manifest, manifest_bytes
from pomona.export.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx, serialize_onnx
from pomona.export.torchscript import load_torchscript, torchscript_bytes
from pomona.export.triton import VERSION, config_pbtxt, valid_model_name
from pomona.runtime._atomic import atomic_write
from pomona.runtime.errors import ArtifactError
from pomona.train.checkpoint import load_checkpoint, model_from_checkpoint
from pomona.train.model import Standardize

__all__ = [
    "MANIFEST_FILE",
    "ONNX_FILE",
    "ONNX_FORMAT",
    "TORCHSCRIPT_FILE",
    "ExportResult",
    "export_checkpoint",
    "onnx_metadata",
    "training_features",
]

ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"
#: Value of the ``pomona.format`` metadata entry of ``model.onnx``.
ONNX_FORMAT = "1"


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
        "pomona.format": ONNX_FORMAT,
        "pomona.feature_names": json.dumps(list(state["feature_names"])),
        "pomona.target_names": json.dumps(list(state["target_names"])),
        "pomona.training": _json(summary),
    }


def _read_columns(source: Any, names: Sequence[str]) -> np.ndarray | None:
    with source.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not set(names) <= set(reader.fieldnames):
            return None
        rows = [[float(row[name]) for name in names] for row in reader]
    array = np.asarray(rows, dtype=np.float64).reshape(-1, len(names))
    return array if len(array) and np.isfinite(array).all() else None


def training_features(state: Mapping[str, Any]) -> np.ndarray | None:
    """The feature columns of the checkpoint's training data, if they can still be read.

    The config names a CSV file, or none for the bundled crop data. Returns
    ``None`` when the file is gone or no longer has the feature columns.
    """
    config = state.get("config") or {}
    names = list(state["feature_names"])
    data = config.get("data")
    source: Any
    if data is None:
        source = resources.files("pomona.train").joinpath("data", "crop.csv")
    else:
        source = Path(str(data))
        if not source.is_file():
            return None
    try:
        return _read_columns(source, names)
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, csv.Error):
        return None


def _forbidden_strings(*paths: Path) -> list[str]:
    candidates = {os.getcwd(), str(Path.home()), sys.prefix, *(str(p.resolve()) for p in paths)}
    return sorted(c for c in candidates if len(c) > 1)


def _check_no_paths(data: bytes, *paths: Path) -> None:
    for text in _forbidden_strings(*paths):
        if text.encode() in data:
            raise ArtifactError(f"{ONNX_FILE} would contain the local path {text!r}; not written")


def _check_interface(session: ort.InferenceSession, n_features: int, n_targets: int) -> None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    problems = []
    for kind, args, name, width in (
        ("input", inputs, INPUT_NAME, n_features),
        ("output", outputs, OUTPUT_NAME, n_targets),
    ):
        if len(args) != 1 or args[0].name != name:
            problems.append(f"{kind}s are {[a.name for a in args]}, expected [{name!r}]")
            continue
        arg = args[0]
        batch_dynamic = len(arg.shape) == 2 and not isinstance(arg.shape[0], int)
        if arg.type != "tensor(float)" or not batch_dynamic or arg.shape[1] != width:
            problems.append(
                f"{kind} {name!r} is {arg.type} {arg.shape}, expected tensor(float) "
                f"['batch', {width}]"
            )
    if problems:
        raise ArtifactError(f"{ONNX_FILE} has the wrong interface: {'; '.join(problems)}")


def _normalization(model: nn.Sequential) -> tuple[np.ndarray, np.ndarray]:
    standardize = model[0]
    if not isinstance(standardize, Standardize):  # pragma: no cover - build_model guarantees it
        raise ArtifactError("model does not start with a Standardize layer")
    return standardize.mean.double().numpy(), standardize.std.double().numpy()


def _write(path: Path, data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def _checkpoint_entry(path: Path, state: Mapping[str, Any]) -> dict[str, Any]:
    data = path.read_bytes()
    return {
        "file": path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "epoch": state.get("epoch"),
    }


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    name: str = "pomona",
    triton_repo: str | os.PathLike[str] | None = None,
) -> ExportResult:
    """Export ``checkpoint`` to ``out`` (default: the checkpoint's folder).

    Writes ``model.onnx``, ``model.pt`` and ``manifest.json``, and with
    ``triton_repo`` also ``<triton_repo>/<name>/config.pbtxt`` and
    ``<triton_repo>/<name>/1/model.onnx``. Raises :class:`ArtifactError` (or its
    subclass :class:`~pomona.export.equivalence.EquivalenceError`) and writes
    nothing when any step or check fails.
    """
    if not valid_model_name(name):
        raise ArtifactError(f"model name {name!r} must be letters, digits, '_', '.' or '-'")
    checkpoint_path = Path(checkpoint)
    state = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(state)
    feature_names, target_names = list(state["feature_names"]), list(state["target_names"])
    n_features, n_targets = len(feature_names), len(target_names)
    out_dir = Path(out) if out is not None else checkpoint_path.parent
    repo_dir = Path(triton_repo) if triton_repo is not None else None

    folded = fold_standardization(model)
    fold_note = folding_note(folded)
    proto = export_onnx(folded, n_features, onnx_metadata(state), graph_name=name)
    onnx_bytes = serialize_onnx(proto)
    _check_no_paths(onnx_bytes, checkpoint_path, out_dir, *([repo_dir] if repo_dir else []))
    pt_bytes = torchscript_bytes(folded)

    created_out = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if repo_dir is not None:
            repo_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ArtifactError(f"cannot create the output folder: {err}") from err
    staging = Path(tempfile.mkdtemp(prefix=".pomona-export-", dir=out_dir))
    triton_staging: Path | None = None
    try:
        _write(staging / ONNX_FILE, onnx_bytes)
        _write(staging / TORCHSCRIPT_FILE, pt_bytes)
        session = onnx_session(str(staging / ONNX_FILE))
        _check_interface(session, n_features, n_targets)
        scripted = load_torchscript(staging / TORCHSCRIPT_FILE)

        mean, std = _normalization(model)
        training = training_features(state)
        rows = evaluation_rows(mean, std, training)
        report = check_equivalence(
            model,
            {
                TORCHSCRIPT_FILE: lambda x, b: predict_torchscript(scripted, x, b),
                ONNX_FILE: lambda x, b: predict_onnx(session, x, b),
            },
            rows,
            training_rows=0 if training is None else len(training),
        )
        manifest = build_manifest(
            name=name,
            feature_names=feature_names,
            target_names=target_names,
            artifacts={ONNX_FILE: onnx_bytes, TORCHSCRIPT_FILE: pt_bytes},
            checkpoint=_checkpoint_entry(checkpoint_path, state),
            equivalence=report.as_dict(),
        )
        _write(staging / MANIFEST_FILE, manifest_bytes(manifest))
        triton_staging = _stage_triton(repo_dir, name, onnx_bytes, n_features, n_targets)

        files = []
        for file in (ONNX_FILE, TORCHSCRIPT_FILE, MANIFEST_FILE):
            os.replace(staging / file, out_dir / file)
            files.append(out_dir / file)
        if repo_dir is not None and triton_staging is not None:
            files += _place_triton(triton_staging, repo_dir / name)
    except OSError as err:
        raise ArtifactError(f"cannot write the artifacts: {err}") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if triton_staging is not None:
            shutil.rmtree(triton_staging, ignore_errors=True)
        if created_out:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only succeeds when nothing was written
    return ExportResult(
        out=out_dir,
        files=tuple(files),
        report=report,
        onnx_ops=tuple(node.op_type for node in proto.graph.node),
        triton_model_dir=None if repo_dir is None else repo_dir / name,
        fold_note=fold_note,
    )


def _stage_triton(
    repo_dir: Path | None, name: str, onnx_bytes: bytes, n_features: int, n_targets: int
) -> Path | None:
    if repo_dir is None:
        return None
    staged = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=repo_dir))
    _write(staged / "config.pbtxt", config_pbtxt(name, n_features, n_targets).encode())
    (staged / VERSION).mkdir()
    _write(staged / VERSION / ONNX_FILE, onnx_bytes)
    return staged


def _place_triton(staged: Path, model_dir: Path) -> list[Path]:
    (model_dir / VERSION).mkdir(parents=True, exist_ok=True)
    placed = []
    for relative in (Path(VERSION) / ONNX_FILE, Path("config.pbtxt")):
        os.replace(staged / relative, model_dir / relative)
        placed.append(model_dir / relative)
    return placed
