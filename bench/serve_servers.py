"""The servers the serving benchmark loads, all on 127.0.0.1: the ceiling and ``pomona serve``.

The ceiling is a raw ASGI app that answers every request with a constant body on the same
uvicorn settings as ``pomona serve``: no server on this stack can pass it. Peer servers
(MLServer) are in ``bench.serve_peers``.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.serve_load import HOST

REPO = Path(__file__).resolve().parent.parent
MODEL_NAME = "pomona"


@dataclass
class Server:
    name: str
    port: int
    pid: int


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

    from pomona.runtime.serve.uvicorn_server import uvicorn_options

    options = uvicorn_options(host=HOST, port=port, log_level="warning")
    uvicorn.run(constant_app, **options)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start(
    command: list[str],
    port: int,
    ready_path: str,
    log: Path | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 120.0,
    cpus: set[int] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``command`` and wait until ``ready_path`` answers 200; its output goes to ``log``.

    ``cpus``: the CPUs the server (every thread and process it starts) may run on.
    """
    out = log.open("wb") if log else subprocess.DEVNULL
    pin = None if cpus is None else functools.partial(os.sched_setaffinity, 0, cpus)
    try:
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT if log else None,
            env=env,
            preexec_fn=pin,
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
    stop(proc)
    raise ServerError(f"not ready after {timeout_s:.0f}s", log)


class ServerError(Exception):
    """A server that exited or never became ready; carries the tail of its log."""

    def __init__(self, what: str, log: Path | None) -> None:
        tail = ""
        if log and log.is_file():
            lines = log.read_text(errors="replace").splitlines()[-15:]
            tail = "\n".join(f"    {line}" for line in lines)
        super().__init__(f"{what}{':' if tail else ''}\n{tail}" if tail else what)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def model(workdir: Path) -> tuple[Path, str]:
    exported = REPO / "artifacts" / "model.onnx"
    if exported.is_file():
        return exported, "artifacts/model.onnx (the exported crop model)"
    sys.path.insert(0, str(REPO))
    from tests.onnx_models import make_linear_onnx

    return make_linear_onnx(workdir / "model.onnx"), "a 3->2 linear ONNX model (no artifacts/)"


def start_ceiling() -> tuple[subprocess.Popen[bytes], Server]:
    port = free_port()
    launch = f"from bench.serve_servers import run_ceiling; run_ceiling({port})"
    proc = start([sys.executable, "-c", launch], port, "/")
    return proc, Server("ceiling", port, proc.pid)


def start_pomona(model: Path) -> tuple[subprocess.Popen[bytes], Server]:
    port = free_port()
    command = [
        sys.executable, "-m", "pomona.runtime.cli", "serve", str(model), "--port", str(port),
        "--name", MODEL_NAME, "--log-level", "warning",
    ]  # fmt: skip
    proc = start(command, port, "/v2/health/ready")
    return proc, Server("pomona", port, proc.pid)
