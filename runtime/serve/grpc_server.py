"""The Open Inference Protocol's ``GRPCInferenceService``, on the models the REST app serves.

``inference.GRPCInferenceService`` (``ServerLive``, ``ServerReady``, ``ModelReady``,
``ServerMetadata``, ``ModelMetadata``, ``ModelInfer``) is the service KServe and Triton
define with the same messages, so ``tritonclient.grpc`` works unmodified. It runs on
gRPC's synchronous server (a few threads, :class:`~.grpc_pool.CallPool`; onnxruntime
lets go of the GIL while it predicts) beside uvicorn, on the same model source and
statistics: a version swapped into the repository is served by both at once.

``ModelInfer`` takes and returns bytes: a request whose head (everything but its raw
input) was answered before is answered from the :class:`~.grpc_codec.Plan` kept for it,
without building protobuf messages, as long as the version it names is still the one
served; any other request takes the reference path (parse, decode, encode).

Errors map to gRPC status codes by their HTTP status: 404 ``NOT_FOUND``, 400
``INVALID_ARGUMENT``, 413 ``RESOURCE_EXHAUSTED``, 503 ``UNAVAILABLE``, anything
unexpected ``INTERNAL`` (logged, with a generic message). Messages larger than
``max_message_bytes`` are refused by gRPC itself with ``RESOURCE_EXHAUSTED`` and the
sizes in the message.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter_ns
from typing import Any, NoReturn

import grpc
import numpy as np

from pomona.runtime.errors import PomonaError
from pomona.runtime.serve.app import SERVER_NAME, logger
from pomona.runtime.serve.codec import RequestError
from pomona.runtime.serve.codec_fast import as_float32
from pomona.runtime.serve.grpc_codec import (
    MAX_PLANS,
    Plan,
    decode_infer,
    encode_infer,
    make_plan,
    split_raw,
)
from pomona.runtime.serve.grpc_options import GrpcOptions
from pomona.runtime.serve.grpc_pool import CallPool
from pomona.runtime.serve.model_info import pomona_version
from pomona.runtime.serve.proto import open_inference_grpc_pb2 as pb
from pomona.runtime.serve.snapshot import LoadedModel, ModelSource
from pomona.runtime.serve.stats import Statistics

__all__ = ["GRPC_THREADS", "GrpcServer", "InferenceServicer", "status_code"]

SERVICE = "inference.GRPCInferenceService"
#: Threads answering calls: more than one, so that a call waiting on onnxruntime
#: does not hold up the others.
GRPC_THREADS = 4

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


class InferenceServicer:
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
        self._plans: dict[bytes, Plan] = {}

    def methods(self) -> dict[str, grpc.RpcMethodHandler]:
        """The service's methods, for ``grpc.Server.add_registered_method_handlers``."""

        def unary(method: Callable[[Any, Any], Any], request: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                method,
                request_deserializer=request.FromString,
                response_serializer=_serialize,
            )

        return {
            "ServerLive": unary(self.ServerLive, pb.ServerLiveRequest),
            "ServerReady": unary(self.ServerReady, pb.ServerReadyRequest),
            "ModelReady": unary(self.ModelReady, pb.ModelReadyRequest),
            "ServerMetadata": unary(self.ServerMetadata, pb.ServerMetadataRequest),
            "ModelMetadata": unary(self.ModelMetadata, pb.ModelMetadataRequest),
            # bytes in, bytes out: see ModelInfer
            "ModelInfer": grpc.unary_unary_rpc_method_handler(self.ModelInfer),
        }

    def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self._ready())

    def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            self._source.snapshot.get(request.name, request.version or None)
        except RequestError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self._ready())

    def ServerMetadata(self, request: Any, context: Any) -> Any:
        return self._metadata

    def ModelMetadata(self, request: Any, context: Any) -> Any:
        snapshot = self._source.snapshot
        model = _model(context, snapshot, request.name, request.version or None)
        p = model.predictor
        response = pb.ModelMetadataResponse(
            name=model.name, versions=snapshot.versions(model.name), platform="onnxruntime_onnx"
        )
        response.inputs.add(name=p.input_name, datatype="FP32", shape=[-1, p.n_features])
        response.outputs.add(name=p.output_name, datatype="FP32", shape=[-1, p.n_targets])
        return response

    def ModelInfer(self, payload: bytes, context: Any) -> bytes:
        """A serialized ``ModelInferResponse`` for a serialized ``ModelInferRequest``."""
        split = split_raw(payload)
        plan = self._plans.get(split[0]) if split is not None else None
        if split is not None and plan is not None:
            model = _model(context, self._source.snapshot, plan.model.name, plan.version)
            raw = split[1]
            if model is plan.model and len(raw) == plan.nbytes:
                # a copy of the raw input (aligned, as a bytes object's data is), shaped
                x = as_float32(np.ndarray(plan.shape, plan.wire, bytes(raw)))
                return plan.prefix + self._predict(context, model, x).tobytes()
        return self.answer_reference(payload, context, None if split is None else split[0])

    def answer_reference(self, payload: bytes, context: Any, head: bytes | None) -> bytes:
        """The plain path: parse, decode, predict, encode; keep a plan under ``head``."""
        try:
            request = pb.ModelInferRequest.FromString(payload)
        except Exception:  # protobuf's DecodeError, whichever implementation raises it
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "not a ModelInferRequest")
        model = _model(context, self._source.snapshot, request.model_name, request.model_version)
        try:
            x = decode_infer(request, model)
        except RequestError as err:
            self._stats.record(model.name, model.version, 0, 0, ok=False)
            _abort(context, status_code(err.http_status), str(err))
        predictions = self._predict(context, model, x)
        if head is not None:
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            self._plans[head] = make_plan(model, request, predictions)
        response: bytes = encode_infer(predictions, model, request.id).SerializeToString()
        return response

    def _predict(self, context: Any, model: LoadedModel, x: np.ndarray) -> np.ndarray:
        """``model``'s little-endian FP32 predictions for ``x``, counted in the statistics."""
        start = perf_counter_ns()
        try:
            predictions = model.predictor.predict(x).astype("<f4", copy=False)
        except PomonaError as err:
            self._stats.record(model.name, model.version, perf_counter_ns() - start, 0, ok=False)
            _abort(context, status_code(err.http_status), str(err))
        except Exception:
            logger.exception("unexpected error answering gRPC ModelInfer")
            _abort(context, grpc.StatusCode.INTERNAL, "internal server error")
        rows = len(predictions)
        self._stats.record(model.name, model.version, perf_counter_ns() - start, rows, ok=True)
        return predictions


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def _abort(context: Any, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


def _model(context: Any, snapshot: Any, name: str, version: str | None) -> LoadedModel:
    """The model version asked for; the call ends with ``NOT_FOUND`` when there is none."""
    try:
        model: LoadedModel = snapshot.get(name, version or None)
    except RequestError as err:
        _abort(context, status_code(err.http_status), str(err))
    return model


class GrpcServer:
    """The gRPC service on ``host:options.port``, answered by a pool of threads."""

    def __init__(
        self,
        source: ModelSource,
        stats: Statistics,
        *,
        host: str,
        options: GrpcOptions,
        ready: Callable[[], bool] = lambda: True,
        reuse_port: bool = False,
    ) -> None:
        self._servicer = InferenceServicer(source, stats, ready)
        self._address = f"[{host}]:{options.port}" if ":" in host else f"{host}:{options.port}"
        self._options = options
        self._reuse_port = reuse_port
        self._server: grpc.Server | None = None
        self._pool: CallPool | None = None

    def start(self) -> None:
        """Bind and start serving; a busy port is a :class:`PomonaError`."""
        size = self._options.max_message_bytes
        pool = CallPool(GRPC_THREADS, "pomona-grpc")
        server = grpc.server(
            pool,
            options=[
                ("grpc.max_receive_message_length", size),
                ("grpc.max_send_message_length", size),
                ("grpc.so_reuseport", int(self._reuse_port)),
            ],
        )
        # Registered, not generic: gRPC's core matches the method, no per-call lookup.
        server.add_registered_method_handlers(SERVICE, self._servicer.methods())
        try:
            bound = server.add_insecure_port(self._address)
        except RuntimeError:
            bound = 0
        if not bound:
            pool.shutdown()
            raise PomonaError(
                f"cannot listen for gRPC on {self._address}: the port is in use or the "
                "address cannot be bound; choose another with --grpc-port"
            )
        server.start()
        self._server, self._pool = server, pool
        logger.info("serving gRPC on %s", self._address)

    def stop(self, grace: float = 5.0) -> None:
        """Stop taking calls, let those in flight finish for up to ``grace`` seconds."""
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
