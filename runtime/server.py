"""``pomona serve``: an Open Inference Protocol (KServe V2 REST) server for one model.

A plain ASGI application, no web framework: the model answers in microseconds, so
the server's own overhead is the whole latency. It runs on uvicorn (httptools and
uvloop when installed; each response sent in one write), parses JSON with orjson
(large flat bodies with simdjson) and predicts on the event loop thread with a
one-thread onnxruntime session, small concurrent requests batched into one call
(one process per core scales out: ``--workers``).

Endpoints: ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2``,
``GET /v2/models/{name}[/versions/{v}]``, ``GET /v2/models/{name}[/versions/{v}]/ready``,
``POST /v2/models/{name}[/versions/{v}]/infer`` (JSON and binary tensor data), and
Prometheus metrics on ``GET /metrics``. Every failure is answered with a 4xx/5xx
status and ``{"error": "<message>"}``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import copy
import itertools
import logging
import logging.config
import os
import re
import signal
import threading
import zlib
from collections.abc import Awaitable, Callable, Generator, Iterator, MutableMapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
import orjson
import prometheus_client
import uvicorn
import uvicorn.config
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from pomona.runtime._protocol import (
    BINARY_EXTENSION,
    RequestError,
    encode_response,
    parse_request,
)
from pomona.runtime.errors import PomonaError
from pomona.runtime.predictor import Predictor

# uvicorn's HTTP protocol: httptools', sending each response in one write, when installed.
_HTTP_PROTOCOL: type[asyncio.Protocol] | str
try:
    from pomona.runtime._http import CoalescingHttpToolsProtocol as _HTTP_PROTOCOL
except ImportError:  # no httptools: uvicorn's h11 protocol, as it is
    _HTTP_PROTOCOL = "auto"

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MODEL_NAME",
    "MODEL_VERSION",
    "InferenceApp",
    "app_from_env",
    "create_app",
    "run_server",
    "uvicorn_options",
]

#: Largest request body accepted, as in Triton (``--max-body-size``).
DEFAULT_MAX_BODY_SIZE = 64 * 1024 * 1024
DEFAULT_MODEL_NAME = "pomona"
#: The one version of the model a server holds, for ``/versions/{v}`` paths.
MODEL_VERSION = "1"
SERVER_NAME = "pomona"
# Environment read by :func:`app_from_env`, the factory each worker process calls.
ENV_MODEL = "POMONA_SERVE_MODEL"
ENV_NAME = "POMONA_SERVE_NAME"
ENV_MAX_BODY_SIZE = "POMONA_SERVE_MAX_BODY_SIZE"
ENV_CHECK_MANIFEST = "POMONA_SERVE_CHECK_MANIFEST"
ENV_MICRO_BATCH = "POMONA_SERVE_MICRO_BATCH"

logger = logging.getLogger("pomona.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Response = tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]
Handler = Callable[[Scope, Receive], Awaitable[Response]]

_JSON = b"application/json"
_BINARY = b"application/octet-stream"
_NO_HEADERS: list[tuple[bytes, bytes]] = []
_CLOSE = [(b"connection", b"close")]
_MODEL_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer)?")
# Requests of up to this many rows are predicted together when they arrive together.
_BATCH_ROWS = 64
# Latency buckets from 50 µs (a one-row request) to 10 s (a 64 MiB JSON body).
_LATENCY_BUCKETS = (
    5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip


def _pomona_version() -> str:
    try:
        return version("pomona")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


class _Disconnected(Exception):
    """The client went away before its request body arrived."""


class _Metrics:
    """Prometheus metrics of one server process.

    Requests are counted in plain dictionaries (every request runs on the event loop
    thread) and turned into metric families only when ``/metrics`` is scraped: a
    labelled ``prometheus_client.Counter`` costs more per request than a small model.
    """

    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self.registry = registry
        self.rows = 0
        self.in_flight = 0
        self._requests: dict[tuple[str, int], int] = {}
        self._latency: dict[str, tuple[list[int], list[float]]] = {}
        registry.register(self)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        key = (endpoint, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        latency = self._latency.get(endpoint)
        if latency is None:
            latency = self._latency[endpoint] = ([0] * (len(_LATENCY_BUCKETS) + 1), [0.0])
        latency[0][bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        latency[1][0] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "pomona_requests",
            "HTTP requests answered, by endpoint and status code.",
            labels=["endpoint", "code"],
        )
        for (endpoint, status), count in sorted(self._requests.items()):
            requests.add_metric([endpoint, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "pomona_request_duration_seconds",
            "Time from the request reaching the application to its response being sent.",
            labels=["endpoint"],
        )
        bounds = [*map(floatToGoString, _LATENCY_BUCKETS), "+Inf"]
        for endpoint, (counts, total) in sorted(self._latency.items()):
            cumulative = list(itertools.accumulate(counts))
            latency.add_metric([endpoint], list(zip(bounds, cumulative, strict=True)), total[0])
        yield latency
        yield CounterMetricFamily("pomona_rows_predicted", "Rows the model predicted.", self.rows)
        yield GaugeMetricFamily(
            "pomona_requests_in_flight", "HTTP requests being answered now.", self.in_flight
        )


class _MicroBatcher:
    """Predict the small requests that arrive together in one onnxruntime call.

    A request asks for its prediction and waits; the first one of an event-loop turn
    schedules the call for the next turn, so every request parsed in the meantime
    joins it. No timer: a lone request waits one loop turn, never a fixed delay.
    """

    def __init__(self, predictor: Predictor) -> None:
        self._predict = predictor.predict
        self._pending: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []

    def predict(self, features: np.ndarray) -> asyncio.Future[np.ndarray]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((features, future))
        return future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if len(pending) > 1:
            try:
                predictions: np.ndarray | None = self._predict(
                    np.concatenate([x for x, _ in pending])
                )
            except Exception:
                predictions = None  # one bad request must not fail the others: predict alone
            if predictions is not None:
                start = 0
                for x, future in pending:
                    stop = start + len(x)
                    if not future.done():
                        future.set_result(predictions[start:stop])
                    start = stop
                return
        for x, future in pending:
            try:
                result = self._predict(x)
            except Exception as err:
                if not future.done():
                    future.set_exception(err)
            else:
                if not future.done():
                    future.set_result(result)


class InferenceApp:
    """The ASGI application serving one :class:`Predictor` under the Open Inference Protocol."""

    def __init__(
        self,
        predictor: Predictor,
        *,
        name: str = DEFAULT_MODEL_NAME,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        registry: prometheus_client.CollectorRegistry | None = None,
        micro_batch: bool = True,
    ) -> None:
        if not name or "/" in name:
            raise ValueError(f"model name must be non-empty and contain no '/': {name!r}")
        if max_body_size < 1:
            raise ValueError(f"max_body_size must be >= 1, got {max_body_size}")
        self.predictor = predictor
        self.name = name
        self.max_body_size = max_body_size
        # The model is loaded (and checked against its manifest) before the app exists.
        self.ready = True
        self.metrics = _Metrics(registry or prometheus_client.CollectorRegistry())
        self._input_name = predictor.input_name
        self._output_name = predictor.output_name
        self._n_features = predictor.n_features
        self._batcher = _MicroBatcher(predictor) if micro_batch else None

        self._server_metadata = orjson.dumps(
            {"name": SERVER_NAME, "version": _pomona_version(), "extensions": [BINARY_EXTENSION]}
        )
        self._model_metadata = orjson.dumps(
            {
                "name": name,
                "versions": [MODEL_VERSION],
                "platform": "onnxruntime_onnx",
                "inputs": [
                    {"name": self._input_name, "datatype": "FP32", "shape": [-1, self._n_features]}
                ],
                "outputs": [
                    {
                        "name": self._output_name,
                        "datatype": "FP32",
                        "shape": [-1, predictor.n_targets],
                    }
                ],
                "parameters": {
                    "feature_names": ",".join(predictor.feature_names),
                    "target_names": ",".join(predictor.target_names),
                },
            }
        )
        routes: dict[str, tuple[str, dict[str, Handler]]] = {
            "/v2/health/live": ("live", {"GET": self._live}),
            "/v2/health/ready": ("ready", {"GET": self._ready}),
            "/v2": ("server_metadata", {"GET": self._server_meta}),
            "/metrics": ("metrics", {"GET": self._metrics}),
        }
        for base in (f"/v2/models/{name}", f"/v2/models/{name}/versions/{MODEL_VERSION}"):
            routes[base] = ("model_metadata", {"GET": self._model_meta})
            routes[base + "/ready"] = ("model_ready", {"GET": self._ready})
            routes[base + "/infer"] = ("infer", {"POST": self._infer})
        self._routes = routes

    # -- ASGI entry point ------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        start = perf_counter()
        metrics = self.metrics
        metrics.in_flight += 1
        path = scope["path"]
        route = self._routes.get(path)
        endpoint = "other" if route is None else route[0]
        extra = _NO_HEADERS
        try:
            if route is None:
                raise self._unknown_path(path)
            handler = route[1].get(scope["method"])
            if handler is None:
                allowed = ", ".join(route[1])
                extra = [(b"allow", allowed.encode())]
                raise RequestError(
                    f"method {scope['method']} not allowed on {path}; use {allowed}", 405
                )
            status, content_type, body, extra = await handler(scope, receive)
        except _Disconnected:
            metrics.in_flight -= 1
            return
        except PomonaError as err:
            status, content_type = err.http_status, _JSON
            body = orjson.dumps({"error": str(err)})
            if status == 413:
                extra = _CLOSE
        except Exception:
            logger.exception("unexpected error answering %s %s", scope["method"], path)
            status, content_type = 500, _JSON
            body = b'{"error":"internal server error"}'
        except BaseException:  # cancelled: nothing is sent
            metrics.in_flight -= 1
            raise
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
        if extra:
            headers.extend(extra)
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            metrics.in_flight -= 1
        metrics.observe(endpoint, status, perf_counter() - start)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.ready = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.ready = False
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _unknown_path(self, path: str) -> RequestError:
        match = _MODEL_PATH.fullmatch(path)
        if match is None:
            return RequestError(f"no such endpoint: {path}", 404)
        name, model_version = match.group(1), match.group(2)
        if name != self.name:
            return RequestError(f"unknown model {name!r}; this server serves {self.name!r}", 404)
        return RequestError(
            f"unknown version {model_version!r} of model {name!r}; "
            f"this server serves version {MODEL_VERSION!r}",
            404,
        )

    # -- endpoints -------------------------------------------------------------------------

    async def _live(self, scope: Scope, receive: Receive) -> Response:
        return 200, _JSON, b"", _NO_HEADERS

    async def _ready(self, scope: Scope, receive: Receive) -> Response:
        if not self.ready:
            return 400, _JSON, b'{"error":"not ready"}', _NO_HEADERS
        return 200, _JSON, b"", _NO_HEADERS

    async def _server_meta(self, scope: Scope, receive: Receive) -> Response:
        return 200, _JSON, self._server_metadata, _NO_HEADERS

    async def _model_meta(self, scope: Scope, receive: Receive) -> Response:
        return 200, _JSON, self._model_metadata, _NO_HEADERS

    async def _metrics(self, scope: Scope, receive: Receive) -> Response:
        body = prometheus_client.generate_latest(self.metrics.registry)
        return 200, prometheus_client.CONTENT_TYPE_LATEST.encode(), body, _NO_HEADERS

    async def _infer(self, scope: Scope, receive: Receive) -> Response:
        header_length = None
        encoding = b""
        for key, value in scope["headers"]:
            if key == b"content-length":
                if _header_int(value, "Content-Length") > self.max_body_size:
                    raise self._too_large()
            elif key == b"inference-header-content-length":
                header_length = _header_int(value, "Inference-Header-Content-Length")
            elif key == b"content-encoding":
                encoding = value.strip().lower()
        message = await receive()
        if message["type"] != "http.request":
            raise _Disconnected
        body: bytes = message.get("body", b"")
        if message.get("more_body", False):
            body = await self._read_more_body(body, receive)
        elif len(body) > self.max_body_size:
            raise self._too_large()
        if encoding and encoding != b"identity":
            body = self._decompress(body, encoding)
        request = parse_request(
            body,
            header_length,
            input_name=self._input_name,
            output_name=self._output_name,
            n_features=self._n_features,
        )
        features = request.features
        if self._batcher is not None and len(features) <= _BATCH_ROWS:
            predictions = await self._batcher.predict(features)
        else:
            predictions = self.predictor.predict(features)
        self.metrics.rows += len(predictions)
        payload, json_length = encode_response(
            predictions,
            model_name=self.name,
            model_version=MODEL_VERSION,
            output_name=self._output_name,
            request_id=request.id,
            binary_output=request.binary_output,
        )
        if json_length is None:
            return 200, _JSON, payload, _NO_HEADERS
        return 200, _BINARY, payload, [(b"inference-header-content-length", b"%d" % json_length)]

    # -- request bodies --------------------------------------------------------------------

    def _too_large(self) -> RequestError:
        return RequestError(
            f"request body exceeds the limit of {self.max_body_size} bytes "
            "(pomona serve --max-body-size)",
            413,
        )

    async def _read_more_body(self, body: bytes, receive: Receive) -> bytes:
        """Read the rest of a body that arrives in several messages, within the limit."""
        chunks = [body]
        size = len(body)
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_size:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _decompress(self, body: bytes, encoding: bytes) -> bytes:
        if encoding == b"gzip":
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        elif encoding == b"deflate":
            inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS)
        else:
            raise RequestError(
                f"unsupported Content-Encoding {encoding.decode('latin-1')!r}; "
                "use gzip, deflate or none",
                415,
            )
        try:
            data = inflater.decompress(body, self.max_body_size + 1)
        except zlib.error as err:
            raise RequestError(f"body is not valid {encoding.decode()} data: {err}") from None
        if len(data) > self.max_body_size:
            raise self._too_large()
        if not inflater.eof:
            raise RequestError(f"{encoding.decode()} body is truncated")
        return data


def _header_int(value: bytes, name: str) -> int:
    if value.isdigit():
        return int(value)
    if not value.strip().isdigit():
        raise RequestError(f"{name} must be a non-negative integer, got {value[:40]!r}")
    return int(value)


# -- building and running --------------------------------------------------------------------


def load_predictor(model: str | os.PathLike[str], *, check_manifest: bool = True) -> Predictor:
    """The predictor a server process uses: one intra-op thread, no spinning."""
    return Predictor(model, check_manifest=check_manifest, intra_op_threads=1, allow_spinning=False)


def create_app(
    model: str | os.PathLike[str],
    *,
    name: str = DEFAULT_MODEL_NAME,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    check_manifest: bool = True,
    micro_batch: bool = True,
) -> InferenceApp:
    """Load ``model`` (checking it against its manifest) and return the ASGI app serving it."""
    predictor = load_predictor(model, check_manifest=check_manifest)
    return InferenceApp(predictor, name=name, max_body_size=max_body_size, micro_batch=micro_batch)


def app_from_env() -> InferenceApp:
    """App factory for worker processes: configuration comes from ``POMONA_SERVE_*``."""
    return create_app(
        os.environ[ENV_MODEL],
        name=os.environ.get(ENV_NAME, DEFAULT_MODEL_NAME),
        max_body_size=int(os.environ.get(ENV_MAX_BODY_SIZE, DEFAULT_MAX_BODY_SIZE)),
        check_manifest=os.environ.get(ENV_CHECK_MANIFEST, "1") == "1",
        micro_batch=os.environ.get(ENV_MICRO_BATCH, "1") == "1",
    )


class _GracefulServer(uvicorn.Server):
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


def _log_config(log_level: str) -> dict[str, Any]:
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["pomona"] = {
        "handlers": ["default"],
        "level": log_level.upper(),
        "propagate": False,
    }
    return config


def uvicorn_options(
    *, host: str, port: int, log_level: str = "info", access_log: bool = False
) -> dict[str, Any]:
    """The uvicorn settings ``pomona serve`` runs with (httptools and uvloop when installed).

    With httptools, each response goes out in one write (see :mod:`pomona.runtime._http`).
    """
    return {
        "http": _HTTP_PROTOCOL,
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
) -> bool:
    """Serve ``model`` until SIGTERM/SIGINT; return whether the server started.

    The model is loaded here first, so a bad model fails before anything listens.
    With ``workers > 1`` each worker process loads its own one-thread session.
    """
    log_config = _log_config(log_level)
    logging.config.dictConfig(log_config)
    app = create_app(
        model,
        name=name,
        max_body_size=max_body_size,
        check_manifest=check_manifest,
        micro_batch=micro_batch,
    )
    predictor = app.predictor
    logger.info(
        "serving %s as model %r: %d features (%s) -> %d targets (%s); manifest %s",
        predictor.path,
        name,
        predictor.n_features,
        ", ".join(predictor.feature_names),
        predictor.n_targets,
        ", ".join(predictor.target_names),
        "checked" if predictor.manifest_checked else "not checked",
    )
    options = uvicorn_options(host=host, port=port, log_level=log_level, access_log=access_log)
    options["log_config"] = log_config
    if workers == 1:
        server = _GracefulServer(uvicorn.Config(app, **options))
        server.run()
        return server.started
    del app, predictor
    os.environ[ENV_MODEL] = str(Path(model).resolve())
    os.environ[ENV_NAME] = name
    os.environ[ENV_MAX_BODY_SIZE] = str(max_body_size)
    os.environ[ENV_CHECK_MANIFEST] = "1" if check_manifest else "0"
    os.environ[ENV_MICRO_BATCH] = "1" if micro_batch else "0"
    uvicorn.run("pomona.runtime.server:app_from_env", factory=True, workers=workers, **options)
    return True
