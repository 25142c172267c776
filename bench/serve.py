"""``pomona serve`` under load: throughput and latency against MLServer and a ceiling.

Starts, on 127.0.0.1 only, (1) a raw ASGI app that answers every request with a
constant body on the same uvicorn settings as ``pomona serve`` -- the ceiling no
server on this stack can pass --, (2) ``pomona serve`` itself, one process, and (3)
MLServer 1.7.1, one process, serving the same ONNX model through onnxruntime with a
small custom runtime (``bench/mlserver_runtime.py``). MLServer lives in a virtualenv of
its own, created on first use under the user's cache folder and reused afterwards.
Each server is loaded in turn with wrk for a fixed time (or, without wrk, a bounded
Python load loop), and the results are printed as ratios to MLServer and to the
ceiling, all measured in this run.

The servers are stopped at the end; every load run is bounded in time and count.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
WARMUP_S = 2
DURATION_S = 4
ROUNDS = 3  # alternating runs per server and load; the best counts
MAX_REQUESTS = 2_000_000  # the Python load loop's bound on top of the time limit
ROWS_LARGE = 1000

# MLServer, measured in the same run: its version, and what its virtualenv holds besides it.
# onnxruntime and numpy are pinned to the versions Pomona runs with, so that both servers
# call the same inference code; uvloop and httptools give uvicorn its fastest loop and parser
# (uvloop at the release current with MLServer 1.7.1: later ones stop its worker processes).
MLSERVER_VERSION = "1.7.1"
MLSERVER_INSTALL_TIMEOUT_S = 900
MODEL_NAME = "pomona"

# Used only when MLServer cannot be installed or started here: figures measured earlier with
# wrk on another machine (whose constant-response ceiling was ~39,000 req/s), same 3->2 model,
# one process each at its best configuration.
QUOTED_MLSERVER = {"rps_1row_c32": 2200.0, "p99_ms_1row_c32": 17.0, "rows_per_s_1000_c8": 1.2e6}
QUOTED_KSERVE = {"rps_1row_c32": 1950.0, "p99_ms_1row_c32": 18.0, "rows_per_s_1000_c8": 0.34e6}

# The constant-response ceiling: a raw ASGI app, the least any server on this stack does.
_CEILING_BODY = (
    b'{"model_name":"pomona","model_version":"1","outputs":[{"name":"predictions",'
    b'"datatype":"FP32","shape":[1,2],"data":[1.0,2.0]}]}'
)
_CEILING_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", b"%d" % len(_CEILING_BODY)),
]


async def constant_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Read the request, answer a constant JSON body: no parsing, no model."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _CEILING_HEADERS})
    await send({"type": "http.response.body", "body": _CEILING_BODY})


def run_ceiling(port: int) -> None:
    """Serve :func:`constant_app` with ``pomona serve``'s uvicorn settings."""
    import uvicorn

    from pomona.runtime.server import uvicorn_options

    options = uvicorn_options(host=HOST, port=port, log_level="warning")
    uvicorn.run(constant_app, **options)


# -- load ------------------------------------------------------------------------------------


@dataclass
class Load:
    name: str
    path: str
    body: bytes
    headers: dict[str, str]
    rows: int
    connections: int


@dataclass
class Result:
    requests_per_s: float
    p99_ms: float
    errors: int
    cpu_us_per_request: float | None

    def rows_per_s(self, rows: int) -> float:
        return self.requests_per_s * rows


def _wrk(url: str, load: Load, seconds: int, workdir: Path) -> tuple[float, float, int]:
    body_file = workdir / f"{load.name}.body"
    body_file.write_bytes(load.body)
    lines = [
        f'local f = assert(io.open("{body_file}", "rb"))',
        "wrk.body = f:read('*a')",
        "f:close()",
        'wrk.method = "POST"',
        *(f'wrk.headers["{k}"] = "{v}"' for k, v in load.headers.items()),
    ]
    script = workdir / f"{load.name}.lua"
    script.write_text("\n".join(lines) + "\n")
    command = [
        "wrk", "-t1", f"-c{load.connections}", f"-d{seconds}s", "--latency", "-s", str(script),
        url,
    ]  # fmt: skip
    out = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    p99_ms = float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    errors = int(bad.group(1)) if bad else 0
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    return rps, p99_ms, errors


async def _python_load(
    port: int, load: Load, seconds: float, max_requests: int
) -> tuple[float, float, int]:
    headers = "".join(f"{k}: {v}\r\n" for k, v in load.headers.items())
    request = (
        f"POST {load.path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(load.body)}\r\n"
        f"{headers}\r\n"
    ).encode() + load.body
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []
    errors = 0

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while time.perf_counter() < deadline and len(latencies) < max_requests:
                start = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - start)
                if not head.startswith(b"HTTP/1.1 200"):
                    errors += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(load.connections)))
    elapsed = time.perf_counter() - start
    p99 = float(np.percentile(latencies, 99)) * 1e3 if latencies else float("nan")
    return len(latencies) / elapsed, p99, errors


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(port: int, pid: int, load: Load, workdir: Path, use_wrk: bool) -> Result:
    """One timed run of ``load`` against the server on ``port`` (process ``pid``)."""
    url = f"http://{HOST}:{port}{load.path}"

    def run(seconds: int) -> tuple[float, float, int]:
        if use_wrk:
            return _wrk(url, load, seconds, workdir)
        return asyncio.run(_python_load(port, load, seconds, MAX_REQUESTS))

    cpu_before = _cpu_seconds(pid)
    rps, p99_ms, errors = run(DURATION_S)
    cpu_after = _cpu_seconds(pid)
    cpu = None
    if cpu_before is not None and cpu_after is not None and rps > 0:
        cpu = (cpu_after - cpu_before) / (rps * DURATION_S) * 1e6
    return Result(rps, p99_ms, errors, cpu)


def _warm_up(port: int, load: Load, workdir: Path, use_wrk: bool) -> None:
    url = f"http://{HOST}:{port}{load.path}"
    if use_wrk:
        _wrk(url, load, WARMUP_S, workdir)
    else:
        asyncio.run(_python_load(port, load, WARMUP_S, MAX_REQUESTS))


def best(results: list[Result]) -> Result:
    """The least disturbed of several runs: highest throughput, lowest p99, all errors."""
    top = max(results, key=lambda r: r.requests_per_s)
    cpus = [r.cpu_us_per_request for r in results if r.cpu_us_per_request is not None]
    return Result(
        top.requests_per_s,
        min(r.p99_ms for r in results),
        sum(r.errors for r in results),
        min(cpus) if cpus else None,
    )


# -- servers ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _start(
    command: list[str],
    port: int,
    ready_path: str,
    log: Path | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 120.0,
) -> subprocess.Popen[bytes]:
    """Start ``command`` and wait until ``ready_path`` answers 200; its output goes to ``log``."""
    out = log.open("wb") if log else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT if log else None, env=env
        )
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"exited with status {proc.returncode}", log)
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}{ready_path}", timeout=5):
                return proc
        except OSError:
            time.sleep(0.1)
    _stop(proc)
    raise ServerError(f"not ready after {timeout_s:.0f}s", log)


class ServerError(Exception):
    """A server that exited or never became ready; carries the tail of its log."""

    def __init__(self, what: str, log: Path | None) -> None:
        tail = ""
        if log and log.is_file():
            lines = log.read_text(errors="replace").splitlines()[-15:]
            tail = "\n".join(f"    {line}" for line in lines)
        super().__init__(f"{what}{':' if tail else ''}\n{tail}" if tail else what)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- MLServer ---------------------------------------------------------------------------------


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
        "grpc_port": _free_port(),
        "metrics_port": _free_port(),
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


def start_mlserver(venv: Path, folder: Path, port: int) -> subprocess.Popen[bytes]:
    """``mlserver start`` on ``folder``, ready once the model answers its ready endpoint."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLSERVER_", "PYTHON"))}
    return _start(
        [str(venv / "bin" / "mlserver"), "start", str(folder)],
        port,
        f"/v2/models/{MODEL_NAME}/ready",
        log=folder / "mlserver.log",
        env=env,
    )


# -- requests --------------------------------------------------------------------------------


def _model(workdir: Path) -> tuple[Path, str]:
    exported = REPO / "artifacts" / "model.onnx"
    if exported.is_file():
        return exported, "artifacts/model.onnx (the exported crop model)"
    sys.path.insert(0, str(REPO))
    from tests.onnx_models import make_linear_onnx

    return make_linear_onnx(workdir / "model.onnx"), "a 3->2 linear ONNX model (no artifacts/)"


def _loads(path: str) -> list[Load]:
    rng = np.random.default_rng(0)
    # Readings with two decimals, in the crop data's ranges (temp, rainfall, humidity).
    low, high = np.array([50.0, 30.0, 20.0]), np.array([100.0, 120.0, 90.0])
    large = np.round(rng.uniform(low, high, size=(ROWS_LARGE, 3)), 2).astype(np.float32)
    one = {"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32",
                       "data": [73.0, 67.0, 43.0]}]}  # fmt: skip
    many = {"inputs": [{"name": "features", "shape": [ROWS_LARGE, 3], "datatype": "FP32",
                        "data": large.ravel().tolist()}]}  # fmt: skip
    raw = large.astype("<f4").tobytes()
    head = json.dumps(
        {
            "inputs": [{"name": "features", "shape": [ROWS_LARGE, 3], "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw)}}],
            "parameters": {"binary_data_output": True},
        },
        separators=(",", ":"),
    ).encode()  # fmt: skip
    json_headers = {"Content-Type": "application/json"}
    binary_headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }
    return [
        Load("1row_c32", path, _compact(one), json_headers, 1, 32),
        Load("json1000_c8", path, _compact(many), json_headers, ROWS_LARGE, 8),
        Load("binary1000_c8", path, head + raw, binary_headers, ROWS_LARGE, 8),
    ]


def _compact(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _answers_correctly(port: int, load: Load, predictor: Any, refusal_ok: bool = False) -> bool:
    """Send ``load``'s request once and compare the answer with ``predictor``.

    With ``refusal_ok``, an error status (a request format the server does not speak: MLServer
    answers the binary tensor data extension with a 500) returns False instead of raising. A
    wrong answer raises ``AssertionError``.
    """
    import urllib.error

    request = urllib.request.Request(
        f"http://{HOST}:{port}{load.path}", data=load.body, headers=load.headers
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
            split = response.headers.get("Inference-Header-Content-Length")
    except urllib.error.HTTPError:
        if refusal_ok:
            return False
        raise
    if split is None:
        doc = json.loads(body)
        y = np.array(doc["outputs"][0]["data"], dtype=np.float32)
    else:
        y = np.frombuffer(body[int(split) :], dtype="<f4")
    if load.name.startswith("1row"):
        x = np.array([[73.0, 67.0, 43.0]], dtype=np.float32)
    elif "Inference-Header-Content-Length" not in load.headers:
        data = json.loads(load.body)["inputs"][0]["data"]
        x = np.array(data, dtype=np.float32).reshape(-1, 3)
    else:
        header = int(load.headers["Inference-Header-Content-Length"])
        x = np.frombuffer(load.body[header:], dtype="<f4").reshape(-1, 3)
    np.testing.assert_allclose(
        y.reshape(-1, predictor.n_targets), predictor.predict(x), rtol=1e-6, atol=1e-5
    )
    return True


def _fmt_rate(value: float) -> str:
    return f"{value / 1e6:.2f}M" if value >= 1e5 else f"{value:,.0f}"


@dataclass
class Server:
    name: str
    port: int
    pid: int


def main() -> None:
    use_wrk = shutil.which("wrk") is not None
    if not use_wrk:
        print(
            "wrk is not installed (Debian/Ubuntu: sudo apt-get install wrk; macOS: brew install "
            "wrk); using a bounded Python load loop instead, which saturates before the servers "
            "do: its absolute numbers understate them, and the ratios shrink toward 1."
        )
    mlserver_problem = None
    try:
        venv: Path | None = ensure_mlserver()
    except RuntimeError as exc:
        venv, mlserver_problem = None, f"could not be installed: {exc}"
    infer_path = f"/v2/models/{MODEL_NAME}/infer"
    with tempfile.TemporaryDirectory(prefix="pomona-bench-serve-") as tmp:
        workdir = Path(tmp)
        model, model_note = _model(workdir)
        loads = _loads(infer_path)
        print(
            f"model: {model_note}; one server process each, {HOST} only; "
            f"load: {'wrk -t1' if use_wrk else 'Python asyncio loop'}, "
            f"{WARMUP_S}s warm-up, then best of {ROUNDS} alternating {DURATION_S}s runs "
            f"per server; {os.cpu_count()} CPUs",
            flush=True,
        )
        from pomona.runtime.predictor import Predictor

        predictor = Predictor(model)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            # All servers run side by side and take turns under load, so that each sees the
            # same background activity; each figure is the best of ROUNDS runs.
            ceiling_port, port = _free_port(), _free_port()
            launch = f"from bench.serve import run_ceiling; run_ceiling({ceiling_port})"
            procs.append(_start([sys.executable, "-c", launch], ceiling_port, "/"))
            servers = [Server("ceiling", ceiling_port, procs[-1].pid)]
            procs.append(
                _start(
                    [sys.executable, "-m", "pomona.runtime.cli", "serve", str(model),
                     "--port", str(port), "--name", MODEL_NAME, "--log-level", "warning"],
                    port,
                    "/v2/health/ready",
                )
            )  # fmt: skip
            servers.append(Server("pomona", port, procs[-1].pid))
            for load in loads:
                if not _answers_correctly(port, load, predictor):
                    raise SystemExit(f"pomona serve refused the {load.name} request")
            supported = {load.name for load in loads}
            if venv is not None:
                ml_port = _free_port()
                try:
                    procs.append(
                        start_mlserver(venv, mlserver_folder(workdir, model, ml_port), ml_port)
                    )
                except ServerError as exc:
                    mlserver_problem = f"did not start: {exc}"
                else:
                    servers.append(Server("mlserver", ml_port, procs[-1].pid))
                    supported = {
                        load.name
                        for load in loads
                        if _answers_correctly(ml_port, load, predictor, refusal_ok=True)
                    }
            results: dict[str, dict[str, Result]] = {}
            for load in loads:
                here = [s for s in servers if s.name != "mlserver" or load.name in supported]
                for server in here:
                    _warm_up(server.port, load, workdir, use_wrk)
                runs: dict[str, list[Result]] = {server.name: [] for server in here}
                for _ in range(ROUNDS):
                    for server in here:
                        runs[server.name].append(
                            measure(server.port, server.pid, load, workdir, use_wrk)
                        )
                results[load.name] = {name: best(found) for name, found in runs.items()}
        finally:
            for proc in reversed(procs):
                _stop(proc)
    _report(loads, results, mlserver_problem)


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.1f}x" if reference > 0 else "n/a"


def _report(
    loads: list[Load], results: dict[str, dict[str, Result]], mlserver_problem: str | None
) -> None:
    print(
        f"\n{'load':<15}{'server':<10}{'req/s':>10}{'rows/s':>10}{'p99 ms':>9}"
        f"{'cpu us/req':>12}{'errors':>8}{'of ceiling':>12}"
    )
    for load in loads:
        ceiling = results[load.name]["ceiling"].requests_per_s
        for who in ("ceiling", "pomona", "mlserver"):
            result = results[load.name].get(who)
            if result is None:
                if who == "mlserver" and mlserver_problem is None:
                    print(f"{load.name:<15}{who:<10}  n/a: refuses binary tensor data (status 500)")
                continue
            cpu = f"{result.cpu_us_per_request:.0f}" if result.cpu_us_per_request else "-"
            print(
                f"{load.name:<15}{who:<10}{_fmt_rate(result.requests_per_s):>10}"
                f"{_fmt_rate(result.rows_per_s(load.rows)):>10}{result.p99_ms:>9.2f}"
                f"{cpu:>12}{result.errors:>8}{result.requests_per_s / ceiling:>11.0%}"
            )
    pomona = {name: by_server["pomona"] for name, by_server in results.items()}
    one, js, binary = pomona["1row_c32"], pomona["json1000_c8"], pomona["binary1000_c8"]
    ml = {name: by_server.get("mlserver") for name, by_server in results.items()}
    ml_one, ml_js = ml["1row_c32"], ml["json1000_c8"]
    if ml_one is not None and ml_js is not None:
        reference = {
            "rps_1row_c32": ml_one.requests_per_s,
            "p99_ms_1row_c32": ml_one.p99_ms,
            "rows_per_s_1000_c8": ml_js.rows_per_s(ROWS_LARGE),
        }
        source = f"MLServer {MLSERVER_VERSION}, measured in this run"
    else:
        reference = QUOTED_MLSERVER
        source = f"MLServer {MLSERVER_VERSION} figures QUOTED from an earlier run elsewhere"
        print(
            f"\n!!! MLServer {MLSERVER_VERSION} {mlserver_problem or 'was not measured'}\n"
            "!!! The comparison below falls back to figures measured earlier on another machine"
            "\n!!! (constant-response ceiling ~39,000 req/s there); they are NOT comparable with"
            "\n!!! this run. Install MLServer (network access to PyPI) for a valid comparison."
        )
    quoted = reference is QUOTED_MLSERVER
    print(f"\npomona against {source}:")
    print(
        f"  1 row, c=32:           {_ratio(one.requests_per_s, reference['rps_1row_c32'])} "
        f"req/s ({_fmt_rate(one.requests_per_s)} vs {_fmt_rate(reference['rps_1row_c32'])}); "
        f"p99 {_ratio(reference['p99_ms_1row_c32'], one.p99_ms)} lower "
        f"({one.p99_ms:.2f} vs {reference['p99_ms_1row_c32']:.2f} ms)"
    )
    ref_rows = reference["rows_per_s_1000_c8"]
    print(
        f"  1000-row JSON, c=8:    {_ratio(js.rows_per_s(ROWS_LARGE), ref_rows)} rows/s "
        f"({_fmt_rate(js.rows_per_s(ROWS_LARGE))} vs {_fmt_rate(ref_rows)})"
    )
    ml_binary = ml["binary1000_c8"]
    binary_rows = binary.rows_per_s(ROWS_LARGE)
    print(
        f"  1000-row binary, c=8:  {_ratio(binary_rows, ref_rows)} MLServer's JSON rows/s "
        f"({_fmt_rate(binary_rows)}); {_ratio(binary.requests_per_s, js.requests_per_s)} "
        "pomona's own JSON"
    )
    if ml_binary is not None:
        print(f"    vs MLServer binary:  {_ratio(binary_rows, ml_binary.rows_per_s(ROWS_LARGE))}")
    elif not quoted:
        print("    MLServer binary: n/a (it does not implement the binary tensor data extension)")
    if quoted:
        kserve_rps = _ratio(one.requests_per_s, QUOTED_KSERVE["rps_1row_c32"])
        kserve_rows = _ratio(js.rows_per_s(ROWS_LARGE), QUOTED_KSERVE["rows_per_s_1000_c8"])
        print(
            f"  KServe 0.21 (quoted likewise): {kserve_rps} req/s at 1 row; "
            f"{kserve_rows} rows/s with 1000-row JSON"
        )
    ref_rps, ref_p99 = reference["rps_1row_c32"], reference["p99_ms_1row_c32"]
    targets = [
        (">= 5x MLServer req/s at 1 row, c=32", one.requests_per_s >= 5 * ref_rps),
        ("p99 <= 1/5 of MLServer's at 1 row, c=32", one.p99_ms <= ref_p99 / 5),
        (">= 3x MLServer rows/s, 1000-row JSON, c=8", js.rows_per_s(ROWS_LARGE) >= 3 * ref_rows),
        ("binary faster than JSON at 1000 rows", binary.requests_per_s > js.requests_per_s),
    ]
    print(f"targets (against {'QUOTED figures' if quoted else 'same-run MLServer'}):")
    for text, met in targets:
        print(f"  [{'met' if met else 'MISSED'}] {text}")
    ceiling_one = results["1row_c32"]["ceiling"].requests_per_s
    ml_share = f"; MLServer {ml_one.requests_per_s / ceiling_one:.0%}" if ml_one else ""
    print(
        f"ceiling (constant-response raw ASGI app, same uvicorn settings) at 1 row: "
        f"{ceiling_one:,.0f} req/s; pomona reaches {one.requests_per_s / ceiling_one:.0%} of it"
        f"{ml_share}"
    )
    if any(r.errors for by_server in results.values() for r in by_server.values()):
        print("WARNING: some requests failed; the numbers above are not valid")


if __name__ == "__main__":
    main()
