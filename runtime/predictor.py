"""Load an exported ONNX model and predict from arrays or named columns.

The model runs on a backend (:mod:`pomona.runtime.backends`): onnxruntime, or numpy
alone where onnxruntime is missing. Imports numpy only at module level: no torch, no
onnx package, and onnxruntime only when that backend loads. One :class:`Predictor` is
safe to call from several threads at once (both backends' ``run`` are thread-safe and
the predictor keeps no per-call state).
A predictor can be pickled (to Ray or Spark workers): the copy loads the model
again in its own process on first use.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from pomona.runtime._session import read_interface
from pomona.runtime.artifacts import ExternalData, read_external_data
from pomona.runtime.artifacts import check_manifest as compare_with_manifest
from pomona.runtime.backends import Backend, open_backend
from pomona.runtime.errors import ArtifactError, InputError

__all__ = ["Predictor"]

_OPT_OUT = "pass check_manifest=False (CLI: --no-manifest-check) to use it anyway"
_NUMERIC_KINDS = frozenset("iuf")
_FLOAT32 = np.dtype(np.float32)
_SMALL = 256  # up to this many values, check finiteness with a Python sum
_MISMATCH_RETRIES = (0.0, 0.01, 0.05, 0.1, 0.25)  # seconds before each look again


class Predictor:
    """An ONNX regression model: ``[n, F]`` float32 features in, ``[n, T]`` float32 out.

    A model whose ``pomona.format`` this runtime does not read is refused; one without
    that metadata (a plain ONNX file) is taken as it is, its names by position. At load
    one row of zeros is run: a model whose real output is not the float32 ``[1, T]`` it
    declares is refused (:class:`~pomona.runtime.errors.ArtifactError`).

    Parameters
    ----------
    model:
        Path to ``model.onnx`` (or onnxruntime's ``model.ort``, onnxruntime backend only).
    check_manifest:
        When a ``manifest.json`` in the model's folder lists a model, refuse this model
        unless its content (whatever its file name) and every external data file it
        points to match the sha256 recorded there; refuse a manifest that cannot be
        read (:func:`pomona.runtime.artifacts.check_manifest`).
    intra_op_threads:
        Threads onnxruntime uses inside one call (``None``: the CPUs this process may
        run on, :func:`pomona.runtime.system.available_cpus`). The numpy backend leaves
        threading to numpy's BLAS.
    allow_spinning:
        Let idle worker threads spin; turn off when serving many small requests.
    providers:
        onnxruntime execution providers, in order of preference. Default: CUDA when
        this onnxruntime build offers it, then CPU.
    backend:
        ``auto`` (onnxruntime when it imports, numpy otherwise), ``onnxruntime`` or
        ``numpy`` (:func:`pomona.runtime.backends.choose_backend`).
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        check_manifest: bool = True,
        intra_op_threads: int | None = None,
        allow_spinning: bool = True,
        providers: Sequence[str] | None = None,
        backend: str = "auto",
    ) -> None:
        self.path = Path(model)
        data = _read_model(self.path)
        self.manifest_checked = False
        external: tuple[ExternalData, ...] = ()
        if check_manifest:
            self.manifest_checked, data, external = self._check_manifest(data)
        #: sha256 of the model bytes this predictor runs (checked against the manifest
        #: when ``manifest_checked``); a copy in another process runs only these bytes.
        self.sha256: str = hashlib.sha256(data).hexdigest()
        #: sha256 of each external data file run with it, by location (when checked).
        self._external_sha256 = {e.location: e.sha256 for e in external}
        self._options: dict[str, Any] = {
            "backend": backend,
            "intra_op_threads": intra_op_threads,
            "allow_spinning": allow_spinning,
            "providers": providers,
        }
        loaded = open_backend(self.path, **self._options, data=data, external=external)
        self._backend: Backend | None = loaded
        interface = read_interface(loaded.inputs, loaded.outputs, loaded.metadata, self.path)
        self._interface = interface
        #: The backend that runs the model: ``onnxruntime`` or ``numpy``.
        self.backend: str = loaded.name
        self.inputs, self.outputs = loaded.inputs, loaded.outputs
        self.input_name: str = interface.input_name
        self.output_name: str = interface.output_name
        self._output_names = [interface.output_name]
        self._run = loaded.run
        self.metadata: dict[str, str] = interface.metadata
        #: The ONNX graph's name: the name the model was exported under.
        self.graph_name: str = loaded.graph_name
        self.feature_names: list[str] = interface.feature_names
        self.target_names: list[str] = interface.target_names
        self.n_features: int = len(self.feature_names)
        self.n_targets: int = len(self.target_names)
        self._expected = f"{self.n_features} features ({', '.join(self.feature_names)})"
        self._check_output()

    def _check_output(self) -> None:
        """Run one row of zeros: the model must return ``[1, T]`` float32, as it declares.

        onnxruntime does not hold a model to its declared output shape, and a model whose
        real width differs would write more values than header columns.
        """
        try:
            out = self.predict(np.zeros((1, self.n_features), dtype=np.float32))
        except Exception as err:  # onnxruntime raises its own untyped errors
            reason = (str(err).strip() or type(err).__name__).splitlines()[0]
            raise ArtifactError(
                f"{self.path}: the model fails on one row of zeros: {reason}"
            ) from None
        expected = (1, self.n_targets)
        if getattr(out, "shape", None) != expected or getattr(out, "dtype", None) != _FLOAT32:
            shape = list(getattr(out, "shape", ()))
            raise ArtifactError(
                f"{self.path}: output {self.output_name!r} declares {self.n_targets} target(s) "
                f"({', '.join(self.target_names)}), but for one row the model returns "
                f"{getattr(out, 'dtype', type(out).__name__)} of shape {shape}, "
                f"not float32 of shape {list(expected)}; export it again"
            )

    def _check_manifest(self, data: bytes) -> tuple[bool, bytes, tuple[ExternalData, ...]]:
        """Whether the manifest beside the model vouches for ``data`` (the model's bytes),
        and the bytes it vouched for (the model's and its external data's); raise when it
        refuses them."""
        check = compare_with_manifest(self.path, data=data)
        # An export replacing a folder in place moves model.onnx in just before
        # manifest.json: a reader in between sees the new model beside the old manifest.
        for delay in _MISMATCH_RETRIES:
            if check.status != "mismatch":
                break
            time.sleep(delay)
            data = _read_model(self.path)
            check = compare_with_manifest(self.path, data=data)
        if check.status == "mismatch":
            raise ArtifactError(f"{self.path}: {check.detail}; re-export it, or {_OPT_OUT}")
        if check.refused:
            raise ArtifactError(f"{self.path}: {check.detail}; {_OPT_OUT}")
        return check.status == "ok", data, check.external

    # -- introspection ---------------------------------------------------------------------

    @property
    def providers(self) -> list[str]:
        """Execution providers the onnxruntime session actually uses (none for numpy)."""
        return list(self._loaded().providers)

    @property
    def session(self) -> Any:
        """The onnxruntime ``InferenceSession``, or the numpy backend's compiled program
        (loaded here in a process that unpickled the predictor)."""
        return self._loaded().session

    # -- pickling: the loaded model stays in its process; a copy loads its own ---------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_backend"] = state["_run"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._run = self._open_and_run

    def _open_and_run(self, *args: Any) -> Any:
        self._loaded()
        return self._run(*args)

    def _loaded(self) -> Backend:
        """The loaded model; in an unpickled predictor, load it, refusing a changed model.

        Without a thread count, use ``OMP_NUM_THREADS``: Ray and Spark set it in each
        worker to the CPUs that worker was given.
        """
        if self._backend is not None:
            return self._backend
        options = dict(self._options)
        if options["intra_op_threads"] is None:
            options["intra_op_threads"] = _allotted_threads()
        data = _read_model(self.path)
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise ArtifactError(f"{self.path}: the model file changed since it was loaded")
        external = read_external_data(self.path, self._external_sha256)
        loaded = open_backend(self.path, **options, data=data, external=external)
        interface = read_interface(loaded.inputs, loaded.outputs, loaded.metadata, self.path)
        if interface != self._interface:
            raise ArtifactError(f"{self.path}: the model file changed since it was loaded")
        self._backend, self._run = loaded, loaded.run
        return loaded

    def __repr__(self) -> str:
        return (
            f"Predictor({str(self.path)!r}, features={self.feature_names}, "
            f"targets={self.target_names}, backend={self.backend!r})"
        )

    # -- prediction ------------------------------------------------------------------------

    def predict(self, x: ArrayLike) -> np.ndarray:
        """Predict ``[n, T]`` float32 from ``[n, F]`` (or one row ``[F]``) numbers.

        A table with column names (a mapping, pandas DataFrame, pyarrow Table or
        RecordBatch) is matched by name, as :meth:`predict_columns` does; only a bare array
        (or nested lists) is taken by position.
        """
        if type(x) is not np.ndarray or x.dtype is not _FLOAT32:
            if _is_table(x):
                return self.predict_columns(x)
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


def _allotted_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a positive integer, else None (onnxruntime's default)."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def _read_model(path: Path) -> bytes:
    """The bytes of ``path``; ArtifactError unless it is a regular file this process can read.

    Read once: the manifest check hashes these bytes and the backend runs them.
    """
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise ArtifactError(f"{path}: model file is a directory, not a model file")
        if not stat.S_ISREG(mode):
            raise ArtifactError(f"{path}: model file is not a regular file")
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: model file does not exist") from None
    except OSError as err:
        raise ArtifactError(f"{path}: cannot read the model file: {err.strerror or err}") from None


def _is_table(x: Any) -> bool:
    """Whether ``x`` names its columns: a mapping, DataFrame, or pyarrow table or batch."""
    if isinstance(x, Mapping):
        return True
    return not isinstance(x, np.ndarray) and (
        hasattr(x, "column_names") or (hasattr(x, "columns") and hasattr(x, "dtypes"))
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
