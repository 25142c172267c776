"""The ASGI application: Open Inference Protocol (KServe V2 REST) routes for one model or a
model repository.

No web framework: the model answers in microseconds, so the server's own overhead is
the whole latency. Routes are one dictionary lookup (a model's paths are parsed once,
then looked up); every failure is answered with a 4xx/5xx status and
``{"error": "<message>"}`` -- a :class:`PomonaError` with its own status, anything else
logged with its traceback and answered with a generic 500.

The models come from a source with a ``snapshot`` (:class:`~.repository.Snapshot`): one
fixed model, or a :class:`~.repository.ModelRepository` whose snapshot is swapped when
versions change. A request reads the snapshot once and finishes on the version it got.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from time import perf_counter, perf_counter_ns
from typing import Any

import numpy as np
import orjson
import prometheus_client

from pomona.runtime.errors import PomonaError
from pomona.runtime.predictor import Predictor
from pomona.runtime.serve.access import UNAUTHORIZED_HEADERS, AccessPolicy
from pomona.runtime.serve.batching import BATCH_ROWS, MicroBatcher
from pomona.runtime.serve.body import Disconnected, infer_headers, read_body
from pomona.runtime.serve.codec import (
    BINARY_EXTENSION,
    RequestError,
    decode_request,
    encode_response,
)
from pomona.runtime.serve.extensions import (
    repository_action,
    repository_index,
    stats_report,
    version_metadata,
)
from pomona.runtime.serve.metrics import metrics_for_process
from pomona.runtime.serve.model_info import model_config, pomona_version, served_name
from pomona.runtime.serve.repository import ModelRepository
from pomona.runtime.serve.snapshot import FixedModel, LoadedModel, ModelSource, load_predictor
from pomona.runtime.serve.stats import Statistics

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MODEL_NAME",
    "MODEL_VERSION",
    "InferenceApp",
    "create_app",
    "load_predictor",
]

#: Largest request body accepted, as in Triton (``--max-body-size``).
DEFAULT_MAX_BODY_SIZE = 64 * 1024 * 1024
DEFAULT_MODEL_NAME = "pomona"
#: The one version of the model a server holds, for ``/versions/{v}`` paths.
MODEL_VERSION = "1"
SERVER_NAME = "pomona"

logger = logging.getLogger("pomona.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
Response = tuple[int, bytes, bytes, Headers]
Handler = Callable[[Scope, Receive], Awaitable[Response]]

_JSON = b"application/json"
_BINARY = b"application/octet-stream"
_NO_HEADERS: Headers = []
_CLOSE = [(b"connection", b"close")]
_MODEL_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer|/config|/stats)?")
_REPOSITORY_PATH = re.compile(r"/v2/repository/models/([^/]+)/(load|unload)")
_MAX_CACHED_ROUTES = 4096
_EXTENSIONS = [BINARY_EXTENSION, "model_repository", "statistics"]
_INTERNAL_ERROR = b'{"error":"internal server error"}'
#: Errors after which the rest of the request body is not read: the connection closes.
_CLOSING_STATUSES = frozenset({408, 413, 503})


class InferenceApp:
    """The ASGI application serving a :class:`Predictor`, or a model repository, under the
    Open Inference Protocol."""

    def __init__(
        self,
        predictor: Predictor | None = None,
        *,
        name: str = DEFAULT_MODEL_NAME,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        registry: prometheus_client.CollectorRegistry | None = None,
        micro_batch: bool = True,
        access: AccessPolicy | None = None,
        repository: ModelRepository | None = None,
    ) -> None:
        if not name or "/" in name:
            raise ValueError(f"model name must be non-empty and contain no '/': {name!r}")
        if max_body_size < 1:
            raise ValueError(f"max_body_size must be >= 1, got {max_body_size}")
        if (predictor is None) == (repository is None):
            raise ValueError("serve either a predictor or a repository")
        self.name = name
        self.max_body_size = max_body_size
        self.repository = repository
        self.source: ModelSource = repository or FixedModel(predictor, name)  # type: ignore[arg-type]
        # The models are loaded (and checked against their manifests) before the app exists.
        self.ready = True
        self.metrics = metrics_for_process(registry)
        self.stats = Statistics()
        self._access = access
        self._micro_batch = micro_batch
        #: Called when the server stops (lifespan shutdown), after the requests in flight.
        self.on_shutdown: list[Callable[[], object]] = []
        self._batchers: weakref.WeakKeyDictionary[LoadedModel, MicroBatcher] = (
            weakref.WeakKeyDictionary()
        )
        self._server_metadata = orjson.dumps(
            {"name": SERVER_NAME, "version": pomona_version(), "extensions": _EXTENSIONS}
        )
        self._routes = self._route_table()
        for name in self.source.snapshot.models:  # parse the busiest paths now
            self._model_route(f"/v2/models/{name}/infer")

    @property
    def predictor(self) -> Predictor:
        """The latest version of the model named ``name`` (the one model of a model file)."""
        return self.source.snapshot.get(self.name).predictor

    def _route_table(self) -> dict[str, tuple[str, dict[str, Handler]]]:
        """Path -> (endpoint label for the metrics, handler by method)."""
        return {
            "/v2/health/live": ("live", {"GET": self._live}),
            "/v2/health/ready": ("ready", {"GET": self._ready}),
            "/v2": ("server_metadata", {"GET": self._server_meta}),
            "/metrics": ("metrics", {"GET": self._metrics}),
            "/v2/models/stats": ("model_stats", {"GET": partial(self._stats, None, None)}),
            "/v2/repository/index": ("repository", {"POST": self._repository_index}),
        }

    def _model_route(self, path: str) -> tuple[str, dict[str, Handler]] | None:
        """The route of a model's path (parsed once, then cached), or of a repository action."""
        match = _MODEL_PATH.fullmatch(path)
        if match is None:
            action = _REPOSITORY_PATH.fullmatch(path)
            if action is None:
                return None
            handler = partial(self._repository_action, action.group(2), action.group(1))
            return "repository", {"POST": handler}
        name, model_version, what = match.groups()
        if name not in self.source.snapshot.models:
            return None  # unknown models are not cached: answered 404 as "other"
        args = (name, model_version)
        routes: dict[str | None, tuple[str, dict[str, Handler]]] = {
            None: ("model_metadata", {"GET": partial(self._model_meta, *args)}),
            "/ready": ("model_ready", {"GET": partial(self._model_ready, *args)}),
            "/infer": ("infer", {"POST": partial(self._infer, *args)}),
            "/config": ("model_config", {"GET": partial(self._model_conf, *args)}),
            "/stats": ("model_stats", {"GET": partial(self._stats, *args)}),
        }
        route = routes[what]
        if len(self._routes) < _MAX_CACHED_ROUTES:
            self._routes[path] = route
        return route

    # -- ASGI entry point ------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        start = perf_counter()
        metrics = self.metrics
        metrics.in_flight += 1
        route = self._routes.get(scope["path"]) or self._model_route(scope["path"])
        try:
            status, content_type, body, extra = await self._answer(scope, receive, route)
        except Disconnected:
            metrics.in_flight -= 1
            return
        except BaseException:  # cancelled: nothing is sent
            metrics.in_flight -= 1
            raise
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
        if extra:
            headers.extend(extra)
        if self._access is not None:
            headers.extend(self._access.response_headers(scope["headers"]))
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            metrics.in_flight -= 1
        metrics.observe("other" if route is None else route[0], status, perf_counter() - start)

    async def _answer(
        self, scope: Scope, receive: Receive, route: tuple[str, dict[str, Handler]] | None
    ) -> Response:
        """The response to one request; every failure turned into its error response."""
        path = scope["path"]
        try:
            if self._access is not None:
                preflight = self._access.guard(scope["method"], path, scope["headers"])
                if preflight is not None:
                    return 204, _JSON, b"", preflight
            if route is None:
                raise self._unknown_path(path)
            handler = route[1].get(scope["method"])
            if handler is None:
                return self._not_allowed(scope["method"], path, route[1])
            return await handler(scope, receive)
        except PomonaError as err:
            return _error_response(err)
        except Disconnected:
            raise
        except Exception:
            logger.exception("unexpected error answering %s %s", scope["method"], path)
            return 500, _JSON, _INTERNAL_ERROR, _NO_HEADERS

    def _not_allowed(self, method: str, path: str, handlers: dict[str, Handler]) -> Response:
        allowed = ", ".join(handlers)
        body = orjson.dumps({"error": f"method {method} not allowed on {path}; use {allowed}"})
        return 405, _JSON, body, [(b"allow", allowed.encode())]

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.ready = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.ready = False
                for hook in self.on_shutdown:
                    await asyncio.to_thread(hook)
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _unknown_path(self, path: str) -> RequestError:
        match = _MODEL_PATH.fullmatch(path)
        if match is None:
            return RequestError(f"no such endpoint: {path}", 404)
        try:
            self.source.snapshot.get(match.group(1), match.group(2))
        except RequestError as err:
            return err
        return RequestError(f"no such endpoint: {path}", 404)  # pragma: no cover - cached

    # -- endpoints -------------------------------------------------------------------------

    async def _live(self, scope: Scope, receive: Receive) -> Response:
        return 200, _JSON, b'{"live":true}', _NO_HEADERS

    async def _ready(self, scope: Scope, receive: Receive) -> Response:
        if not self.ready:
            return 400, _JSON, b'{"error":"not ready"}', _NO_HEADERS
        return 200, _JSON, b'{"ready":true}', _NO_HEADERS

    async def _server_meta(self, scope: Scope, receive: Receive) -> Response:
        return 200, _JSON, self._server_metadata, _NO_HEADERS

    async def _metrics(self, scope: Scope, receive: Receive) -> Response:
        content_type, body = self.metrics.exposition()
        return 200, content_type, body, _NO_HEADERS

    # -- one model ---------------------------------------------------------------------------

    async def _model_ready(
        self, name: str, model_version: str | None, scope: Scope, receive: Receive
    ) -> Response:
        self.source.snapshot.get(name, model_version)
        return await self._ready(scope, receive)

    async def _model_meta(
        self, name: str, model_version: str | None, scope: Scope, receive: Receive
    ) -> Response:
        meta = version_metadata(self.source.snapshot, name, model_version)
        return 200, _JSON, orjson.dumps(meta), _NO_HEADERS

    async def _model_conf(
        self, name: str, model_version: str | None, scope: Scope, receive: Receive
    ) -> Response:
        model = self.source.snapshot.get(name, model_version)
        return 200, _JSON, orjson.dumps(model_config(model.predictor, name)), _NO_HEADERS

    async def _stats(
        self, name: str | None, model_version: str | None, scope: Scope, receive: Receive
    ) -> Response:
        report = stats_report(self.source.snapshot, self.stats, name, model_version)
        return 200, _JSON, orjson.dumps(report), _NO_HEADERS

    def _predict(self, predictor: Predictor, features: np.ndarray) -> np.ndarray:
        """One model call, counted (``pomona_model_calls``: below the requests when batched)."""
        self.metrics.model_calls += 1
        return predictor.predict(features)

    async def _infer(
        self, name: str, model_version: str | None, scope: Scope, receive: Receive
    ) -> Response:
        model = self.source.snapshot.get(name, model_version)
        start = perf_counter_ns()
        try:
            content_length, header_length, encoding = infer_headers(scope["headers"])
            body = await read_body(receive, content_length, encoding, self.max_body_size, scope)
            request = decode_request(body, header_length, model.io)
            features = request.features
            if self._micro_batch and len(features) <= BATCH_ROWS:
                predictions = await self._batcher(model).predict(features)
            else:
                predictions = self._predict(model.predictor, features)
        except PomonaError:
            self.stats.record(name, model.version, perf_counter_ns() - start, 0, ok=False)
            raise
        rows = len(predictions)
        self.metrics.rows += rows
        payload, json_length = encode_response(
            predictions,
            model_name=name,
            model_version=model.version,
            output_name=model.io.output_name,
            request_id=request.id,
            binary_output=request.binary_output,
        )
        self.stats.record(name, model.version, perf_counter_ns() - start, rows, ok=True)
        if json_length is None:
            return 200, _JSON, payload, _NO_HEADERS
        return 200, _BINARY, payload, [(b"inference-header-content-length", b"%d" % json_length)]

    def _batcher(self, model: LoadedModel) -> MicroBatcher:
        batcher = self._batchers.get(model)
        if batcher is None:
            batcher = self._batchers[model] = MicroBatcher(partial(self._predict, model.predictor))
        return batcher

    # -- the repository extension ------------------------------------------------------------

    async def _repository_index(self, scope: Scope, receive: Receive) -> Response:
        index = repository_index(self.source.snapshot, self.repository)
        return 200, _JSON, orjson.dumps(index), _NO_HEADERS

    async def _repository_action(
        self, action: str, name: str, scope: Scope, receive: Receive
    ) -> Response:
        content_length, _, encoding = infer_headers(scope["headers"])
        await read_body(receive, content_length, encoding, self.max_body_size, scope)
        # Loading takes a while: off the event loop, which keeps answering meanwhile.
        await asyncio.to_thread(repository_action, self.repository, action, name)
        return 200, _JSON, b"{}", _NO_HEADERS


def _error_response(err: PomonaError) -> Response:
    body = orjson.dumps({"error": str(err)})
    status = err.http_status
    if status in _CLOSING_STATUSES:
        return status, _JSON, body, _CLOSE
    return status, _JSON, body, UNAUTHORIZED_HEADERS if status == 401 else _NO_HEADERS


# -- factories -------------------------------------------------------------------------------


def create_app(
    model: str | os.PathLike[str],
    *,
    name: str | None = None,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    check_manifest: bool = True,
    micro_batch: bool = True,
    access: AccessPolicy | None = None,
    registry: prometheus_client.CollectorRegistry | None = None,
    backend: str = "auto",
) -> InferenceApp:
    """Load ``model`` (checking it against its manifest) and return the ASGI app serving it.

    ``name`` defaults to the name the model was exported under (:func:`served_name`).
    """
    predictor = load_predictor(model, check_manifest=check_manifest, backend=backend)
    return InferenceApp(
        predictor,
        name=name or served_name(predictor, DEFAULT_MODEL_NAME),
        max_body_size=max_body_size,
        micro_batch=micro_batch,
        access=access,
        registry=registry,
    )
