"""Every tie of ``pomona serve`` to uvicorn: options, the server, workers, one write per response.

- :func:`uvicorn_options`: the settings ``pomona serve`` (and the serving benchmark's
  ceiling) run with: httptools (through :class:`CoalescingHttpToolsProtocol`) and uvloop
  when installed, no websockets, no server header.
- :class:`GracefulServer`: uvicorn's server, exiting 0 after a handled SIGTERM/SIGINT.
- :func:`run_server`: load the model, then serve it in this process or in ``workers``
  processes, which build their app with :func:`app_from_env` from ``POMONA_SERVE_*``.
- :class:`CoalescingTransport`: uvicorn writes a response's status line and headers when
  the application sends ``http.response.start`` and its body on ``http.response.body``:
  two ``write`` calls, and with ``TCP_NODELAY`` two TCP segments. On a model that answers
  in microseconds the second send is a large share of a request's cost: sending both at
  once cut the server's CPU time per one-row request by about a third. The transport
  holds what the protocol writes during one event-loop callback and hands it to the real
  transport at once, in one ``writelines`` (one ``writev`` on uvloop), as soon as that
  callback returns. Only the order of the loop's work changes: every byte goes out in the
  order written, no later than the loop's next turn, and before the transport closes.
  Without httptools the server runs on uvicorn's own h11 protocol, unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import logging.config
import os
import signal
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import uvicorn
import uvicorn.config

from pomona.runtime.serve.app import (
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MODEL_NAME,
    InferenceApp,
    create_app,
    logger,
)

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools: uvicorn's h11 protocol, as it is
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

__all__ = [
    "CoalescingTransport",
    "GracefulServer",
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
ENV_BACKEND = "POMONA_SERVE_BACKEND"


# -- one write per response ------------------------------------------------------------------


class CoalescingTransport(asyncio.Transport):
    """A transport that sends what is written during one loop callback in one call."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes | bytearray | memoryview] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Hand everything written so far to the real transport."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        if self._transport.is_closing():
            return  # as a closed transport's write does: the peer is gone
        if len(pending) == 1:
            self._transport.write(pending[0])
        else:
            self._transport.writelines(pending)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()


if HttpToolsProtocol is not None:

    class CoalescingHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol, writing through a :class:`CoalescingTransport`."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(CoalescingTransport(transport, asyncio.get_running_loop()))


def http_protocol() -> type[asyncio.Protocol] | str:
    """uvicorn's ``http`` setting: the coalescing httptools protocol, or ``"auto"`` without it."""
    if HttpToolsProtocol is None:
        return "auto"
    return CoalescingHttpToolsProtocol


# -- options and the server ------------------------------------------------------------------


def uvicorn_options(
    *, host: str, port: int, log_level: str = "info", access_log: bool = False
) -> dict[str, Any]:
    """The uvicorn settings ``pomona serve`` runs with (httptools and uvloop when installed)."""
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
        "timeout_graceful_shutdown": 30,
    }


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
    """App factory for worker processes: configuration comes from ``POMONA_SERVE_*``."""
    return create_app(
        os.environ[ENV_MODEL],
        name=os.environ.get(ENV_NAME, DEFAULT_MODEL_NAME),
        max_body_size=int(os.environ.get(ENV_MAX_BODY_SIZE, DEFAULT_MAX_BODY_SIZE)),
        check_manifest=os.environ.get(ENV_CHECK_MANIFEST, "1") == "1",
        micro_batch=os.environ.get(ENV_MICRO_BATCH, "1") == "1",
        backend=os.environ.get(ENV_BACKEND, "auto"),
    )


def _hand_to_workers(
    model: str | os.PathLike[str],
    *,
    name: str,
    max_body_size: int,
    check_manifest: bool,
    micro_batch: bool,
    backend: str = "auto",
) -> None:
    os.environ[ENV_BACKEND] = backend
    os.environ[ENV_MODEL] = str(Path(model).resolve())
    os.environ[ENV_NAME] = name
    os.environ[ENV_MAX_BODY_SIZE] = str(max_body_size)
    os.environ[ENV_CHECK_MANIFEST] = "1" if check_manifest else "0"
    os.environ[ENV_MICRO_BATCH] = "1" if micro_batch else "0"


def _log_start(app: InferenceApp) -> None:
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


def run_server(
    model: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str = DEFAULT_MODEL_NAME,
    workers: int = 1,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    check_manifest: bool = True,
    log_level: str = "info",
    access_log: bool = False,
    micro_batch: bool = True,
    backend: str = "auto",
) -> bool:
    """Serve ``model`` until SIGTERM/SIGINT; return whether the server started.

    The model is loaded here first, so a bad model fails before anything listens.
    With ``workers > 1`` each worker process loads its own one-thread session.
    """
    logging_config = log_config(log_level)
    logging.config.dictConfig(logging_config)
    app = create_app(
        model,
        name=name,
        max_body_size=max_body_size,
        check_manifest=check_manifest,
        micro_batch=micro_batch,
        backend=backend,
    )
    _log_start(app)
    options = uvicorn_options(host=host, port=port, log_level=log_level, access_log=access_log)
    options["log_config"] = logging_config
    if workers == 1:
        server = GracefulServer(uvicorn.Config(app, **options))
        server.run()
        return server.started
    del app
    _hand_to_workers(
        model,
        name=name,
        max_body_size=max_body_size,
        check_manifest=check_manifest,
        micro_batch=micro_batch,
        backend=backend,
    )
    factory = f"{__name__}:{app_from_env.__name__}"
    uvicorn.run(factory, factory=True, workers=workers, **options)
    return True
