"""Peer servers for the serving benchmark, measured only when asked (``make bench-peers``).

MLServer 1.7.1, one process, serving the same ONNX model through onnxruntime with a small
custom runtime (``bench/mlserver_runtime.py``). MLServer lives in a virtualenv of its own,
created on first use under the user's cache folder and reused afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.serve_load import HOST
from bench.serve_servers import MODEL_NAME, Server, ServerError, free_port, start

# MLServer, measured in the same run: its version, and what its virtualenv holds besides it.
# onnxruntime and numpy are pinned to the versions Pomona runs with, so that both servers
# call the same inference code; uvloop and httptools give uvicorn its fastest loop and parser
# (uvloop at the release current with MLServer 1.7.1: later ones stop its worker processes).
MLSERVER_VERSION = "1.7.1"
MLSERVER_INSTALL_TIMEOUT_S = 900


def mlserver_requirements() -> list[str]:
    """What MLServer's virtualenv holds: MLServer and the same onnxruntime and numpy as ours."""
    from importlib.metadata import version

    return [
        f"mlserver=={MLSERVER_VERSION}",
        f"onnxruntime=={version('onnxruntime')}",
        f"numpy=={version('numpy')}",
        "uvloop==0.21.0",  # later releases break MLServer 1.7.1's parallel workers
        "httptools",
    ]


def mlserver_venv() -> Path:
    """Where MLServer's virtualenv lives: the user's cache folder, outside the repository."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "pomona-bench" / f"mlserver-{MLSERVER_VERSION}"


def ensure_mlserver() -> Path:
    """Return MLServer's virtualenv, creating it (once) when missing or out of date.

    A stamp file listing the installed requirements marks a complete install; a folder
    without it (an interrupted install) is installed over. Raises ``RuntimeError`` with
    pip's last lines when the install fails (for instance without network access).
    """
    from pomona.runtime.files import atomic_write

    venv = mlserver_venv()
    stamp = venv / "pomona-bench-requirements.txt"
    wanted = "\n".join(mlserver_requirements()) + "\n"
    if stamp.is_file() and stamp.read_text() == wanted and (venv / "bin" / "mlserver").is_file():
        print(f"MLServer {MLSERVER_VERSION}: reusing its virtualenv {venv}", flush=True)
        return venv
    print(
        f"MLServer {MLSERVER_VERSION}: installing it into its own virtualenv {venv} "
        f"({', '.join(mlserver_requirements())}); this happens once and takes about a minute",
        flush=True,
    )
    start = time.perf_counter()
    venv.parent.mkdir(parents=True, exist_ok=True)
    python = venv / "bin" / "python"
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         *mlserver_requirements()],
    ]  # fmt: skip
    if python.is_file():
        steps = steps[1:]
    for step in steps:
        try:
            done = subprocess.run(
                step, capture_output=True, text=True, timeout=MLSERVER_INSTALL_TIMEOUT_S
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"{' '.join(step[:4])} ...: {exc}") from exc
        if done.returncode != 0:
            lines = [
                line
                for line in (done.stdout + done.stderr).splitlines()
                if not line.startswith("WARNING: Location")
            ]
            raise RuntimeError(f"{' '.join(step[:4])} ... failed:\n" + "\n".join(lines[-10:]))
    with atomic_write(stamp, "w") as handle:
        handle.write(wanted)
    print(f"MLServer {MLSERVER_VERSION}: installed in {time.perf_counter() - start:.0f}s")
    return venv


def mlserver_folder(workdir: Path, model: Path, http_port: int, parallel_workers: int = 0) -> Path:
    """Write MLServer's settings, model settings and runtime into a folder for ``mlserver start``.

    One process at its best: inference in the server process (``parallel_workers: 0``, no
    round trip to a worker pool), no access log (``debug: false``), no gzip middleware (the
    load asks for no compression), metrics at their default (on, on a port of their own,
    as Pomona's ``/metrics`` is on too), and gRPC, which MLServer always starts, on a free
    port. Everything binds 127.0.0.1 only.
    """
    from pomona.runtime.files import atomic_write

    folder = workdir / MODEL_NAME  # MLServer expects the folder to bear the model name
    folder.mkdir(exist_ok=True)
    settings = {
        "debug": False,
        "host": HOST,
        "http_port": http_port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": parallel_workers,
        "gzip_enabled": False,
        "load_models_at_startup": True,
    }
    model_settings = {
        "name": MODEL_NAME,
        "implementation": "mlserver_runtime.OnnxRuntime",
        "parameters": {"uri": str(model), "version": "1"},
    }
    for name, doc in (("settings.json", settings), ("model-settings.json", model_settings)):
        with atomic_write(folder / name, "w") as handle:
            json.dump(doc, handle, indent=2)
    shutil.copyfile(Path(__file__).with_name("mlserver_runtime.py"), folder / "mlserver_runtime.py")
    return folder


def start_mlserver(
    venv: Path, folder: Path, port: int, cpus: set[int] | None = None
) -> subprocess.Popen[bytes]:
    """``mlserver start`` on ``folder``, ready once the model answers its ready endpoint."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLSERVER_", "PYTHON"))}
    return start(
        [str(venv / "bin" / "mlserver"), "start", str(folder)],
        port,
        f"/v2/models/{MODEL_NAME}/ready",
        log=folder / "mlserver.log",
        env=env,
        cpus=cpus,
    )


def start_peers(
    workdir: Path, model: Path
) -> tuple[list[subprocess.Popen[bytes]], list[Server], str | None]:
    """Start MLServer; return its process, its server, and why it is missing if it is."""
    try:
        venv = ensure_mlserver()
    except RuntimeError as exc:
        return [], [], f"could not be installed: {exc}"
    port = free_port()
    try:
        proc = start_mlserver(venv, mlserver_folder(workdir, model, port), port)
    except ServerError as exc:
        return [], [], f"did not start: {exc}"
    return [proc], [Server("mlserver", port, proc.pid)], None
