"""Prediction speed and memory: ``Predictor`` and ``pomona predict`` against references.

Every ratio compares two things measured in this run, on this machine, best of several
interleaved tries, so a busy machine slows both sides alike:

* ``Predictor.predict`` at batch 1 vs the public ``InferenceSession.run`` and vs the
  compiled-session call ``Predictor`` itself makes (``ort_backend.fast_run``): the second
  is the same call on both sides, so it shows only the predictor's own overhead;
* ``Predictor.predict`` at 1M rows vs ``InferenceSession.run``;
* ``pomona predict`` on a 1M-row CSV (CSV out) vs two pandas pipelines: the naive one
  (``read_csv`` parsing every column as float64 with the default engine, ``to_csv``) and
  the careful one (pyarrow engine, ``usecols``, float32, pyarrow's CSV writer); and its
  peak RSS against both;
* the peak RSS of ``pomona predict`` on 10M rows vs 1M rows (each the highest of the
  same number of interleaved runs);
* a one-row ``pomona predict`` vs ``python -c "import onnxruntime"``, and its peak RSS.

The model is ``artifacts/model.onnx`` when present, else a linear model exported by
``pomona.export``. Peak RSS of a child process is its ``ru_maxrss``.

Pomona's own modules are byte-compiled first, as ``pip install`` does: the start-up
comparison would otherwise time Python compiling an editable checkout on every run
(``onnxruntime``'s bytecode is compiled at install time).
"""

from __future__ import annotations

import compileall
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pomona.runtime.backends.ort_backend import fast_run
from pomona.runtime.predictor import Predictor

REPO = Path(__file__).resolve().parent.parent
ROWS = 1_000_000
BIG_ROWS = 10_000_000
MiB = 1 << 20

# Limits from the runtime's speed targets (ratio <= limit passes).
LIMITS = {
    "batch1": 1.3,
    "batch1_fast": 1.3,
    "rows1m": 1.2,
    "csv_time": 0.5,
    "csv_time_careful": 1.0,
    "csv_rss_mib": 150,
    "rss_10m_vs_1m": 1.2,
    "one_row_time": 1.5,
    "one_row_rss_mib": 80,
}

_PANDAS_START = """
import json, sys
import numpy as np, onnxruntime as ort, pandas as pd
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
features = json.loads(meta["pomona.feature_names"])
targets = json.loads(meta["pomona.target_names"])
"""

# What a first draft does: every column parsed as float64 by the default engine.
_PANDAS_NAIVE = (
    _PANDAS_START
    + """
frame = pd.read_csv(sys.argv[2])
x = frame[features].to_numpy(np.float32)
y = session.run(None, {session.get_inputs()[0].name: x})[0]
pd.DataFrame(y, columns=targets).to_csv(sys.argv[3], index=False)
"""
)

# What a careful engineer writes: pyarrow's multithreaded parser, only the feature
# columns, float32 from the start, and pyarrow's CSV writer for the output.
_PANDAS_CAREFUL = (
    _PANDAS_START
    + """
import pyarrow as pa, pyarrow.csv as pacsv
frame = pd.read_csv(
    sys.argv[2], engine="pyarrow", usecols=features, dtype={f: np.float32 for f in features}
)
x = np.ascontiguousarray(frame[features].to_numpy(np.float32))
y = session.run(None, {session.get_inputs()[0].name: x})[0]
pacsv.write_csv(pa.table({t: y[:, i] for i, t in enumerate(targets)}), sys.argv[3])
"""
)


def _model(folder: Path) -> Path:
    """``artifacts/model.onnx``, else the crop model's shape (3 -> 2, linear) exported by
    Pomona's own ONNX exporter with fixed weights."""
    artifact = REPO / "artifacts" / "model.onnx"
    if artifact.is_file():
        return artifact
    import json

    import torch

    from pomona.export.onnx_export import export_onnx, serialize_onnx

    linear = torch.nn.Linear(3, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[0.5, 0.75, 0.125], [-0.25, 1.0, 0.5]]))
        linear.bias.copy_(torch.tensor([1.0, -2.0]))
    metadata = {
        "pomona.format": "1",
        "pomona.feature_names": json.dumps(["temp", "rainfall", "humidity"]),
        "pomona.target_names": json.dumps(["apples", "oranges"]),
    }
    path = folder / "model.onnx"
    path.write_bytes(serialize_onnx(export_onnx(torch.nn.Sequential(linear), 3, metadata)))
    return path


# Runs one command and reports its wall time and peak RSS. The measuring process is
# small on purpose: a child forked from a big process inherits that process's RSS
# high-water mark in ru_maxrss.
_MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
wall = time.perf_counter() - start
print(code, wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
"""


def _child(command: Sequence[str | Path]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process (Linux: ru_maxrss is KiB)."""
    result = subprocess.run(
        [sys.executable, "-S", "-c", _MEASURE, *map(str, command)],
        capture_output=True,
        text=True,
        check=True,
    )
    code, wall, rss = result.stdout.split()
    if code != "0":
        raise RuntimeError(f"{' '.join(map(str, command))} failed: {result.stderr}")
    return float(wall), float(rss)


def _best(
    commands: dict[str, Sequence[str | Path]], repeats: int
) -> dict[str, tuple[float, float]]:
    """Best wall time and the peak RSS of each command, runs interleaved."""
    best: dict[str, tuple[float, float]] = {}
    for _ in range(repeats):
        for name, command in commands.items():
            wall, rss = _child(command)
            old = best.get(name, (float("inf"), 0.0))
            best[name] = (min(old[0], wall), max(old[1], rss))
    return best


def _interleaved(
    calls: dict[str, Callable[[], object]], number: int, rounds: int
) -> dict[str, float]:
    best = {name: float("inf") for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            best[name] = min(best[name], min(timeit.repeat(call, number=number, repeat=3)) / number)
    return best


def _report(label: str, value: float, limit: float, detail: str) -> bool:
    ok = value <= limit
    print(f"{label:<52} {value:8.3f}  (limit {limit:g}) {'ok' if ok else 'OVER'}   {detail}")
    return ok


def _csv_block(x: np.ndarray) -> str:
    ids = np.arange(len(x)).astype(str)
    cells = np.column_stack([ids, np.char.mod("%.6g", x)])
    return "\n".join(",".join(row) for row in cells.tolist()) + "\n"


def _write_csv(path: Path, block: str, names: list[str], copies: int = 1) -> None:
    with path.open("w") as handle:
        handle.write(",".join(["id", *names]) + "\n")
        for _ in range(copies):
            handle.write(block)


def _in_memory(predictor: Predictor, rows: np.ndarray) -> list[bool]:
    """``Predictor.predict`` against onnxruntime called directly, in this process."""
    session = predictor.session
    name, output = predictor.input_name, [predictor.output_name]
    fast = fast_run(session)  # the compiled session's run, as Predictor calls it
    one = np.random.default_rng(0).normal(size=(1, predictor.n_features)).astype(np.float32)
    times = _interleaved(
        {
            "public": lambda: session.run(output, {name: one}),
            "fast": lambda: fast(output, {name: one}, None),
            "predictor": lambda: predictor.predict(one),
        },
        number=20_000,
        rounds=5,
    )
    us = {key: value * 1e6 for key, value in times.items()}
    results = [
        _report(
            "Predictor.predict batch 1 / session.run",
            times["predictor"] / times["public"],
            LIMITS["batch1"],
            f"{us['predictor']:.2f} us vs {us['public']:.2f} us",
        ),
        _report(
            "Predictor.predict batch 1 / same compiled call",
            times["predictor"] / times["fast"],
            LIMITS["batch1_fast"],
            f"{us['predictor']:.2f} us vs {us['fast']:.2f} us",
        ),
    ]
    times = _interleaved(
        {
            "raw": lambda: session.run(output, {name: rows}),
            "predictor": lambda: predictor.predict(rows),
        },
        number=3,
        rounds=5,
    )
    results.append(
        _report(
            "Predictor.predict 1M rows / session.run",
            times["predictor"] / times["raw"],
            LIMITS["rows1m"],
            f"{times['predictor'] * 1e3:.1f} ms vs {times['raw'] * 1e3:.1f} ms",
        )
    )
    return results


def _against_pandas(cli: list[str | Path], model: Path, source: Path, folder: Path) -> list[bool]:
    """``pomona predict`` on a CSV against the naive and the careful pandas pipelines."""
    commands: dict[str, Sequence[str | Path]] = {
        "pomona": [*cli, "predict", model, source, "-o", folder / "out-pomona.csv"]
    }
    for kind, code in (("naive", _PANDAS_NAIVE), ("careful", _PANDAS_CAREFUL)):
        script = folder / f"pandas_{kind}.py"
        script.write_text(code)
        commands[kind] = [sys.executable, script, model, source, folder / f"out-{kind}.csv"]
    best = _best(commands, repeats=3)
    size = source.stat().st_size / 1e6
    pomona_time, pomona_rss = best["pomona"]
    results = []
    for kind, limit in (("naive", "csv_time"), ("careful", "csv_time_careful")):
        other_time, _ = best[kind]
        results.append(
            _report(
                f"pomona predict 1M-row CSV ({size:.0f} MB) / pandas {kind}",
                pomona_time / other_time,
                LIMITS[limit],
                f"{pomona_time:.2f} s vs {other_time:.2f} s",
            )
        )
    results.append(
        _report(
            "pomona predict 1M-row CSV peak RSS (MiB)",
            pomona_rss,
            LIMITS["csv_rss_mib"],
            f"pandas naive {best['naive'][1]:.0f} MiB, careful {best['careful'][1]:.0f} MiB",
        )
    )
    return results


def _ten_times_the_rows(
    cli: list[str | Path], model: Path, source: Path, big: Path, folder: Path
) -> bool:
    """Peak RSS on 10M rows vs 1M rows: the highest of the same interleaved runs each."""
    best = _best(
        {
            "1m": [*cli, "predict", model, source, "-o", folder / "out-1m.csv"],
            "10m": [*cli, "predict", model, big, "-o", folder / "out-10m.csv"],
        },
        repeats=2,
    )
    (small_time, small_rss), (big_time, big_rss) = best["1m"], best["10m"]
    return _report(
        f"pomona predict 10M-row CSV ({big.stat().st_size / 1e6:.0f} MB) peak RSS / 1M",
        big_rss / small_rss,
        LIMITS["rss_10m_vs_1m"],
        f"{big_rss:.0f} MiB vs {small_rss:.0f} MiB; {big_time:.1f} s vs {small_time:.2f} s",
    )


def _one_row(cli: list[str | Path], model: Path, predictor: Predictor, folder: Path) -> list[bool]:
    """Start-up cost: a one-row prediction against importing onnxruntime."""
    tiny = folder / "one-row.csv"
    header = ",".join(predictor.feature_names)
    tiny.write_text(f"{header}\n{','.join(['1'] * predictor.n_features)}\n")
    best = _best(
        {
            "pomona": [*cli, "predict", model, tiny, "-o", folder / "one-row-out.csv"],
            "ort": [sys.executable, "-c", "import onnxruntime"],
        },
        repeats=7,
    )
    (one_time, one_rss), (ort_time, ort_rss) = best["pomona"], best["ort"]
    return [
        _report(
            "pomona predict one row / import onnxruntime",
            one_time / ort_time,
            LIMITS["one_row_time"],
            f"{one_time:.3f} s vs {ort_time:.3f} s",
        ),
        _report(
            "pomona predict one row peak RSS (MiB)",
            one_rss,
            LIMITS["one_row_rss_mib"],
            f"import onnxruntime {ort_rss:.0f} MiB",
        ),
    ]


def main() -> None:
    for package in ("runtime", "train", "export"):
        compileall.compile_dir(REPO / package, quiet=1)
    with tempfile.TemporaryDirectory(prefix="pomona-bench-") as tmp:
        folder = Path(tmp)
        model = _model(folder)
        predictor = Predictor(model)
        print(f"model: {model} ({predictor.n_features} features -> {predictor.n_targets} targets)")
        rows = np.random.default_rng(1).uniform(0, 100, (ROWS, predictor.n_features))
        rows = rows.astype(np.float32)
        results = _in_memory(predictor, rows)

        pomona = Path(sys.executable).with_name("pomona")
        cli: list[str | Path] = (
            [pomona] if pomona.exists() else [sys.executable, "-m", "pomona.runtime.cli"]
        )
        source, big = folder / "rows-1m.csv", folder / "rows-10m.csv"
        block = _csv_block(rows)
        _write_csv(source, block, predictor.feature_names)
        _write_csv(big, block, predictor.feature_names, BIG_ROWS // ROWS)
        del block
        results += _against_pandas(cli, model, source, folder)
        results.append(_ten_times_the_rows(cli, model, source, big, folder))
        big.unlink()
        results += _one_row(cli, model, predictor, folder)
        print(f"predict: {sum(results)}/{len(results)} within limits")
