"""``pomona serve --grpc-port`` under load, against MLServer's gRPC endpoint in the same run.

Both servers get the same one-row ``ModelInfer`` request (FP32 ``[1, 3]`` as
``raw_input_contents``, as ``tritonclient.grpc`` sends it) from the same load: client
processes, each keeping a fixed number of calls in flight on one ``grpc.aio`` channel,
for a fixed time. Best of ``ROUNDS`` alternating runs; the server's CPU time per request
is read from its process. The Python clients share the machine with the servers, so the
absolute numbers understate both; the ratio is what this measures. MLServer is measured
when its virtualenv (``make bench-peers`` installs it) is there, or with ``--peers``.

    python -m bench.serve_grpc [--peers]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
import psutil

from bench.serve_load import HOST
from bench.serve_peers import ensure_mlserver, mlserver_folder, mlserver_venv, start_mlserver
from bench.serve_servers import MODEL_NAME, free_port, model, start, stop
from pomona.runtime.serve.proto import open_inference_grpc_pb2 as pb
from pomona.runtime.serve.proto import open_inference_grpc_pb2_grpc as pb_grpc

ROUNDS = 3
DURATION_S = 4.0
WARMUP_S = 1.0
CLIENTS = 2  # client processes
IN_FLIGHT = 16  # calls each keeps in flight
GOAL = 3.0  # the goal: requests/s at one row, as a multiple of MLServer's


@dataclass
class Run:
    requests_per_s: float
    errors: int
    cpu_us_per_request: float | None


def request_bytes() -> bytes:
    request = pb.ModelInferRequest(model_name=MODEL_NAME, model_version="1")
    request.inputs.add(name="features", datatype="FP32", shape=[1, 3])
    request.raw_input_contents.append(np.array([[73, 67, 43]], dtype="<f4").tobytes())
    return request.SerializeToString()


async def _client(address: str, payload: bytes, seconds: float) -> tuple[int, int]:
    request = pb.ModelInferRequest.FromString(payload)
    done = errors = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        deadline = time.monotonic() + seconds

        async def loop() -> None:
            nonlocal done, errors
            while time.monotonic() < deadline:
                try:
                    await stub.ModelInfer(request, timeout=30)
                    done += 1
                except grpc.aio.AioRpcError:
                    errors += 1

        await asyncio.gather(*(loop() for _ in range(IN_FLIGHT)))
    return done, errors


def _client_process(address: str, payload: bytes, seconds: float, out: object) -> None:
    out.put(asyncio.run(_client(address, payload, seconds)))  # type: ignore[attr-defined]


def measure(address: str, pid: int, seconds: float) -> Run:
    """``CLIENTS`` processes loading ``address`` for ``seconds``; the server's CPU per call."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    payload = request_bytes()
    procs = [
        context.Process(target=_client_process, args=(address, payload, seconds, queue))
        for _ in range(CLIENTS)
    ]
    server = psutil.Process(pid)
    cpu_before = sum(server.cpu_times()[:2])
    start_time = time.perf_counter()
    for proc in procs:
        proc.start()
    counts = [queue.get(timeout=seconds + 120) for _ in procs]
    elapsed = time.perf_counter() - start_time
    cpu = sum(server.cpu_times()[:2]) - cpu_before
    for proc in procs:
        proc.join()
    done = sum(c[0] for c in counts)
    errors = sum(c[1] for c in counts)
    return Run(done / elapsed, errors, cpu / done * 1e6 if done else None)


def _start_pomona(model_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    port, grpc_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "pomona.runtime.cli", "serve", str(model_path),
        "--port", str(port), "--grpc-port", str(grpc_port), "--name", MODEL_NAME,
        "--log-level", "warning",
    ]  # fmt: skip
    return start(command, port, "/v2/health/ready"), grpc_port


def _start_mlserver(
    workdir: Path, model_path: Path, peers: bool
) -> tuple[subprocess.Popen[bytes] | None, int, str | None]:
    if not peers and not (mlserver_venv() / "bin" / "mlserver").is_file():
        return None, 0, "not measured (make bench-peers installs MLServer; then this measures it)"
    try:
        venv = ensure_mlserver()
    except RuntimeError as exc:
        return None, 0, f"could not be installed: {exc}"
    port = free_port()
    folder = mlserver_folder(workdir, model_path, port)
    import json

    settings = json.loads((folder / "settings.json").read_text())
    proc = start_mlserver(venv, folder, port)
    return proc, int(settings["grpc_port"]), None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", action="store_true", help="install MLServer if missing")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pomona-bench-grpc-") as tmp:
        workdir = Path(tmp)
        model_path, what = model(workdir)
        print(f"model: {what}; {CLIENTS} client processes x {IN_FLIGHT} calls in flight, "
              f"1-row ModelInfer (raw FP32), best of {ROUNDS} x {DURATION_S:.0f}s; "
              f"{os.cpu_count()} CPUs", flush=True)  # fmt: skip
        procs: list[subprocess.Popen[bytes]] = []
        try:
            pomona, pomona_port = _start_pomona(model_path)
            procs.append(pomona)
            servers = {"pomona": (f"{HOST}:{pomona_port}", pomona.pid)}
            mlserver, ml_port, missing = _start_mlserver(workdir, model_path, args.peers)
            if mlserver is not None:
                procs.append(mlserver)
                servers["mlserver"] = (f"{HOST}:{ml_port}", mlserver.pid)
            report(servers, missing)
        finally:
            for proc in procs:
                stop(proc)


def report(servers: dict[str, tuple[str, int]], missing: str | None) -> None:
    for address, pid in servers.values():
        measure(address, pid, WARMUP_S)
    best: dict[str, Run] = {}
    for _ in range(ROUNDS):
        for name, (address, pid) in servers.items():
            run = measure(address, pid, DURATION_S)
            if name not in best or run.requests_per_s > best[name].requests_per_s:
                best[name] = run
    for name, run in best.items():
        cpu = f"{run.cpu_us_per_request:.0f}" if run.cpu_us_per_request else "-"
        print(f"gRPC {name:8} {run.requests_per_s:9,.0f} req/s  server CPU {cpu:>5} us/req  "
              f"errors {run.errors}")  # fmt: skip
    if "mlserver" not in best:
        print(f"MLServer gRPC: {missing}")
        return
    ratio = best["pomona"].requests_per_s / best["mlserver"].requests_per_s
    errors = best["pomona"].errors + best["mlserver"].errors
    verdict = "met" if ratio >= GOAL and not errors else "not met"
    print(f"pomona / MLServer over gRPC at one row: {ratio:.2f}x (goal >= {GOAL:.0f}x: {verdict})")


if __name__ == "__main__":
    main(sys.argv[1:])
