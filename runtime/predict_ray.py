"""``pomona predict --engine ray``: Parquet or CSV shards in, output shards out, on Ray Data.

Everything that can be checked on the driver is, before a worker starts: the model
loads, every shard exists and has the model's feature columns (and the ``--keep``
ones), the output folder is free. Then a Ray cluster (local, or joined with
``address``) hands the shards to ``workers`` :class:`ShardWorker` actors, each holding
one Predictor: input shard ``k`` (in name order) becomes output shard
``part-0000k.parquet``, written by the same data layer as ``pomona predict`` (same
values, same text, same errors), so the output's order is the input's. The shards go
to a temporary folder beside the output, renamed onto it at the end. Input and output
folders must be on a file system every worker sees (one machine, or a shared mount).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import signal
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pomona.runtime.clikit import SIGNALS
from pomona.runtime.data import DEFAULT_BATCH_SIZE, Spec, format_for, open_batches, predict_file
from pomona.runtime.errors import DataError, PomonaError
from pomona.runtime.files import temporary_folder
from pomona.runtime.predictor import Predictor
from pomona.runtime.ray import CPUS_PER_WORKER, check_keep

__all__ = ["OUTPUT_FORMATS", "find_shards", "predict_with_ray"]

#: Formats the Ray engine reads and writes.
OUTPUT_FORMATS = ("parquet", "csv")


def find_shards(input_path: str) -> tuple[list[str], str]:
    """The input files (a folder's Parquet or CSV files, a glob's matches, or one file),
    sorted by name, and their one format."""
    if os.path.isdir(input_path):
        paths = [str(p) for p in sorted(Path(input_path).iterdir()) if p.is_file()]
        paths = [p for p in paths if format_for(p, None) in OUTPUT_FORMATS]
    elif glob.has_magic(input_path):
        paths = sorted(p for p in glob.glob(input_path) if os.path.isfile(p))
    elif os.path.exists(input_path):
        paths = [input_path]
    else:
        raise DataError(f"{input_path}: no such file or folder")
    if not paths:
        raise DataError(f"{input_path}: no Parquet or CSV files (.parquet, .csv) found")
    formats = {format_for(p, None) for p in paths}
    if len(formats) > 1 or not formats <= set(OUTPUT_FORMATS):
        found = ", ".join(sorted(str(f or "unknown") for f in formats))
        raise DataError(
            f"{input_path}: --engine ray reads shards of one format, Parquet or CSV; found {found}"
        )
    return paths, str(formats.pop())


def _check_shards(paths: Sequence[str], spec: Spec) -> None:
    """DataError unless every shard has the wanted columns (and a first row that reads)."""
    for path in paths:
        with open_batches(path, spec, 1) as (_, _, batches):
            next(batches, None)


def _free_output(output: Path) -> None:
    if output.is_dir() and any(output.iterdir()):
        raise DataError(f"{output}: the output folder exists and is not empty")
    if output.exists() and not output.is_dir():
        raise DataError(f"{output}: exists and is not a folder; --engine ray writes a folder")
    if not output.parent.is_dir():
        raise DataError(f"{output.parent}: no such folder for the output")


def predict_with_ray(
    model: str,
    input_path: str,
    output: str,
    *,
    output_format: str | None = None,
    workers: int = 1,
    address: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    keep: Sequence[str] = (),
    delimiter: str | None = None,
    check_manifest: bool = True,
    threads: int | None = None,
) -> list[str]:
    """Predict every shard of ``input_path`` into the folder ``output``; its file names.

    Joins the running Ray cluster when this process has one (``ray.init`` already
    called) or ``address`` names one, else starts a local cluster for the call.
    """
    if output == "-":
        raise DataError("--engine ray writes a folder of shards; give it with -o FOLDER")
    predictor = Predictor(model, check_manifest=check_manifest)
    keep = list(dict.fromkeys(keep))
    check_keep(keep, predictor.target_names)
    fmt = output_format or "parquet"
    if fmt not in OUTPUT_FORMATS:
        raise DataError(f"--engine ray writes Parquet or CSV, not {fmt}")
    paths, _ = find_shards(input_path)
    spec = Spec.of(predictor.feature_names, keep, delimiter=delimiter)
    _check_shards(paths, spec)
    paths = [str(Path(p).resolve()) for p in paths]
    target = Path(output)
    _free_output(target)
    options = {
        "output_format": fmt,
        "batch_size": batch_size,
        "keep": keep,
        "delimiter": delimiter,
        "check_manifest": check_manifest,
        "threads": threads,
    }
    with temporary_folder(target.parent, f".{target.name}.") as staging:
        with _cluster(address):
            _run(paths, str(Path(model).resolve()), staging.resolve(), workers, options)
        with contextlib.suppress(FileNotFoundError):
            target.rmdir()  # an empty folder is replaced
        staging.rename(target)
    return sorted(os.listdir(target))


@contextlib.contextmanager
def _cluster(address: str | None) -> Iterator[None]:
    """Ray, quiet: no progress bars, no worker logs on this terminal, warnings only."""
    import ray

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"ray\.")
        if ray.is_initialized():
            yield
            return
        handlers = {signum: signal.getsignal(signum) for signum in SIGNALS}
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
        _restore(handlers)  # Ray's core puts its own (a stack dump) in place of ours
        try:
            yield
        finally:
            ray.shutdown()


def _restore(handlers: dict[signal.Signals, Any]) -> None:
    """Put back the Python signal handlers (from the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, handler in handlers.items():
        if callable(handler):
            signal.signal(signum, handler)


class ShardWorker:
    """One Ray worker: a Predictor, and ``predict_file`` from each input shard it is handed
    to the output shard of the same number (the data layer's readers, writers and errors)."""

    def __init__(self, model: str, staging: str, options: dict[str, Any]) -> None:
        from pomona.runtime.ray import worker_threads

        self.options = dict(options)
        threads = self.options.pop("threads")
        self.predictor = Predictor(
            model,
            check_manifest=self.options.pop("check_manifest"),
            intra_op_threads=threads if threads is not None else worker_threads(),
        )
        self.staging = Path(staging)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows predicted per shard, and the message of a PomonaError (Ray would keep only
        its traceback text), empty when none."""
        rows, errors = [], []
        for i, path in zip(batch["index"], batch["path"], strict=True):
            part = self.staging / f"part-{int(i):05d}.{self.options['output_format']}"
            try:
                rows.append(predict_file(self.predictor, str(path), str(part), **self.options))
                errors.append("")
            except PomonaError as err:
                rows.append(0)
                errors.append(str(err))
        return {"index": batch["index"], "rows": np.asarray(rows), "error": np.asarray(errors)}


def _run(paths: list[str], model: str, staging: Path, workers: int, options: dict[str, Any]) -> int:
    """Hand the shards to ``workers`` Ray workers; the number of rows predicted."""
    import ray
    from ray.data import ActorPoolStrategy

    shards = ray.data.from_items(
        [{"index": i, "path": p} for i, p in enumerate(paths)], override_num_blocks=len(paths)
    )
    done = shards.map_batches(
        ShardWorker,
        fn_constructor_kwargs={"model": model, "staging": str(staging), "options": options},
        batch_size=1,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=min(workers, len(paths))),
        num_cpus=CPUS_PER_WORKER,
    )
    try:
        results = sorted(done.take_all(), key=lambda row: int(row["index"]))
    except Exception as err:
        first = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise DataError(f"Ray failed: {first}") from None
    failed = [str(row["error"]) for row in results if row["error"]]
    if failed:
        raise DataError(failed[0])
    return sum(int(row["rows"]) for row in results)
