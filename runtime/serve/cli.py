"""``pomona serve``: parse options and run the Open Inference Protocol server.

The server libraries (uvicorn, httptools, uvloop, orjson, prometheus-client) come
with the ``serve`` extra. Whether they are installed is decided before this module is
imported, by the command table in :mod:`pomona.runtime.cli`, which prints the install hint.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import click

from pomona.runtime.clikit import backend_option, user_errors
from pomona.runtime.serve.access import ENV_AUTH_TOKEN, read_token
from pomona.runtime.serve.app import DEFAULT_MAX_BODY_SIZE, DEFAULT_MODEL_NAME
from pomona.runtime.serve.grpc_options import DEFAULT_GRPC_MAX_MESSAGE_BYTES, GrpcOptions
from pomona.runtime.serve.repository import RepositoryOptions
from pomona.runtime.serve.snapshot import VersionPolicy
from pomona.runtime.serve.uvicorn_protocol import default_max_connections
from pomona.runtime.serve.uvicorn_server import Limits, run_server

__all__ = ["serve"]

_LOG_LEVELS = ["critical", "error", "warning", "info", "debug"]


@click.command("serve")
@click.argument("model", type=click.Path(exists=True, readable=False, path_type=Path))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="POMONA_HOST",
    help="Address to bind; 0.0.0.0 exposes the server to the network (needs a token or --no-auth).",
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
    default=None,
    help="Model name in the URL paths: /v2/models/NAME/infer  [default: the name the "
    f"model was exported under (pomona export --name), else {DEFAULT_MODEL_NAME}]",
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
@click.option(
    "--auth-token-file",
    type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path),
    default=None,
    help="Require 'Authorization: Bearer TOKEN' on every route but /v2/health/*; TOKEN is "
    f"this file's first line [default: ${ENV_AUTH_TOKEN} if set, else no token]",
)
@click.option(
    "--no-auth",
    is_flag=True,
    help="Allow a non-loopback --host without a token (a proxy in front checks callers).",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    metavar="ORIGIN",
    help="Let browser pages from ORIGIN (e.g. https://app.example.com, or *) call the "
    "server; repeat for several. CORS is off unless given.",
)
@click.option(
    "--timeout-header",
    type=click.FloatRange(min=0.1),
    default=Limits.header_timeout,
    show_default=True,
    help="Seconds a request's head may take from the connection opening or its first "
    "byte; then 408 (or, if nothing came, a close).",
)
@click.option(
    "--timeout-body",
    type=click.FloatRange(min=0.1),
    default=Limits.body_timeout,
    show_default=True,
    help="Seconds a request body may stop arriving before the request gets 408.",
)
@click.option(
    "--timeout-keep-alive",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds an idle connection stays open after a response.",
)
@click.option(
    "--graceful-timeout",
    type=click.FloatRange(min=0),
    default=Limits.graceful_timeout,
    show_default=True,
    help="On SIGTERM, seconds to finish requests in flight; bodies still arriving then get 503.",
)
@click.option(
    "--max-header-size",
    type=click.IntRange(min=1024),
    default=Limits.max_header_size,
    show_default=True,
    help="Largest request head (request line and headers) in bytes; larger ones get 431.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=None,
    help="Open connections per process; past it the longest idle one is closed  "
    "[default: the open-file limit less 64]",
)
@click.option(
    "--version-policy",
    default="latest",
    show_default=True,
    help="Repository: versions served of each model: latest, latest:N, all, or specific:V[,V].",
)
@click.option(
    "--model-control",
    type=click.Choice(["none", "explicit"]),
    default="none",
    show_default=True,
    help="Repository: none serves every model; explicit only those loaded with --load-model "
    "or POST /v2/repository/models/NAME/load (and unloaded with .../unload).",
)
@click.option(
    "--load-model",
    "load_models",
    multiple=True,
    metavar="NAME",
    help="Repository with --model-control explicit: a model to load at start; repeatable.",
)
@click.option(
    "--poll",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="Repository: seconds between scans for new, changed or removed versions (0: none). "
    "A new version is checked against its manifest and warmed before it is swapped in.",
)
@click.option(
    "--grpc-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Also serve the Open Inference Protocol over gRPC on this port (needs the grpc "
    "extra); with --workers, every worker serves it on this port.",
)
@click.option(
    "--grpc-max-message-bytes",
    type=click.IntRange(min=1024),
    default=DEFAULT_GRPC_MAX_MESSAGE_BYTES,
    show_default=True,
    help="Largest gRPC message received or sent; larger ones fail with RESOURCE_EXHAUSTED.",
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
    auth_token_file: Path | None,
    no_auth: bool,
    cors_origins: tuple[str, ...],
    timeout_header: float,
    timeout_body: float,
    timeout_keep_alive: float,
    graceful_timeout: float,
    max_header_size: int,
    max_connections: int | None,
    backend: str,
    version_policy: str,
    model_control: str,
    load_models: tuple[str, ...],
    poll: float,
    grpc_port: int | None,
    grpc_max_message_bytes: int,
) -> None:
    """Serve MODEL (model.onnx, or a model repository folder) over HTTP with the Open
    Inference Protocol (KServe V2), and over gRPC with --grpc-port.

    A model repository is the layout pomona export --triton-repo writes:
    REPO/NAME/VERSION/model.onnx with its manifest.json; a version is served once its
    manifest vouches for every file it lists. A model file is served as version 1.

    \b
    Endpoints (NAME from --name or the repository, V a version; without
    /versions/V the latest version ready):
      GET  /v2/health/live, /v2/health/ready, /v2
      GET  /v2/models/NAME[/versions/V][/ready|/config|/stats], /v2/models/stats
      POST /v2/models/NAME[/versions/V]/infer   JSON or binary tensor data
      POST /v2/repository/index, /v2/repository/models/NAME/load|unload
      GET  /metrics                             Prometheus metrics

    Stops on SIGTERM or Ctrl-C after finishing the requests in flight. A host other than
    a loopback address needs a token (--auth-token-file or $POMONA_AUTH_TOKEN) or --no-auth.
    """
    if name is not None and (not name or "/" in name):
        raise click.BadParameter("must be non-empty and contain no '/'", param_hint="--name")
    try:
        token = read_token(auth_token_file)
    except (OSError, ValueError) as err:
        raise click.BadParameter(str(err), param_hint="--auth-token-file") from None
    if token is None and not no_auth and not _is_loopback(host):
        raise click.UsageError(
            f"--host {host} exposes the server to the network: give a token "
            f"(--auth-token-file or ${ENV_AUTH_TOKEN}), or --no-auth if a proxy checks callers"
        )
    repository = _repository_options(
        model, name, no_manifest_check, version_policy, model_control, load_models, poll
    )
    grpc = GrpcOptions(grpc_port, grpc_max_message_bytes) if grpc_port is not None else None
    limits = Limits(
        header_timeout=timeout_header,
        body_timeout=timeout_body,
        graceful_timeout=graceful_timeout,
        max_header_size=max_header_size,
        max_connections=max_connections or default_max_connections(),
    )
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
        token=token,
        cors_origins=cors_origins,
        limits=limits,
        keep_alive=timeout_keep_alive,
        backend=backend,
        repository=repository,
        grpc=grpc,
    )
    if not started:
        raise click.ClickException(f"the server did not start on {host}:{port}")


def _repository_options(
    model: Path,
    name: str | None,
    no_manifest_check: bool,
    version_policy: str,
    model_control: str,
    load_models: tuple[str, ...],
    poll: float,
) -> RepositoryOptions | None:
    """The repository options when MODEL is a folder; refuse them for a model file."""
    try:
        VersionPolicy.parse(version_policy)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--version-policy") from None
    options = RepositoryOptions(
        version_policy=version_policy,
        model_control="explicit" if model_control == "explicit" else "none",
        load_models=load_models,
        poll=poll,
    )
    if not model.is_dir():
        if options != RepositoryOptions():
            raise click.UsageError(
                "--version-policy, --model-control, --load-model and --poll apply to a "
                "model repository (a folder), not a model file"
            )
        return None
    for given, option in ((name, "--name"), (no_manifest_check, "--no-manifest-check")):
        if given:
            raise click.UsageError(f"{option} applies to a model file, not a model repository")
    if load_models and options.model_control != "explicit":
        raise click.UsageError("--load-model needs --model-control explicit")
    return options


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
