"""``pomona serve``: an Open Inference Protocol (KServe V2 REST, and gRPC) server for one
model or a model repository.

A plain ASGI application on uvicorn: the model answers in microseconds, so the
server's own overhead is the whole latency. One module per concern:

``app``             the framework-free ASGI app: routes (``/v2/health/live``,
                    ``/v2/health/ready``, ``/v2``, ``/v2/models/{name}[/versions/{v}]``,
                    ``.../ready``, ``.../infer``, ``.../config``, ``.../stats``, the
                    repository extension, ``/metrics``), every error as a 4xx/5xx
                    ``{"error": ...}``; the factories ``create_app`` and
                    ``load_predictor``.
``snapshot``        what is served at one moment: loaded versions in an immutable
                    ``Snapshot``; the version policy; a version folder checked against
                    its manifest (pending, refused), loaded and warmed.
``repository``      ``ModelRepository``: scans a repository folder, builds the next
                    snapshot off to the side and swaps it in whole; polling; model control.
``stats``           the statistics extension's counters, per model version.
``grpc_server``     the ``GRPCInferenceService`` on gRPC's synchronous server
                    (``grpc_pool``: its threads, ``CallPool``; ``grpc_codec``: messages to
                    arrays and back, and the kept plans of ``ModelInfer``;
                    ``grpc_options``; ``grpc_launch``: in one process or
                    in every worker; the generated code and its ``.proto`` in ``proto/``;
                    needs the ``grpc`` extra).
``access``          the optional bearer token (401) and CORS for listed origins.
``model_info``      the served name (the exported one), model metadata with sha256,
                    Triton's model config.
``body``            request bodies: header integers, the size limit (413), bodies in
                    several messages, stalled bodies (408/503), gzip/deflate.
``codec``           infer requests and responses: ``decode_request`` (the one entry), the
                    plain reference reader ``decode_reference`` (stdlib ``json``),
                    ``encode_response``, ``RequestError``.
``codec_fast``      the quick routes ``decode_request`` tries first (orjson, simdjson,
                    flat arrays); each gives the reference's answer or declines.
``batching``        the micro-batcher: small requests of one loop turn, one model call.
``metrics``         the Prometheus metrics behind ``/metrics``, summed over workers.
``uvicorn_protocol`` the connection: uvicorn's httptools protocol with one write per
                    response, timeouts, a head-size limit, a connection cap and a
                    lingering close.
``uvicorn_server``  every other tie to uvicorn: options, the graceful server, the
                    socket (a busy port is one error), worker processes.
``cli``             the click ``serve`` command: parses options, calls ``run_server``.

Importing this package needs the ``serve`` extra (orjson, prometheus-client; uvicorn
for ``uvicorn_server`` and ``cli``).
"""

from __future__ import annotations

from pomona.runtime.serve.app import (
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MODEL_NAME,
    MODEL_VERSION,
    InferenceApp,
    create_app,
    load_predictor,
)
from pomona.runtime.serve.codec import RequestError

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MODEL_NAME",
    "MODEL_VERSION",
    "InferenceApp",
    "RequestError",
    "create_app",
    "load_predictor",
]
