"""Load an exported ONNX model with onnxruntime and predict from arrays or named columns.

Imports numpy and onnxruntime only: no torch, no onnx package. One
:class:`Predictor` is safe to call from several threads at once
(``InferenceSession.run`` is thread-safe and the predictor keeps no per-call state).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import ArrayLike

from pomona.runtime._session import fast_run, open_session, read_interface
from pomona.runtime.artifacts import check_manifest as compare_with_manifest
from pomona.runtime.errors import ArtifactError, InputError

__all__ = ["Predictor"]

_OPT_OUT = "pass check_manifest=False (CLI: --no-manifest-check) to use it anyway"
_NUMERIC_KINDS = frozenset("iuf")
_FLOAT32 = np.dtype(np.float32)
_SMALL = 256  # up to this many values, check finiteness with a Python sum
_MISMATCH_RETRIES = (0.0, 0.01, 0.1)  # seconds before each new look at a changing folder


class Predictor:
    """An ONNX regression model: ``[n, F]`` float32 features in, ``[n, T]`` float32 out.

    A model whose ``pomona.format`` this runtime does not read is refused; one without
    that metadata (a plain ONNX file) is taken as it is, its names by position.

    Parameters
    ----------
    model:
        Path to ``model.onnx``.
    check_manifest:
        When ``manifest.json`` sits beside the model and lists it, refuse a model whose
        sha256 differs from the one recorded there, or a manifest that cannot be read
        (:func:`pomona.runtime.artifacts.check_manifest`).
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
        self._session = open_session(
            self.path,
            intra_op_threads=intra_op_threads,
            allow_spinning=allow_spinning,
            providers=providers,
        )
        interface = read_interface(self._session, self.path)
        self.input_name: str = interface.input_name
        self.output_name: str = interface.output_name
        self._output_names = [interface.output_name]
        self._run = fast_run(self._session)
        self.metadata: dict[str, str] = interface.metadata
        self.feature_names: list[str] = interface.feature_names
        self.target_names: list[str] = interface.target_names
        self.n_features: int = len(self.feature_names)
        self.n_targets: int = len(self.target_names)
        self._expected = f"{self.n_features} features ({', '.join(self.feature_names)})"

    def _check_manifest(self) -> bool:
        """True when the manifest beside the model vouches for it; raise when it refuses it."""
        check = compare_with_manifest(self.path)
        # An export replacing the folder moves model.onnx in just before manifest.json:
        # a reader in between sees the new model beside the old manifest. Look again.
        for delay in _MISMATCH_RETRIES:
            if check.status != "mismatch":
                break
            time.sleep(delay)
            check = compare_with_manifest(self.path)
        if check.status == "mismatch":
            raise ArtifactError(f"{self.path}: {check.detail}; re-export it, or {_OPT_OUT}")
        if check.refused:
            raise ArtifactError(f"{self.path}: {check.detail}; {_OPT_OUT}")
        return check.status == "ok"

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
