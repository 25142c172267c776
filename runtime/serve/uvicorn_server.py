"""Every tie of ``pomona serve`` to uvicorn: options, the server, workers, the socket.

- :func:`uvicorn_options`: the settings ``pomona serve`` (and the serving benchmark's
  ceiling) run with: httptools (through the guarded, coalescing protocol of
  :mod:`.uvicorn_protocol`) and uvloop when installed, no websockets, no server header.
- :class:`GracefulServer`: uvicorn's server, exiting 0 after a handled SIGTERM/SIGINT.
- :func:`run_server`: load the model (or open the model repository, polling it if asked),
  bind the port (a busy one is a one-line error), start the gRPC server if asked, then
  serve in this process or in ``workers`` processes, which build their app with
  :func:`app_from_env` from ``POMONA_SERVE_*`` and share their metrics through a
  temporary ``PROMETHEUS_MULTIPROC_DIR`` removed when the server stops.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import functools
import json
import logging
import logging.config
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import uvicorn
import uvicorn.config
from uvicorn.supervisors import Multiprocess

from pomona.runtime.errors import PomonaError
from pomona.runtime.serve.access import ENV_AUTH_TOKEN, AccessPolicy
from pomona.runtime.serve.app import (
    DEFAULT_MAX_BODY_SIZE,
    InferenceApp,
    create_app,
    load_predictor,
    logger,
)
from pomona.runtime.serve.grpc_launch import (
    grpc_alongside,
    grpc_for_workers,
    start_grpc_in_worker,
)
from pomona.runtime.serve.grpc_options import GrpcOptions
from pomona.runtime.serve.repository import RepositoryOptions
from pomona.runtime.serve.uvicorn_protocol import (
    CoalescingTransport,
    Limits,
    http_protocol,
)

__all__ = [
    "CoalescingTransport",
    "GracefulServer",
    "Limits",
    "ServeError",
    "app_from_env",
    "http_protocol",
    "run_server",
    "uvicorn_options",
]

# Environment read by :func:`app_from_env`, the factory each worker process calls.
ENV_MODEL = "POMONA_SERVE_MODEL"
ENV_NAME = "POMONA_SERVE_NAME"
ENV_MAX_BODY_SIZE = "POMONA_SERVE_MAX_BODY_SIZE"
ENV_CHECK_MANIFEST = "POMONA_SERVE_CHECK_MANIFEST"
ENV_MICRO_BATCH = "POMONA_SERVE_MICRO_BATCH"
ENV_CORS = "POMONA_SERVE_CORS_ORIGINS"
ENV_REPOSITORY = "POMONA_SERVE_REPOSITORY"
ENV_MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"
ENV_BACKEND = "POMONA_SERVE_BACKEND"
ENV_GRPC = "POMONA_SERVE_GRPC"
#: Seconds uvicorn waits past the graceful timeout, for the 503s of stalled bodies to go out.
_SHUTDOWN_MARGIN = 1.0


class ServeError(PomonaError):
    """The server cannot start: its address is in use or cannot be bound."""


# -- options and the server ------------------------------------------------------------------


def uvicorn_options(
    *,
    host: str,
    port: int,
    log_level: str = "info",
    access_log: bool = False,
    limits: Limits | None = None,
    keep_alive: float = 5.0,
) -> dict[str, Any]:
    """The uvicorn settings ``pomona serve`` runs with (httptools and uvloop when installed)."""
    limits = limits or Limits()
    return {
        "http": http_protocol(),
        "host": host,
        "port": port,
        "log_level": log_level,
        "access_log": access_log,
        "ws": "none",
        "lifespan": "on",
        "server_header": False,
        "proxy_headers": False,
        "timeout_keep_alive": keep_alive,
        "timeout_graceful_shutdown": limits.graceful_timeout + _SHUTDOWN_MARGIN,
        # Past the cap the guarded protocol closes idle connections; uvicorn answers 503
        # only when none is idle (one connection more than the cap is open then).
        "limit_concurrency": limits.max_connections + 1,
        "h11_max_incomplete_event_size": limits.max_header_size,
    }


def uvicorn_config(app: Any, limits: Limits, **options: Any) -> uvicorn.Config:
    """uvicorn's config, carrying ``limits`` to the protocol (and to worker processes)."""
    config = uvicorn.Config(app, **options)
    config.pomona_limits = limits  # type: ignore[attr-defined]
    return config


class GracefulServer(uvicorn.Server):
    """uvicorn's server, except that a handled SIGTERM/SIGINT ends with exit status 0.

    uvicorn finishes in-flight requests on a signal, then re-raises it so the process
    dies of it; a service manager should instead see a clean exit.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


def log_config(log_level: str) -> dict[str, Any]:
    """uvicorn's logging configuration, with Pomona's logger on its handler."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["pomona"] = {
        "handlers": ["default"],
        "level": log_level.upper(),
        "propagate": False,
    }
    return config


# -- running ---------------------------------------------------------------------------------


def app_from_env() -> InferenceApp:
    """App factory for worker processes: configuration comes from ``POMONA_SERVE_*``.

    With ``POMONA_SERVE_GRPC`` set, the worker serves gRPC too, on the port every worker
    shares (``SO_REUSEPORT``: the kernel spreads the connections), until its server stops.

    A worker that cannot build its app (the model file was replaced by a bad one before a
    worker restart, the gRPC port was taken after the parent's check) logs one error line
    and exits with uvicorn's startup-failure status: the supervisor then stops the server
    instead of restarting that worker in a loop, and :func:`run_server` reports it.
    """
    try:
        return _worker_app()
    except PomonaError as err:
        logger.error("a worker could not start: %s", err)
        raise SystemExit(uvicorn.config.STARTUP_FAILURE) from None


def _worker_app() -> InferenceApp:
    max_body_size = int(os.environ.get(ENV_MAX_BODY_SIZE, DEFAULT_MAX_BODY_SIZE))
    micro_batch = os.environ.get(ENV_MICRO_BATCH, "1") == "1"
    repository = os.environ.get(ENV_REPOSITORY)
    if repository:
        fields = json.loads(repository)
        fields["load_models"] = tuple(fields["load_models"])
        app = _repository_app(
            os.environ[ENV_MODEL],
            RepositoryOptions(**fields),
            max_body_size=max_body_size,
            micro_batch=micro_batch,
            access=_access_from_env(),
            backend=os.environ.get(ENV_BACKEND, "auto"),
        )
    else:
        app = create_app(
            os.environ[ENV_MODEL],
            name=os.environ.get(ENV_NAME) or None,
            max_body_size=max_body_size,
            check_manifest=os.environ.get(ENV_CHECK_MANIFEST, "1") == "1",
            micro_batch=micro_batch,
            access=_access_from_env(),
            backend=os.environ.get(ENV_BACKEND, "auto"),
        )
    grpc = os.environ.get(ENV_GRPC)
    if grpc:
        app.on_shutdown.append(start_grpc_in_worker(app, json.loads(grpc)))
    return app


def _repository_app(
    root: str | os.PathLike[str],
    options: RepositoryOptions,
    *,
    backend: str = "auto",
    **app_options: Any,
) -> InferenceApp:
    """The app serving a repository, its poll thread started when ``options.poll``."""
    repository = options.open(root, functools.partial(load_predictor, backend=backend))
    if options.poll:
        repository.start_polling(options.poll)
    return InferenceApp(repository=repository, **app_options)


def _access_from_env() -> AccessPolicy | None:
    token = os.environ.get(ENV_AUTH_TOKEN) or None
    origins = [o for o in os.environ.get(ENV_CORS, "").split(",") if o]
    return AccessPolicy(token, origins) if token or origins else None


def _hand_to_workers(app: InferenceApp, access: AccessPolicy | None, options: Any) -> None:
    if app.repository is not None:
        os.environ[ENV_MODEL] = str(app.repository.root.resolve())
        os.environ[ENV_REPOSITORY] = json.dumps(dataclasses.asdict(options["repository"]))
    else:
        os.environ[ENV_MODEL] = str(Path(app.predictor.path).resolve())
        os.environ[ENV_NAME] = app.name
    os.environ[ENV_MAX_BODY_SIZE] = str(app.max_body_size)
    os.environ[ENV_CHECK_MANIFEST] = "1" if options["check_manifest"] else "0"
    os.environ[ENV_MICRO_BATCH] = "1" if options["micro_batch"] else "0"
    os.environ[ENV_BACKEND] = options["backend"]
    os.environ[ENV_CORS] = ",".join(options["cors_origins"])
    if options["token"]:
        os.environ[ENV_AUTH_TOKEN] = options["token"]
    if options["grpc"] is not None:
        os.environ[ENV_GRPC] = json.dumps(options["grpc"])


def _log_start(app: InferenceApp) -> None:
    if app.repository is not None:
        return  # the repository logs what it serves
    predictor = app.predictor
    logger.info(
        "serving %s as model %r: %d features (%s) -> %d targets (%s); manifest %s; backend %s",
        predictor.path,
        app.name,
        predictor.n_features,
        ", ".join(predictor.feature_names),
        predictor.n_targets,
        ", ".join(predictor.target_names),
        "checked" if predictor.manifest_checked else "not checked",
        predictor.backend,
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket; a busy or unusable address is a :class:`ServeError`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise ServeError(
                f"port {port} on {host} is already in use; stop what runs there or "
                "choose another with --port"
            ) from None
        raise ServeError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.set_inheritable(True)
    return sock


def run_server(
    model: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str | None = None,
    workers: int = 1,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    check_manifest: bool = True,
    log_level: str = "info",
    access_log: bool = False,
    micro_batch: bool = True,
    token: str | None = None,
    cors_origins: Sequence[str] = (),
    limits: Limits | None = None,
    keep_alive: float = 5.0,
    backend: str = "auto",
    repository: RepositoryOptions | None = None,
    grpc: GrpcOptions | None = None,
) -> bool:
    """Serve ``model`` until SIGTERM/SIGINT; return whether the server started.

    The port is bound and the model loaded here first, so a busy port or a bad model
    fails before any request is answered. With ``workers > 1`` each worker process loads
    its own one-thread session. ``repository``: ``model`` is a model repository folder.
    ``grpc``: also serve the gRPC service (in every worker, on one shared port).
    """
    logging_config = log_config(log_level)
    logging.config.dictConfig(logging_config)
    limits = limits or Limits()
    access = AccessPolicy(token, cors_origins) if token or cors_origins else None
    sock = bind_socket(host, port)
    try:
        if repository is not None:
            app = _repository_app(
                model,
                repository,
                max_body_size=max_body_size,
                micro_batch=micro_batch,
                access=access,
                backend=backend,
            )
        else:
            app = create_app(
                model,
                name=name,
                max_body_size=max_body_size,
                check_manifest=check_manifest,
                micro_batch=micro_batch,
                access=access,
                backend=backend,
            )
    except BaseException:
        sock.close()
        raise
    _log_start(app)
    options = uvicorn_options(
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        limits=limits,
        keep_alive=keep_alive,
    )
    options["log_config"] = logging_config
    if workers == 1:
        server = GracefulServer(uvicorn_config(app, limits, **options))
        with grpc_alongside(app, grpc, host, limits.graceful_timeout):
            server.run(sockets=[sock])
        if app.repository is not None:
            app.repository.stop()
        return server.started
    _hand_to_workers(
        app,
        access,
        {
            "check_manifest": check_manifest,
            "micro_batch": micro_batch,
            "cors_origins": list(cors_origins),
            "token": token,
            "backend": backend,
            "repository": repository,
            "grpc": grpc_for_workers(grpc, host, limits.graceful_timeout),
        },
    )
    if app.repository is not None:
        app.repository.stop()  # each worker opens and polls the repository itself
    del app
    with _shared_metrics_dir():
        factory = f"{__name__}:{app_from_env.__name__}"
        config = uvicorn_config(factory, limits, factory=True, workers=workers, **options)
        supervisor = Multiprocess(config, sockets=[sock])
        supervisor.run()
    if any(p.exitcode == uvicorn.config.STARTUP_FAILURE for p in supervisor.processes):
        raise ServeError("a worker could not start (its error is logged above); the server stopped")
    return True


@contextlib.contextmanager
def _shared_metrics_dir() -> Generator[None, None, None]:
    """A fresh ``PROMETHEUS_MULTIPROC_DIR`` for the workers, removed when they are done."""
    folder = tempfile.mkdtemp(prefix="pomona-metrics-")
    previous = os.environ.get(ENV_MULTIPROC)
    os.environ[ENV_MULTIPROC] = folder
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if previous is None:
            os.environ.pop(ENV_MULTIPROC, None)
        else:
            os.environ[ENV_MULTIPROC] = previous
