"""Load for the serving benchmark: the requests, wrk (or a Python loop), and one timed run.

Each load is one request sent over and over by a number of connections for a fixed time:
with wrk when it is installed, else with a bounded asyncio loop that saturates before the
servers do (its absolute numbers understate them). Every run is bounded in time and count.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HOST = "127.0.0.1"
WARMUP_S = 2
DURATION_S = 4
MAX_REQUESTS = 2_000_000  # the Python load loop's bound on top of the time limit
ROWS_LARGE = 1000


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


def warm_up(port: int, load: Load, workdir: Path, use_wrk: bool) -> None:
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


def loads(path: str) -> list[Load]:
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


def answers_correctly(port: int, load: Load, predictor: Any, refusal_ok: bool = False) -> bool:
    """Send ``load``'s request once and compare the answer with ``predictor``.

    With ``refusal_ok``, an error status (a request format the server does not speak: MLServer
    answers the binary tensor data extension with a 500) returns False instead of raising. A
    wrong answer raises ``AssertionError``.
    """
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
