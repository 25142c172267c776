"""``pomona predict --engine ray`` against single-process ``pomona predict``, same data, same run.

``ROWS`` rows (10M by default; ``POMONA_BENCH_RAY_ROWS`` for a smaller run) in 8
Parquet shards, Parquet out. Measured in this process:

* single process: ``predict_file`` over the 8 shards one after the other (what
  ``pomona predict`` does for each), one Predictor;
* Ray Data on a local cluster of 2 CPUs (started once, its start-up timed apart), with
  1 and 2 workers: ``predict_with_ray`` (the ``--engine ray`` command), whose time
  includes starting the workers.

Prints rows/s for each, the overhead ratio (1 worker vs single process) and the speed-up
of 2 workers over 1, and checks that every output shard equals the single-process one.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.predict import _model
from pomona.runtime.data import predict_file
from pomona.runtime.predictor import Predictor

ROWS = int(os.environ.get("POMONA_BENCH_RAY_ROWS", 10_000_000))
SHARDS = 8


def _shards(folder: Path, names: list[str]) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    paths = []
    per = -(-ROWS // SHARDS)
    for i in range(SHARDS):
        n = min(per, ROWS - i * per)
        x = rng.uniform(-100, 100, size=(n, len(names))).astype(np.float32)
        table = pa.table({name: x[:, j] for j, name in enumerate(names)})
        paths.append(folder / f"rows-{i}.parquet")
        pq.write_table(table, paths[-1])
    return paths


def _timed(fn: object, *args: object, **kwargs: object) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    import pyarrow.parquet as pq
    import ray

    from pomona.runtime.predict_ray import predict_with_ray

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = _model(folder)
        predictor = Predictor(model)
        shards = _shards(folder, predictor.feature_names)
        (folder / "single").mkdir()

        def single() -> None:
            for i, shard in enumerate(shards):
                predict_file(
                    predictor, str(shard), str(folder / "single" / f"part-{i:05d}.parquet")
                )

        t_single = _timed(single)
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        t_start = time.perf_counter() - start
        try:
            times = {}
            for workers in (1, 2):
                out = folder / f"ray{workers}"
                times[workers] = _timed(
                    predict_with_ray,
                    str(model),
                    str(folder / "rows-*.parquet"),
                    str(out),
                    workers=workers,
                )
                for i in range(SHARDS):
                    name = f"part-{i:05d}.parquet"
                    same = pq.read_table(out / name).equals(pq.read_table(folder / "single" / name))
                    assert same, f"{out / name} differs from the single-process output"
        finally:
            ray.shutdown()
    print(
        f"rows: {ROWS:,} in {SHARDS} Parquet shards; Ray local cluster of 2 CPUs "
        f"(start-up {t_start:.1f} s, not counted)"
    )
    print(f"single process   {ROWS / t_single:>12,.0f} rows/s  ({t_single:.2f} s)")
    for workers, t in times.items():
        print(f"ray, {workers} worker(s) {ROWS / t:>12,.0f} rows/s  ({t:.2f} s)")
    print(f"overhead ratio (ray 1 worker / single process): {times[1] / t_single:.2f}")
    print(f"speed-up of 2 workers over 1: {times[1] / times[2]:.2f}")
    print("every output shard equals the single-process one: yes")


if __name__ == "__main__":
    main()
