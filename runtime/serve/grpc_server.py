"""The Open Inference Protocol's ``GRPCInferenceService``, on the models the REST app serves.

``inference.GRPCInferenceService`` (``ServerLive``, ``ServerReady``, ``ModelReady``,
``ServerMetadata``, ``ModelMetadata``, ``ModelInfer``) is the service KServe and Triton
define with the same messages, so ``tritonclient.grpc`` works unmodified. It runs on
``grpc.aio`` in a thread of its own (with its own event loop), beside uvicorn, on the
same model source and statistics: a version swapped into the repository is served by
both at once.

Errors map to gRPC status codes by their HTTP status: 404 ``NOT_FOUND``, 400
``INVALID_ARGUMENT``, 413 ``RESOURCE_EXHAUSTED``, 503 ``UNAVAILABLE``, anything
unexpected ``INTERNAL`` (logged, with a generic message). Messages larger than
``max_message_bytes`` are refused by gRPC itself with ``RESOURCE_EXHAUSTED`` and the
sizes in the message.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

import grpc
import grpc.aio

from pomona.runtime.errors import PomonaError
from pomona.runtime.serve.app import SERVER_NAME, logger
from pomona.runtime.serve.codec import RequestError
from pomona.runtime.serve.grpc_codec import decode_infer, encode_infer
from pomona.runtime.serve.grpc_options import GrpcOptions
from pomona.runtime.serve.model_info import pomona_version
from pomona.runtime.serve.proto import open_inference_grpc_pb2 as pb
from pomona.runtime.serve.proto import open_inference_grpc_pb2_grpc as pb_grpc
from pomona.runtime.serve.snapshot import LoadedModel, ModelSource
from pomona.runtime.serve.stats import Statistics

__all__ = ["GrpcServer", "InferenceServicer", "status_code"]

_CODES = {
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def status_code(http_status: int) -> grpc.StatusCode:
    """The gRPC status code of an error answered with ``http_status`` over REST."""
    if http_status in _CODES:
        return _CODES[http_status]
    return grpc.StatusCode.INVALID_ARGUMENT if http_status < 500 else grpc.StatusCode.INTERNAL


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The service's handlers, reading the models from ``source.snapshot``."""

    def __init__(
        self, source: ModelSource, stats: Statistics, ready: Callable[[], bool] = lambda: True
    ) -> None:
        self._source = source
        self._stats = stats
        self._ready = ready
        self._metadata = pb.ServerMetadataResponse(
            name=SERVER_NAME, version=pomona_version(), extensions=["statistics"]
        )

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self._ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            self._source.snapshot.get(request.name, request.version or None)
        except RequestError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self._ready())

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return self._metadata

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        snapshot = self._source.snapshot
        model = await _model(context, snapshot, request.name, request.version)
        p = model.predictor
        response = pb.ModelMetadataResponse(
            name=model.name, versions=snapshot.versions(model.name), platform="onnxruntime_onnx"
        )
        response.inputs.add(name=p.input_name, datatype="FP32", shape=[-1, p.n_features])
        response.outputs.add(name=p.output_name, datatype="FP32", shape=[-1, p.n_targets])
        return response

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        model = await _model(
            context, self._source.snapshot, request.model_name, request.model_version
        )
        start = perf_counter_ns()
        try:
            predictions = model.predictor.predict(decode_infer(request, model))
        except PomonaError as err:
            self._stats.record(model.name, model.version, perf_counter_ns() - start, 0, ok=False)
            await context.abort(status_code(err.http_status), str(err))
        except Exception:
            logger.exception("unexpected error answering gRPC ModelInfer")
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")
        rows = len(predictions)
        self._stats.record(model.name, model.version, perf_counter_ns() - start, rows, ok=True)
        return encode_infer(predictions, model, request.id)


async def _model(context: Any, snapshot: Any, name: str, version: str) -> LoadedModel:
    """The model version asked for; the call ends with ``NOT_FOUND`` when there is none."""
    try:
        model: LoadedModel = snapshot.get(name, version or None)
    except RequestError as err:
        await context.abort(status_code(err.http_status), str(err))
    return model


class GrpcServer:
    """The gRPC service on ``host:options.port``, served from a thread of its own."""

    def __init__(
        self,
        source: ModelSource,
        stats: Statistics,
        *,
        host: str,
        options: GrpcOptions,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self._servicer = InferenceServicer(source, stats, ready)
        self._address = f"[{host}]:{options.port}" if ":" in host else f"{host}:{options.port}"
        self._options = options
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._grace = 5.0
        self._thread = threading.Thread(target=self._run, name="pomona-grpc", daemon=True)

    def start(self) -> None:
        """Bind and start serving; raise what binding raised (a busy port, say)."""
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            self._thread.join()
            raise self._failure

    def stop(self, grace: float = 5.0) -> None:
        """Stop taking calls, let those in flight finish for up to ``grace`` seconds."""
        self._grace = grace
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as err:  # reported to start(), or logged once serving
            if not self._started.is_set():
                self._failure = err
                self._started.set()
            else:  # pragma: no cover - the loop ended by an unexpected error
                logger.exception("the gRPC server stopped")

    async def _serve(self) -> None:
        size = self._options.max_message_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", size),
                ("grpc.max_send_message_length", size),
                ("grpc.so_reuseport", 0),
            ]
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self._servicer, server)
        try:
            bound = server.add_insecure_port(self._address)
        except RuntimeError:
            bound = 0
        if not bound:
            raise PomonaError(
                f"cannot listen for gRPC on {self._address}: the port is in use or the "
                "address cannot be bound; choose another with --grpc-port"
            )
        await server.start()
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        logger.info("serving gRPC on %s", self._address)
        self._started.set()
        await self._stop.wait()
        await server.stop(self._grace)
