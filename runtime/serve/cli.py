"""``pomona serve``: parse options and run the Open Inference Protocol server.

The server libraries (uvicorn, httptools, uvloop, orjson, prometheus-client) come
with the ``serve`` extra. Whether they are installed is decided before this module is
imported, by the command table in :mod:`pomona.runtime.cli`, which prints the install hint.
"""

from __future__ import annotations

from pathlib import Path

import click

from pomona.runtime.clikit import backend_option, user_errors
from pomona.runtime.serve.app import DEFAULT_MAX_BODY_SIZE, DEFAULT_MODEL_NAME
from pomona.runtime.serve.uvicorn_server import run_server

__all__ = ["serve"]

_LOG_LEVELS = ["critical", "error", "warning", "info", "debug"]


@click.command("serve")
@click.argument(
    "model", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="POMONA_HOST",
    help="Address to bind; 0.0.0.0 exposes the server to the network.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8000,
    show_default=True,
    envvar="POMONA_PORT",
    help="TCP port to listen on.",
)
@click.option(
    "--name",
    default=DEFAULT_MODEL_NAME,
    show_default=True,
    help="Model name in the URL paths: /v2/models/NAME/infer.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Server processes sharing the port; each runs a one-thread onnxruntime session.",
)
@click.option(
    "--max-body-size",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_BODY_SIZE,
    show_default=True,
    help="Largest request body in bytes (after decompression); larger ones get 413.",
)
@click.option(
    "--no-manifest-check",
    is_flag=True,
    help="Serve the model even if it differs from the manifest.json beside it.",
)
@click.option(
    "--log-level",
    type=click.Choice(_LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    help="Least severe log messages to print.",
)
@click.option(
    "--access-log/--no-access-log",
    default=False,
    show_default=True,
    help="Log one line per request (costs throughput).",
)
@click.option(
    "--micro-batch/--no-micro-batch",
    default=True,
    show_default=True,
    help="Predict small requests that arrive together in one onnxruntime call.",
)
@backend_option
@user_errors
def serve(
    model: Path,
    host: str,
    port: int,
    name: str,
    workers: int,
    max_body_size: int,
    no_manifest_check: bool,
    log_level: str,
    access_log: bool,
    micro_batch: bool,
    backend: str,
) -> None:
    """Serve MODEL (model.onnx) over HTTP with the Open Inference Protocol (KServe V2).

    \b
    Endpoints (NAME from --name, version 1):
      GET  /v2/health/live, /v2/health/ready, /v2
      GET  /v2/models/NAME[/versions/1], /v2/models/NAME[/versions/1]/ready
      POST /v2/models/NAME[/versions/1]/infer   JSON or binary tensor data
      GET  /metrics                             Prometheus metrics

    Stops on SIGTERM or Ctrl-C after finishing the requests in flight.
    """
    if not name or "/" in name:
        raise click.BadParameter("must be non-empty and contain no '/'", param_hint="--name")
    started = run_server(
        model,
        host=host,
        port=port,
        name=name,
        workers=workers,
        max_body_size=max_body_size,
        check_manifest=not no_manifest_check,
        log_level=log_level.lower(),
        access_log=access_log,
        micro_batch=micro_batch,
        backend=backend,
    )
    if not started:
        raise click.ClickException(f"the server did not start on {host}:{port}")
