"""The edge runtime's footprint: runtime-only installs, onnxruntime backend vs numpy backend.

Two virtual environments hold Pomona as a user installs it (``pip install``, no extras,
no pip inside), built once under the user's cache folder and rebuilt when the package
changes: ``onnxruntime`` (``pip install .``, the platforms with an onnxruntime wheel) and
``numpy`` (the same without onnxruntime, as on a platform without a wheel). Measured
side by side, in this run, on this machine:

* the disk size of each environment (every file under it, in MB of 10^6 bytes);
* a one-row ``pomona predict`` (``--backend auto`` in each environment) against
  ``python -c "import onnxruntime"``: median wall time of interleaved runs, and the
  highest peak RSS (``ru_maxrss`` of the child);
* ``Predictor.predict`` on 1M rows with each backend (best of several calls), for the
  linear crop model and a 16-16 MLP.

The goals are the numpy backend's: cold start <= 0.75x ``import onnxruntime`` and an
environment <= 80 MB.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench.predict import _model, _report

REPO = Path(__file__).resolve().parent.parent
BACKENDS = ("onnxruntime", "numpy")
MB = 1e6
GOALS = {"cold_start": 0.75, "env_mb": 80.0}
COLD_RUNS = 9
ROWS = 1_000_000
_INSTALL_TIMEOUT_S = 900

_SPEED = """
import json, sys, time
import numpy as np
from pomona.runtime.predictor import Predictor
predictor = Predictor(sys.argv[1], check_manifest=False)
x = np.random.default_rng(0).uniform(0, 100, ({rows}, predictor.n_features)).astype(np.float32)
predictor.predict(x)
best = float("inf")
for _ in range(5):
    start = time.perf_counter()
    predictor.predict(x)
    best = min(best, time.perf_counter() - start)
print(json.dumps({{"backend": predictor.backend, "seconds": best}}))
"""


def cache_folder() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "pomona-bench"


def _source_digest() -> str:
    """What an environment was built from: pyproject.toml and the runtime's source."""
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes())
    for path in sorted((REPO / "runtime").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def _requirements(backend: str) -> list[str]:
    """What pip installs besides the package (``--no-deps``): its dependencies, minus
    onnxruntime for the numpy environment."""
    import tomllib
    from packaging.requirements import Requirement

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d for d in deps if backend == "onnxruntime" or Requirement(d).name != "onnxruntime"]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # another bench building the same one waits
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pip(venv: Path, *args: str) -> None:
    """This interpreter's pip installing into ``venv`` (which holds no pip of its own)."""
    command = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
               "install", "--quiet", "--disable-pip-version-check", *args]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=_INSTALL_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(args)} failed:\n{done.stderr[-2000:]}")


def ensure_env(backend: str) -> Path:
    """The runtime-only environment for ``backend``, built when missing or out of date.

    Built in place under a lock; a stamp written last (atomically) marks it complete, so
    an interrupted build is removed and built again.
    """
    from pomona.runtime.files import atomic_write

    venv = cache_folder() / f"edge-{backend}"
    stamp = venv / "pomona-bench-source.txt"
    wanted = f"{_source_digest()} {' '.join(_requirements(backend))}\n"
    with _locked(cache_folder() / f"edge-{backend}.lock"):
        if stamp.is_file() and stamp.read_text() == wanted:
            return venv
        print(f"building the {backend} environment {venv} (once per change of the runtime)")
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        with tempfile.TemporaryDirectory(prefix="pomona-edge-src-") as tmp:
            source = Path(tmp)
            for name in ("pyproject.toml", "README.md"):
                shutil.copy2(REPO / name, source / name)
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            for package in ("train", "export", "runtime"):
                shutil.copytree(REPO / package, source / package, ignore=ignore)
            _pip(venv, "--no-deps", str(source))
        _pip(venv, *_requirements(backend))
        with atomic_write(stamp, "w") as handle:
            handle.write(wanted)
    return venv


def disk_mb(folder: Path, *names: str) -> float:
    """Bytes of every file under ``folder`` (or only under its site-packages ``names``)."""
    roots = [folder]
    if names:
        site = next(folder.glob("lib/python*/site-packages"))
        roots = [site / name for name in names if (site / name).exists()]
    total = 0
    for root in roots:
        for dirpath, _, files in os.walk(root):
            total += sum(os.lstat(os.path.join(dirpath, f)).st_size for f in files)
    return total / MB


# Runs one command from a small process (a child forked from a big one inherits its RSS
# high-water mark): exit status, wall seconds, CPU seconds (user + system), peak RSS MiB.
_MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(code, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)
"""


def _child(command: Sequence[str | Path]) -> tuple[float, float, float]:
    done = subprocess.run(
        [sys.executable, "-S", "-c", _MEASURE, *map(str, command)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    code, wall, cpu, rss = done.stdout.split()
    if code != "0":
        raise RuntimeError(f"{' '.join(map(str, command))} failed: {done.stderr}")
    return float(wall), float(cpu), float(rss)


def _cold(commands: dict[str, Sequence[str | Path]]) -> dict[str, tuple[float, float, float]]:
    """Median wall and CPU seconds and highest peak RSS (MiB) of each command, interleaved."""
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in commands}
    for command in commands.values():
        _child(command)  # warm the file cache
    for _ in range(COLD_RUNS):
        for name, command in commands.items():
            runs[name].append(_child(command))
    return {
        name: (
            statistics.median(r[0] for r in found),
            statistics.median(r[1] for r in found),
            max(r[2] for r in found),
        )
        for name, found in runs.items()
    }


def _speed(venv: Path, model: Path) -> tuple[str, float]:
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", _SPEED.format(rows=ROWS), str(model)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(done.stdout)
    return result["backend"], result["seconds"]


def _mlp(folder: Path) -> Path:
    """A 3 -> 16 -> 16 -> 2 MLP with fixed random weights, exported by Pomona's exporter."""
    import torch

    from pomona.export.onnx_export import export_onnx, serialize_onnx

    torch.manual_seed(0)
    layers = [torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16)]
    model = torch.nn.Sequential(*layers, torch.nn.ReLU(), torch.nn.Linear(16, 2))
    metadata = {"pomona.format": "1"}
    path = folder / "mlp.onnx"
    path.write_bytes(serialize_onnx(export_onnx(model, 3, metadata)))
    return path


def _footprint(envs: dict[str, Path]) -> list[bool]:
    sizes = {backend: disk_mb(venv) for backend, venv in envs.items()}
    numpy_only = disk_mb(envs["numpy"], "numpy", "numpy.libs")
    for backend, size in sizes.items():
        print(f"environment, {backend:<11} backend: {size:6.1f} MB")
    print(f"  of which numpy (numpy, numpy.libs): {numpy_only:.1f} MB")
    return [
        _report(
            "numpy environment (MB)",
            sizes["numpy"],
            GOALS["env_mb"],
            f"onnxruntime environment {sizes['onnxruntime']:.1f} MB "
            f"({sizes['numpy'] / sizes['onnxruntime']:.2f}x)",
        )
    ]


def _cold_start(envs: dict[str, Path], model: Path, folder: Path) -> list[bool]:
    tiny = folder / "one-row.csv"
    tiny.write_text("temp,rainfall,humidity\n1,2,3\n")
    bin_ort, bin_np = envs["onnxruntime"] / "bin", envs["numpy"] / "bin"
    best = _cold(
        {
            "import onnxruntime": [bin_ort / "python", "-c", "import onnxruntime"],
            "import numpy": [bin_np / "python", "-c", "import numpy"],
            "predict onnxruntime": [bin_ort / "pomona", "predict", model, tiny, "-o",
                                    folder / "out-ort.csv"],
            "predict numpy": [bin_np / "pomona", "predict", model, tiny, "-o",
                              folder / "out-np.csv"],
        }
    )  # fmt: skip
    ref_wall, ref_cpu, ref_rss = best["import onnxruntime"]
    print(f"median of {COLD_RUNS} runs:        wall (x import onnxruntime), CPU (x), peak RSS")
    for name, (wall, cpu, rss) in best.items():
        print(
            f"{name:<22} {wall * 1e3:7.1f} ms ({wall / ref_wall:.2f}x) "
            f"{cpu * 1e3:7.1f} ms ({cpu / ref_cpu:.2f}x)  {rss:5.1f} MiB"
        )
    wall, cpu, rss = best["predict numpy"]
    return [
        _report(
            "numpy backend one-row predict / import onnxruntime",
            wall / ref_wall,
            GOALS["cold_start"],
            f"wall {wall * 1e3:.0f} ms vs {ref_wall * 1e3:.0f} ms (CPU {cpu / ref_cpu:.2f}x); "
            f"peak RSS {rss:.0f} MiB vs {ref_rss:.0f} MiB",
        )
    ]


def _rows_1m(envs: dict[str, Path], models: dict[str, Path]) -> None:
    for label, model in models.items():
        seconds = {}
        for backend, venv in envs.items():
            found, seconds[backend] = _speed(venv, model)
            assert found == backend, (found, backend)
        ratio = seconds["numpy"] / seconds["onnxruntime"]
        print(
            f"1M rows, {label:<6}: onnxruntime {seconds['onnxruntime'] * 1e3:7.1f} ms, "
            f"numpy {seconds['numpy'] * 1e3:7.1f} ms  (numpy / onnxruntime {ratio:.2f}x)"
        )


def main() -> None:
    envs = {backend: ensure_env(backend) for backend in BACKENDS}
    print(f"environments: {', '.join(str(v) for v in envs.values())} (no pip inside)")
    with tempfile.TemporaryDirectory(prefix="pomona-bench-edge-") as tmp:
        folder = Path(tmp)
        models = {"linear": _model(folder), "mlp": _mlp(folder)}
        results = _footprint(envs)
        results += _cold_start(envs, models["linear"], folder)
        _rows_1m(envs, models)
    print(f"edge: {sum(results)}/{len(results)} goals met")


if __name__ == "__main__":
    main()
