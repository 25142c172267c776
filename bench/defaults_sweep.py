"""Choose the training defaults by a sweep over public data sets, then check them end to end.

``make sweep`` runs ``python -m bench.defaults_sweep``. The data sets ship inside
scikit-learn and statsmodels (the ``sweep`` extra), so nothing is downloaded. Two parts:

1. grid: every candidate setting (learning rate, momentum, batch size, epochs, schedule)
   trains the linear model and the ``--hidden 32,32`` MLP on every data set in-process,
   with ``--val-fraction 0``; each is scored by its train MSE over the least-squares
   optimum (``np.linalg.lstsq`` with an intercept column), worst data set first.
2. check: the defaults as shipped, through the real ``pomona train`` and ``pomona export``
   commands, with ``--val-fraction 0`` (train MSE against the optimum) and ``0.2``
   (validation MSE against scikit-learn's ``LinearRegression`` and ``Ridge`` on the same
   split), and whether every export passed its equivalence check.

Results print as Markdown tables and are saved to ``bench/out/sweep/results.json``.
``--part grid`` or ``--part check`` runs one part only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path("bench/out/sweep")
POMONA = [sys.executable, "-m", "pomona.runtime.cli"]
MLP = (32, 32)
#: The grid trains on data sets up to this size (each candidate on each set); larger ones
#: (fair, 6,366 rows) are part of the check of the chosen defaults only, to keep the
#: sweep to minutes on two cores.
GRID_MAX_ROWS = 2000


@dataclass(frozen=True)
class DataSet:
    name: str
    path: Path
    features: tuple[str, ...]
    targets: tuple[str, ...]
    rows: int
    note: str


def _sklearn(name: str) -> Callable[[], tuple[Any, list[str], list[str]]]:
    def load() -> tuple[Any, list[str], list[str]]:
        import sklearn.datasets

        if name == "diabetes":
            bunch = sklearn.datasets.load_diabetes(as_frame=True, scaled=False)
            frame = bunch.frame
            return frame, list(bunch.feature_names), ["target"]
        bunch = sklearn.datasets.load_linnerud(as_frame=True)
        frame = bunch.data.join(bunch.target)
        return frame, list(bunch.data.columns), list(bunch.target.columns)

    return load


def _statsmodels(name: str, targets: list[str] | None = None) -> Callable[[], Any]:
    def load() -> tuple[Any, list[str], list[str]]:
        import importlib

        dataset = importlib.import_module(f"statsmodels.datasets.{name}").load_pandas()
        endog = dataset.endog.to_frame() if dataset.endog.ndim == 1 else dataset.endog
        frame = dataset.exog.join(endog) if targets is None else dataset.data
        ys = list(endog.columns) if targets is None else targets
        xs = [c for c in frame.columns if c not in ys]
        return frame.dropna(), xs, ys

    return load


# name -> (loader, what makes it a test of the defaults)
SOURCES: dict[str, tuple[Callable[[], Any], str]] = {
    "diabetes": (_sklearn("diabetes"), "scikit-learn; target mean 152, std 77"),
    "linnerud": (_sklearn("linnerud"), "scikit-learn; 20 rows, 3 targets"),
    "longley": (_statsmodels("longley"), "statsmodels; years, GDP: large, collinear"),
    "stackloss": (_statsmodels("stackloss"), "statsmodels; 21 rows"),
    "engel": (_statsmodels("engel"), "statsmodels; income -> food spending"),
    "copper": (_statsmodels("copper"), "statsmodels; 25 rows, time column"),
    "fair": (_statsmodels("fair"), "statsmodels; 6,366 rows"),
    "star98": (_statsmodels("star98"), "statsmodels; 20 features, 2 targets in the 100s"),
    "statecrime": (_statsmodels("statecrime"), "statsmodels; 51 rows"),
}


def write_datasets(folder: Path) -> list[DataSet]:
    """Every data set of :data:`SOURCES` as a CSV file in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    sets = []
    for name, (load, note) in SOURCES.items():
        frame, features, targets = load()
        path = folder / f"{name}.csv"
        frame[[*features, *targets]].astype(float).to_csv(path, index=False)
        sets.append(DataSet(name, path, tuple(features), tuple(targets), len(frame), note))
    return sets


def least_squares_mse(x: np.ndarray, y: np.ndarray) -> float:
    """The least-squares optimum with an intercept column, by ``np.linalg.lstsq`` in float64."""
    design = np.hstack([x.astype(np.float64), np.ones((len(x), 1))])
    coef = np.linalg.lstsq(design, y.astype(np.float64), rcond=None)[0]
    return float(((design @ coef - y) ** 2).mean())


# ---------------------------------------------------------------------------------------
# Part 1: the grid, in-process


def candidates(hidden: tuple[int, ...]) -> Iterator[dict[str, Any]]:
    """The settings tried, for the linear model (``hidden == ()``) or the MLP.

    Momentum 0.9, batch 32 and 200 epochs unless a candidate says otherwise; the learning
    rate is the peak of the schedule.
    """
    base = {"momentum": 0.9, "batch_size": 32, "epochs": 200}
    for lr in (0.01, 0.03, 0.1):
        yield {**base, "lr": lr, "schedule": "cosine"}
        if not hidden:
            yield {**base, "lr": lr, "schedule": "constant"}
    yield {**base, "lr": 0.03, "schedule": "linear"}
    if not hidden:
        yield {**base, "lr": 0.03, "schedule": "cosine", "batch_size": 128}
        yield {**base, "lr": 0.03, "schedule": "cosine", "momentum": 0.0}
        yield {**base, "lr": 0.03, "schedule": "cosine", "precondition": False}


def _train_ratio(data: DataSet, hidden: tuple[int, ...], settings: dict[str, Any]) -> float:
    from pomona.runtime.errors import PomonaError
    from pomona.train import TrainConfig, read_table, train

    table = read_table(str(data.path), data.features, data.targets)
    optimum = least_squares_mse(table.features, table.targets)
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            data=str(data.path),
            features=data.features,
            targets=data.targets,
            hidden=hidden,
            val_fraction=0.0,
            device="cpu",
            out=out,
            **settings,
        )
        try:
            result = train(config, table=table)
        except PomonaError:
            return math.inf
    return float(result.metrics["train"]["mse"]) / optimum


def _grid_task(task: tuple[DataSet, tuple[int, ...], dict[str, Any]]) -> float:
    import torch

    torch.set_num_threads(1)
    return _train_ratio(*task)


def run_grid(sets: list[DataSet], workers: int) -> dict[str, Any]:
    """Every candidate on every data set of up to :data:`GRID_MAX_ROWS` rows; per model,
    the candidates sorted best worst-case first."""
    small = [data for data in sets if data.rows <= GRID_MAX_ROWS]
    results: dict[str, Any] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for label, hidden in (("linear", ()), ("mlp 32,32", MLP)):
            settings_list = list(candidates(hidden))
            tasks = [(d, hidden, st) for st in settings_list for d in small]
            ratios_flat = list(pool.map(_grid_task, tasks))
            rows = []
            for i, settings in enumerate(settings_list):
                chunk = ratios_flat[i * len(small) : (i + 1) * len(small)]
                ratios = {d.name: r for d, r in zip(small, chunk, strict=True)}
                finite = [r for r in ratios.values() if math.isfinite(r) and r > 0]
                worst = max(ratios.values())
                geo = math.exp(sum(map(math.log, finite)) / len(finite)) if finite else math.inf
                rows.append({**settings, "worst": worst, "geomean": geo, "ratios": ratios})
                print(f"  {label} {settings}: worst {worst:.4g}", flush=True)
            rows.sort(key=lambda row: (row["worst"], row["geomean"]))
            results[label] = rows
    return results


# ---------------------------------------------------------------------------------------
# Part 2: the shipped defaults, through the real CLI


def _pomona(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*POMONA, *map(str, args)], capture_output=True, text=True, check=False)


def _cli_run(
    data: DataSet, out: Path, hidden: tuple[int, ...], val: float, export: bool
) -> dict[str, Any]:
    options = ["--data", data.path, "--features", ",".join(data.features)]
    options += ["--targets", ",".join(data.targets), "--val-fraction", val, "--out", out]
    if hidden:
        options += ["--hidden", ",".join(map(str, hidden))]
    started = time.perf_counter()
    trained = _pomona("train", *options, "--device", "cpu")
    seconds = time.perf_counter() - started
    if trained.returncode != 0:
        return {"error": trained.stderr.strip(), "seconds": seconds}
    metrics = json.loads((out / "metrics.json").read_text())
    summary = trained.stderr.strip().splitlines()[-1]
    if not export:
        return {"metrics": metrics, "seconds": seconds, "summary": summary}
    exported = _pomona("export", "--checkpoint", out / "checkpoint.pt", "--out", out)
    notes = [line for line in exported.stderr.splitlines() if line.startswith("Note:")]
    return {
        "metrics": metrics,
        "seconds": seconds,
        "summary": summary,
        "export_ok": exported.returncode == 0,
        "export": exported.stderr.strip().splitlines()[-1] if exported.stderr else "",
        "fold_note": notes[0] if notes else None,
    }


def _reference_val_mse(data: DataSet, val: float) -> dict[str, float]:
    """Validation MSE of scikit-learn's LinearRegression and Ridge on Pomona's split."""
    from sklearn.linear_model import LinearRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pomona.train import read_table, split_indices

    table = read_table(str(data.path), data.features, data.targets)
    train_rows, val_rows = split_indices(table, val, 0)
    x, y = table.features.astype(np.float64), table.targets.astype(np.float64)
    scores = {}
    for name, model in (
        ("linear_regression", LinearRegression()),
        ("ridge", make_pipeline(StandardScaler(), Ridge(alpha=1.0))),
    ):
        model.fit(x[train_rows], y[train_rows])
        pred = model.predict(x[val_rows]).reshape(len(val_rows), -1)
        scores[name] = float(((pred - y[val_rows]) ** 2).mean())
    return scores


_CHECK_RUNS = (  # label, hidden, validation share, export too
    ("linear", (), 0.0, True),
    ("mlp", MLP, 0.0, True),
    ("linear_val", (), 0.2, False),
    ("mlp_val", MLP, 0.2, False),
)


def _check_task(task: tuple[DataSet, str, Path]) -> dict[str, Any]:
    data, label, folder = task
    _, hidden, val, export = next(run for run in _CHECK_RUNS if run[0] == label)
    return _cli_run(data, folder / f"{data.name}-{label}", hidden, val, export)


def run_check(sets: list[DataSet], folder: Path, workers: int) -> dict[str, Any]:
    """The shipped defaults through ``pomona train`` (and ``pomona export`` without a
    validation split), ``workers`` commands at a time."""
    tasks = [(data, run[0], folder) for data in sets for run in _CHECK_RUNS]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        runs = list(pool.map(_check_task, tasks))
    results: dict[str, Any] = {}
    for (data, label, _), run in zip(tasks, runs, strict=True):
        table_x = np.loadtxt(data.path, delimiter=",", skiprows=1, ndmin=2)
        n = len(data.features)
        entry = results.setdefault(
            data.name,
            {
                "rows": data.rows,
                "optimum": least_squares_mse(table_x[:, :n], table_x[:, n:]),
                "reference_val": _reference_val_mse(data, 0.2),
            },
        )
        entry[label] = run
        print(f"  {data.name} {label}: {_brief(run, entry['optimum'])}", flush=True)
    return results


def _brief(run: dict[str, Any], optimum: float) -> str:
    if "error" in run:
        return run["error"]
    mse = run["metrics"]["train"]["mse"]
    return f"train MSE / optimum {mse / optimum:.4f}, export ok {run.get('export_ok')}"


# ---------------------------------------------------------------------------------------
# Report


def _ratio(run: dict[str, Any], optimum: float) -> str:
    if "error" in run:
        return "error"
    return f"{run['metrics']['train']['mse'] / optimum:.4f}"


def _ok(run: dict[str, Any]) -> str:
    if "error" in run:
        return "-"
    return "yes" if run["export_ok"] else "NO"


def check_tables(sets: list[DataSet], results: dict[str, Any]) -> str:
    lines = [
        "| data set | rows | F | T | LS optimum | linear / optimum | MLP 32,32 / optimum "
        "| exports pass | warnings |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for data in sets:
        entry = results[data.name]
        linear, mlp = entry["linear"], entry["mlp"]
        warns = sum(len(r.get("metrics", {}).get("warnings") or []) for r in (linear, mlp))
        lines.append(
            f"| {data.name} | {data.rows} | {len(data.features)} | {len(data.targets)} "
            f"| {entry['optimum']:.6g} | {_ratio(linear, entry['optimum'])} "
            f"| {_ratio(mlp, entry['optimum'])} | {_ok(linear)}, {_ok(mlp)} | {warns} |"
        )
    lines += [
        "",
        "| data set | linear val MSE | MLP val MSE | LinearRegression | Ridge "
        "| linear / LinearRegression | best epoch (linear, MLP) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for data in sets:
        entry = results[data.name]
        linear, mlp, ref = entry["linear_val"], entry["mlp_val"], entry["reference_val"]

        def val(run: dict[str, Any]) -> float:
            return float(run["metrics"]["validation"]["mse"]) if "metrics" in run else math.nan

        def best(run: dict[str, Any]) -> str:
            return str(run["metrics"]["best_epoch"]) if "metrics" in run else "-"

        lines.append(
            f"| {data.name} | {val(linear):.6g} | {val(mlp):.6g} "
            f"| {ref['linear_regression']:.6g} | {ref['ridge']:.6g} "
            f"| {val(linear) / ref['linear_regression']:.4f} | {best(linear)}, {best(mlp)} |"
        )
    return "\n".join(lines)


def grid_tables(sets: list[DataSet], grid: dict[str, Any], top: int = 20) -> str:
    names = [data.name for data in sets if data.rows <= GRID_MAX_ROWS]
    parts = []
    for label, rows in grid.items():
        parts += [
            f"{label}: train MSE / least-squares optimum, best {top} of {len(rows)} settings",
            "",
            "| lr | momentum | batch | schedule | precondition | worst | geomean | "
            + " | ".join(names)
            + " |",
            "|---:|---:|---:|---|---|---:|---:|" + "---:|" * len(names),
        ]
        for row in rows[:top]:
            cells = " | ".join(f"{row['ratios'][n]:.4f}" for n in names)
            parts.append(
                f"| {row['lr']:g} | {row['momentum']:g} | {row['batch_size']} "
                f"| {row['schedule']} | {'no' if row.get('precondition') is False else 'yes'} "
                f"| {row['worst']:.4f} | {row['geomean']:.4f} | {cells} |"
            )
        parts.append("")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["grid", "check", "all"], default="all")
    parser.add_argument("--only", default="", help="comma-separated data set names")
    parser.add_argument("--workers", type=int, default=2, help="training processes at once")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # tiny models: threads only add contention on a shared machine
    OUT.mkdir(parents=True, exist_ok=True)
    sets = write_datasets(OUT / "data")
    if args.only:
        sets = [data for data in sets if data.name in args.only.split(",")]
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "datasets": [{**dataclasses.asdict(d), "path": str(d.path)} for d in sets],
    }
    started = time.perf_counter()
    if args.part in ("grid", "all"):
        report["grid"] = run_grid(sets, args.workers)
        print(grid_tables(sets, report["grid"]))
    if args.part in ("check", "all"):
        with tempfile.TemporaryDirectory() as folder:
            report["check"] = run_check(sets, Path(folder), args.workers)
        print(check_tables(sets, report["check"]))
    report["seconds"] = time.perf_counter() - started
    print(f"\n{report['machine']}; {report['date']}; {report['seconds']:.0f} s")
    (OUT / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
