"""Batch prediction on Ray Data (``pip install 'pomona[ray]'``).

:class:`BatchPredictor` is the callable class for ``Dataset.map_batches``: each worker
builds one :class:`~pomona.runtime.predictor.Predictor` (one onnxruntime session) and calls
it on every batch of named columns it is given::

    import ray
    from pomona.runtime.ray import predict_dataset

    ds = ray.data.read_parquet("s3://bucket/rows/")
    predicted = predict_dataset(ds, "model.onnx", workers=4, keep=["id"])
    predicted.write_parquet("s3://bucket/predictions/")

Ray is imported only when a worker asks for its CPU allotment; this module imports
nothing heavy itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pomona.runtime.data import DEFAULT_BATCH_SIZE
from pomona.runtime.errors import DataError
from pomona.runtime.predictor import Predictor

__all__ = ["CPUS_PER_WORKER", "BatchPredictor", "predict_dataset", "worker_threads"]

#: CPUs each predicting worker claims from Ray: half of one, so that on a small cluster
#: Ray Data still has room to schedule its reads and writes beside the workers.
CPUS_PER_WORKER = 0.5


def worker_threads() -> int:
    """The CPUs Ray assigned to this worker (``get_assigned_resources``), at least 1."""
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
    return max(1, int(cpus))


class BatchPredictor:
    """``batch -> predictions`` for ``map_batches(..., batch_format="numpy")``.

    A batch is a mapping of column name to numpy array; the model's feature columns are
    taken by name (others ignored). The result holds the ``keep`` columns as they came,
    then one float32 column per model output, named after the model's targets.

    Parameters
    ----------
    model:
        Path to ``model.onnx``, readable on every node that runs a worker.
    keep:
        Input columns copied to the output before the predictions (e.g. an ID).
    check_manifest:
        As for :class:`~pomona.runtime.predictor.Predictor`.
    threads:
        onnxruntime intra-op threads. Default: the CPUs Ray assigned to this worker.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        keep: Sequence[str] = (),
        check_manifest: bool = True,
        threads: int | None = None,
    ) -> None:
        self.predictor = Predictor(
            model,
            check_manifest=check_manifest,
            intra_op_threads=threads if threads is not None else worker_threads(),
        )
        self.keep = list(keep)
        check_keep(self.keep, self.predictor.target_names)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        predictions = self.predictor.predict_columns(batch)
        out = {name: batch[name] for name in self.keep}
        for j, target in enumerate(self.predictor.target_names):
            out[target] = np.ascontiguousarray(predictions[:, j])
        return out


def check_keep(keep: Sequence[str], targets: Sequence[str]) -> None:
    """DataError when a pass-through column has the name of a model output."""
    clash = [k for k in keep if k in targets]
    if clash:
        raise DataError(f"--keep column(s) {', '.join(clash)} clash with the model's outputs")


def predict_dataset(
    ds: Any,
    model: str | os.PathLike[str],
    *,
    workers: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    keep: Sequence[str] = (),
    check_manifest: bool = True,
    threads: int | None = None,
    cpus_per_worker: float = CPUS_PER_WORKER,
) -> Any:
    """``ds`` with the model's predictions: ``workers`` actors, one Predictor each (lazy).

    Each worker claims ``cpus_per_worker`` CPUs and runs ``threads`` onnxruntime threads
    (default: its allotment, at least 1).

    The result has the ``keep`` columns, then one column per model output; nothing runs
    until it is consumed (written, iterated, materialized).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    from ray.data import ActorPoolStrategy

    return ds.map_batches(
        BatchPredictor,
        fn_constructor_kwargs={
            "model": os.fspath(model),
            "keep": list(keep),
            "check_manifest": check_manifest,
            "threads": threads,
        },
        compute=ActorPoolStrategy(size=workers),
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=cpus_per_worker,
    )
