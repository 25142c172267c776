"""Load an exported ONNX model with onnxruntime and predict from arrays or named columns.

Imports numpy and onnxruntime only: no torch, no onnx package. One
:class:`Predictor` is safe to call from several threads at once
(``InferenceSession.run`` is thread-safe and the predictor keeps no per-call state).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import ArrayLike

from pomona.runtime.errors import ArtifactError, InputError

__all__ = ["MANIFEST_NAME", "Predictor", "file_sha256"]

#: File name of the manifest that ``pomona export`` writes beside ``model.onnx``.
MANIFEST_NAME = "manifest.json"
_OPT_OUT = "pass check_manifest=False (CLI: --no-manifest-check) to use it anyway"
_NUMERIC_KINDS = frozenset("iuf")
_FLOAT32 = np.dtype(np.float32)
_SMALL = 256  # up to this many values, check finiteness with a Python sum


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    import hashlib  # only when there is a manifest to check

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _default_providers() -> list[str]:
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _fast_run(session: ort.InferenceSession) -> Any:
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


class Predictor:
    """An ONNX regression model: ``[n, F]`` float32 features in, ``[n, T]`` float32 out.

    Parameters
    ----------
    model:
        Path to ``model.onnx``.
    check_manifest:
        When ``manifest.json`` sits beside the model, refuse a model whose sha256
        differs from the one recorded there.
    intra_op_threads:
        Threads onnxruntime uses inside one call (``None``: onnxruntime's default,
        one per physical core).
    allow_spinning:
        Let idle worker threads spin; turn off when serving many small requests.
    providers:
        onnxruntime execution providers, in order of preference. Default: CUDA when
        this onnxruntime build offers it, then CPU.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        check_manifest: bool = True,
        intra_op_threads: int | None = None,
        allow_spinning: bool = True,
        providers: Sequence[str] | None = None,
    ) -> None:
        self.path = Path(model)
        if not self.path.is_file():
            what = "is a directory, not a model file" if self.path.is_dir() else "does not exist"
            raise ArtifactError(f"{self.path}: model file {what}")
        self.manifest_checked = False
        if check_manifest:
            self.manifest_checked = self._check_manifest()

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only; warnings would pollute stderr
        if intra_op_threads is not None:
            if intra_op_threads < 1:
                raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
            options.intra_op_num_threads = intra_op_threads
        if not allow_spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(self.path),
                sess_options=options,
                providers=list(providers) if providers is not None else _default_providers(),
            )
        except Exception as err:  # onnxruntime raises its own untyped errors
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ArtifactError(
                f"{self.path}: not a valid ONNX model (empty, truncated or corrupt?): {reason}"
            ) from err
        self._describe()

    # -- loading ---------------------------------------------------------------------------

    def _check_manifest(self) -> bool:
        manifest_path = self.path.parent / MANIFEST_NAME
        if not manifest_path.is_file():
            return False
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            entry = manifest["artifacts"][self.path.name]
            expected = entry["sha256"]
        except (ValueError, KeyError, TypeError) as err:
            if isinstance(err, KeyError) and isinstance(manifest, dict):
                artifacts = manifest.get("artifacts")
                if isinstance(artifacts, dict) and self.path.name not in artifacts:
                    return False  # the manifest describes other files, not this one
            raise ArtifactError(
                f"{manifest_path}: unreadable manifest (no artifacts.{self.path.name}.sha256); "
                f"{_OPT_OUT}"
            ) from err
        actual = file_sha256(self.path)
        if actual != expected:
            raise ArtifactError(
                f"{self.path}: model changed since {manifest_path.name} was written "
                f"(sha256 {actual[:12]}… != {str(expected)[:12]}…); re-export it, or {_OPT_OUT}"
            )
        return True

    def _describe(self) -> None:
        session = self._session
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ArtifactError(
                f"{self.path}: expected one input and at least one output, "
                f"got {len(inputs)} input(s) and {len(outputs)} output(s)"
            )
        model_input, model_output = inputs[0], outputs[0]
        if model_input.type != "tensor(float)" or len(model_input.shape) != 2:
            raise ArtifactError(
                f"{self.path}: input {model_input.name!r} must be a float32 [batch, features] "
                f"tensor, got {model_input.type} with shape {model_input.shape}"
            )
        if model_output.type != "tensor(float)" or len(model_output.shape) != 2:
            raise ArtifactError(
                f"{self.path}: output {model_output.name!r} must be a float32 [batch, targets] "
                f"tensor, got {model_output.type} with shape {model_output.shape}"
            )
        self.input_name: str = model_input.name
        self.output_name: str = model_output.name
        self._output_names = [model_output.name]
        self._run = _fast_run(self._session)

        self.metadata: dict[str, str] = dict(session.get_modelmeta().custom_metadata_map)
        features = _json_names(self.metadata, "pomona.feature_names", self.path)
        targets = _json_names(self.metadata, "pomona.target_names", self.path)
        width, height = model_input.shape[1], model_output.shape[1]
        if features is None:
            if not isinstance(width, int):
                raise ArtifactError(
                    f"{self.path}: the number of features is neither fixed in the input shape "
                    "nor given by metadata 'pomona.feature_names'"
                )
            features = [f"f{i}" for i in range(width)]
        if targets is None:
            if not isinstance(height, int):
                raise ArtifactError(
                    f"{self.path}: the number of targets is neither fixed in the output shape "
                    "nor given by metadata 'pomona.target_names'"
                )
            targets = [f"y{i}" for i in range(height)]
        if isinstance(width, int) and width != len(features):
            raise ArtifactError(
                f"{self.path}: input has {width} features but metadata names {len(features)}"
            )
        if isinstance(height, int) and height != len(targets):
            raise ArtifactError(
                f"{self.path}: output has {height} targets but metadata names {len(targets)}"
            )
        self.feature_names: list[str] = features
        self.target_names: list[str] = targets
        self.n_features: int = len(features)
        self.n_targets: int = len(targets)
        self._expected = f"{self.n_features} features ({', '.join(features)})"

    # -- introspection ---------------------------------------------------------------------

    @property
    def providers(self) -> list[str]:
        """Execution providers the session actually uses."""
        return list(self._session.get_providers())

    @property
    def session(self) -> ort.InferenceSession:
        """The underlying onnxruntime session."""
        return self._session

    def __repr__(self) -> str:
        return (
            f"Predictor({str(self.path)!r}, features={self.feature_names}, "
            f"targets={self.target_names})"
        )

    # -- prediction ------------------------------------------------------------------------

    def predict(self, x: ArrayLike) -> np.ndarray:
        """Predict ``[n, T]`` float32 from ``[n, F]`` (or one row ``[F]``) numbers."""
        if type(x) is not np.ndarray or x.dtype is not _FLOAT32:
            x = self._as_float32(np.asarray(x))
        shape = x.shape
        if len(shape) != 2 or shape[1] != self.n_features or not shape[0]:
            x = self._one_row_or_raise(x)
        # NaN and inf propagate through a sum (a Python one is quickest for a few values,
        # a BLAS dot product for many); only when it is not finite (or overflowed) does
        # the exact check run, to name the offending cell.
        if x.size <= _SMALL:
            if not math.isfinite(sum(x.ravel().tolist())):
                self._raise_non_finite(x)
        elif not math.isfinite(np.vdot(x, x)):
            self._raise_non_finite(x)
        return self._run(self._output_names, {self.input_name: x}, None)[0]

    def predict_columns(self, columns: Mapping[str, ArrayLike] | Any) -> np.ndarray:
        """Predict from named columns (a mapping, pandas DataFrame or pyarrow table/batch).

        Columns are matched by name in any order; columns the model does not use are ignored.
        """
        missing = [name for name in self.feature_names if name not in _column_names(columns)]
        if missing:
            raise InputError(f"missing column(s) {', '.join(missing)}; expected {self._expected}")
        arrays = [_column_array(columns[name]) for name in self.feature_names]
        lengths = {a.shape[0] if a.ndim else 1 for a in arrays}
        if any(a.ndim > 1 for a in arrays):
            raise InputError("expected one-dimensional columns")
        if len(lengths) > 1:
            detail = ", ".join(
                f"{n}={a.size}" for n, a in zip(self.feature_names, arrays, strict=True)
            )
            raise InputError(f"columns have different lengths: {detail}")
        for name, a in zip(self.feature_names, arrays, strict=True):
            if a.dtype.kind not in _NUMERIC_KINDS:
                raise InputError(f"column {name!r} is not numeric (dtype {a.dtype})")
        return self.predict(np.stack([np.atleast_1d(a) for a in arrays], axis=1))

    # -- error paths -----------------------------------------------------------------------

    def _as_float32(self, arr: np.ndarray) -> np.ndarray:
        kind = arr.dtype.kind
        if kind in _NUMERIC_KINDS or kind == "O":
            try:
                with np.errstate(over="ignore", invalid="ignore"):  # overflow -> inf, rejected
                    return arr.astype(np.float32)
            except (TypeError, ValueError):
                pass
        raise InputError(f"expected numbers for {self._expected}, got dtype {arr.dtype}")

    def _one_row_or_raise(self, arr: np.ndarray) -> np.ndarray:
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        elif arr.ndim != 2:
            raise InputError(
                f"expected a [rows, features] array or one row of {self._expected}, "
                f"got {arr.ndim} dimensions with shape {arr.shape}"
            )
        rows, width = arr.shape
        if width != self.n_features:
            raise InputError(f"expected {self._expected}, got {width}")
        if rows == 0:
            raise InputError(f"expected at least one row of {self._expected}, got none")
        return arr

    def _raise_non_finite(self, arr: np.ndarray) -> None:
        bad = np.argwhere(~np.isfinite(arr))
        if bad.size == 0:
            return  # finite values whose float32 sum overflowed
        row, col = (int(i) for i in bad[0])
        raise InputError(
            f"non-finite value {arr[row, col]} at row {row}, feature {self.feature_names[col]!r}"
            f" ({len(bad)} non-finite value(s) in all); expected finite numbers"
        )


def _column_names(columns: Any) -> Any:
    names = getattr(columns, "column_names", None)  # pyarrow Table / RecordBatch
    return set(names) if names is not None else columns


def _column_array(column: Any) -> np.ndarray:
    if hasattr(column, "to_numpy") and not isinstance(column, np.ndarray):
        try:
            return np.asarray(column.to_numpy(zero_copy_only=False))
        except TypeError:
            return np.asarray(column.to_numpy())
    return np.asarray(column)
