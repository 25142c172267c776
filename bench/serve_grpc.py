"""``pomona serve --grpc-port`` under load, against MLServer's gRPC endpoint in the same run.

Both servers get the same one-row ``ModelInfer`` request (FP32 ``[1, 3]`` as
``raw_input_contents``, as ``tritonclient.grpc`` sends it, serialized once) from the same
load: client processes, each keeping a fixed number of calls in flight on one ``grpc.aio``
channel, for a fixed time. Each server runs alone on CPU 0 (every thread of it); the
clients run on the other CPUs, so both servers get the same CPU budget and the load does
not compete with them. Rounds alternate between the servers; the best and the median of
each are reported, with the server's CPU time per request (read from its process) and
whether the clients, not the server, ran out of CPU. A bare gRPC server answering a
constant (:func:`run_ceiling`) runs beside them: the least Python's gRPC runtime costs.
MLServer is measured when its virtualenv (``make bench-peers`` installs it) is there, or
with ``--peers``.

    python -m bench.serve_grpc [--peers] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import psutil

from bench.serve_load import HOST
from bench.serve_peers import ensure_mlserver, mlserver_folder, mlserver_venv, start_mlserver
from bench.serve_servers import MODEL_NAME, REPO, free_port, model, start, stop
from pomona.runtime.serve.proto import open_inference_grpc_pb2 as pb

ROUNDS = 5
DURATION_S = 3.0
WARMUP_S = 1.0
IN_FLIGHT = 32  # calls each client process keeps in flight
GOAL = 3.0  # the goal: requests/s at one row, as a multiple of MLServer's
SERVICE = "inference.GRPCInferenceService"
METHOD = f"/{SERVICE}/ModelInfer"
#: Past this share of their CPUs busy, the clients, not the server, set the pace.
CLIENT_BOUND = 0.9


@dataclass
class Run:
    requests_per_s: float
    errors: int
    cpu_us_per_request: float | None
    client_busy: float  # share of the client CPUs the clients used


def cpu_split() -> tuple[set[int] | None, set[int] | None]:
    """The servers' CPU and the clients' CPUs: CPU 0 and the rest (None: one CPU only)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def request_bytes() -> bytes:
    request = pb.ModelInferRequest(model_name=MODEL_NAME, model_version="1")
    request.inputs.add(name="features", datatype="FP32", shape=[1, 3])
    request.raw_input_contents.append(np.array([[73, 67, 43]], dtype="<f4").tobytes())
    return request.SerializeToString()


async def _client(address: str, payload: bytes, seconds: float) -> tuple[int, int]:
    done = errors = 0
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(METHOD)  # bytes in, bytes out: the same for every server
        deadline = time.monotonic() + seconds

        async def loop() -> None:
            nonlocal done, errors
            while time.monotonic() < deadline:
                try:
                    await call(payload, timeout=30)
                    done += 1
                except grpc.aio.AioRpcError:
                    errors += 1

        await asyncio.gather(*(loop() for _ in range(IN_FLIGHT)))
    return done, errors


def _client_process(
    address: str, payload: bytes, seconds: float, cpus: set[int] | None, out: Any
) -> None:
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    start_cpu = time.process_time()
    done, errors = asyncio.run(_client(address, payload, seconds))
    out.put((done, errors, time.process_time() - start_cpu))


def measure(address: str, pid: int, seconds: float, cpus: set[int] | None) -> Run:
    """Clients on ``cpus`` loading ``address`` for ``seconds``; the server's CPU per call."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    payload = request_bytes()
    n_clients = min(len(cpus), 2) if cpus else 2
    procs = [
        context.Process(target=_client_process, args=(address, payload, seconds, cpus, queue))
        for _ in range(n_clients)
    ]
    for proc in procs:
        proc.start()  # a spawned process takes a while to start: count from the first result
    server = psutil.Process(pid)
    cpu_before = _cpu(server)
    counts = [queue.get(timeout=seconds + 120) for _ in procs]
    cpu = _cpu(server) - cpu_before
    for proc in procs:
        proc.join()
    done = sum(c[0] for c in counts)
    errors = sum(c[1] for c in counts)
    client_cpus = len(cpus) if cpus else os.cpu_count() or 1
    busy = sum(c[2] for c in counts) / (seconds * client_cpus)
    return Run(done / seconds, errors, cpu / done * 1e6 if done else None, busy)


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _start_pomona(model_path: Path, cpus: set[int] | None) -> tuple[subprocess.Popen[bytes], int]:
    port, grpc_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "pomona.runtime.cli", "serve", str(model_path),
        "--port", str(port), "--grpc-port", str(grpc_port), "--name", MODEL_NAME,
        "--log-level", "warning",
    ]  # fmt: skip
    return start(command, port, "/v2/health/ready", cpus=cpus), grpc_port


def run_ceiling(port: int) -> None:
    """A bare gRPC server answering every ModelInfer with one constant response.

    gRPC's thread-pool server with ``pomona serve``'s threads (its :class:`CallPool`) and
    the method registered as it registers its own, no parsing, no model: what Python's
    gRPC runtime costs per call on this machine, the least any Python gRPC server can spend.
    """
    from pomona.runtime.serve.grpc_pool import CallPool
    from pomona.runtime.serve.grpc_server import GRPC_THREADS

    response = pb.ModelInferResponse(model_name=MODEL_NAME, model_version="1")
    response.outputs.add(name="predictions", datatype="FP32", shape=[1, 2])
    response.raw_output_contents.append(np.zeros(2, "<f4").tobytes())
    body = response.SerializeToString()
    method = grpc.unary_unary_rpc_method_handler(lambda request, context: body)
    server = grpc.server(CallPool(GRPC_THREADS))
    server.add_registered_method_handlers(SERVICE, {"ModelInfer": method})
    server.add_insecure_port(f"{HOST}:{port}")
    server.start()
    server.wait_for_termination()


def _start_ceiling(cpus: set[int] | None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    launch = f"from bench.serve_grpc import run_ceiling; run_ceiling({port})"
    pin = None if cpus is None else functools.partial(os.sched_setaffinity, 0, cpus)
    proc = subprocess.Popen([sys.executable, "-c", launch], cwd=REPO, preexec_fn=pin)
    with grpc.insecure_channel(f"{HOST}:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
    return proc, port


def _start_mlserver(
    workdir: Path, model_path: Path, peers: bool, cpus: set[int] | None
) -> tuple[subprocess.Popen[bytes] | None, int, str | None]:
    if not peers and not (mlserver_venv() / "bin" / "mlserver").is_file():
        return None, 0, "not measured (make bench-peers installs MLServer; then this measures it)"
    try:
        venv = ensure_mlserver()
    except RuntimeError as exc:
        return None, 0, f"could not be installed: {exc}"
    port = free_port()
    folder = mlserver_folder(workdir, model_path, port)
    settings = json.loads((folder / "settings.json").read_text())
    proc = start_mlserver(venv, folder, port, cpus=cpus)
    return proc, int(settings["grpc_port"]), None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", action="store_true", help="install MLServer if missing")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="alternating rounds")
    args = parser.parse_args(argv)
    server_cpus, client_cpus = cpu_split()
    with tempfile.TemporaryDirectory(prefix="pomona-bench-grpc-") as tmp:
        workdir = Path(tmp)
        model_path, what = model(workdir)
        where = (
            f"servers on CPU {sorted(server_cpus)}, clients on CPUs {sorted(client_cpus)}"
            if server_cpus and client_cpus
            else "servers and clients share the only CPU"
        )
        print(f"model: {what}; 1-row ModelInfer (raw FP32), {IN_FLIGHT} calls in flight per "
              f"client process, {args.rounds} alternating rounds x {DURATION_S:.0f}s; {where}; "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
        procs: list[subprocess.Popen[bytes]] = []
        try:
            ceiling, ceiling_port = _start_ceiling(server_cpus)
            procs.append(ceiling)
            pomona, pomona_port = _start_pomona(model_path, server_cpus)
            procs.append(pomona)
            servers = {
                "ceiling": (f"{HOST}:{ceiling_port}", ceiling.pid),
                "pomona": (f"{HOST}:{pomona_port}", pomona.pid),
            }
            mlserver, ml_port, missing = _start_mlserver(
                workdir, model_path, args.peers, server_cpus
            )
            if mlserver is not None:
                procs.append(mlserver)
                servers["mlserver"] = (f"{HOST}:{ml_port}", mlserver.pid)
            report(servers, missing, args.rounds, client_cpus)
        finally:
            for proc in procs:
                stop(proc)


def report(
    servers: dict[str, tuple[str, int]],
    missing: str | None,
    rounds: int,
    client_cpus: set[int] | None,
) -> None:
    for address, pid in servers.values():
        measure(address, pid, WARMUP_S, client_cpus)
    runs: dict[str, list[Run]] = {name: [] for name in servers}
    for _ in range(rounds):
        for name, (address, pid) in servers.items():
            runs[name].append(measure(address, pid, DURATION_S, client_cpus))
    for name, done in runs.items():
        best = max(done, key=lambda run: run.requests_per_s)
        median = statistics.median(run.requests_per_s for run in done)
        cpu = statistics.median(r.cpu_us_per_request for r in done if r.cpu_us_per_request)
        busy = max(run.client_busy for run in done)
        bound = "  (clients ran out of CPU)" if busy > CLIENT_BOUND else ""
        print(f"gRPC {name:8} best {best.requests_per_s:7,.0f} req/s  median {median:7,.0f}  "
              f"server CPU {cpu:5.0f} us/req  clients busy {busy:4.0%}  "
              f"errors {sum(r.errors for r in done)}{bound}")  # fmt: skip
    ratio, spread, cpu_ratio = _ratios(runs["pomona"], runs["ceiling"])
    print(f"pomona / the bare gRPC ceiling: {ratio:.2f}x requests/s ({spread}), "
          f"{1 / cpu_ratio:.2f}x its CPU per request")  # fmt: skip
    if "mlserver" not in runs:
        print(f"MLServer gRPC: {missing}")
        return
    ratio, spread, cpu_ratio = _ratios(runs["pomona"], runs["mlserver"])
    ceiling, _, _ = _ratios(runs["ceiling"], runs["mlserver"])
    errors = sum(r.errors for done in runs.values() for r in done)
    verdict = "met" if ratio >= GOAL and not errors else "not met"
    print(f"pomona / MLServer over gRPC at one row: {ratio:.2f}x requests/s ({spread}), "
          f"{cpu_ratio:.2f}x less server CPU per request (goal >= {GOAL:.0f}x: {verdict}); "
          f"the bare ceiling / MLServer: {ceiling:.2f}x")  # fmt: skip


def _ratios(ours: list[Run], theirs: list[Run]) -> tuple[float, str, float]:
    """The median of the per-round request rate ratios, their spread, the CPU ratio."""
    pairs = list(zip(ours, theirs, strict=True))
    ratios = sorted(a.requests_per_s / b.requests_per_s for a, b in pairs)
    cpu = statistics.median(
        b.cpu_us_per_request / a.cpu_us_per_request
        for a, b in pairs
        if a.cpu_us_per_request and b.cpu_us_per_request
    )
    return statistics.median(ratios), f"{ratios[0]:.2f}x-{ratios[-1]:.2f}x over the rounds", cpu


if __name__ == "__main__":
    main(sys.argv[1:])
