"""Where the gRPC service meets the processes of ``pomona serve`` (no ``grpc`` import here).

- :func:`grpc_alongside`: one process: the gRPC server beside uvicorn while it serves; a
  busy port fails before anything is served.
- :func:`grpc_for_workers` (in the parent) and :func:`start_grpc_in_worker` (in each
  worker): with ``--workers N`` every worker serves gRPC on the same port, bound with
  ``SO_REUSEPORT`` so that the kernel spreads the connections over the workers; the parent
  first checks that nothing else holds the port. A worker's gRPC server stops when its
  HTTP server does (lifespan shutdown), after the calls in flight.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import socket
from collections.abc import Callable, Generator
from typing import Any

from pomona.runtime.errors import PomonaError
from pomona.runtime.serve.app import InferenceApp
from pomona.runtime.serve.grpc_options import GrpcOptions

__all__ = ["grpc_alongside", "grpc_for_workers", "start_grpc_in_worker"]


@contextlib.contextmanager
def grpc_alongside(
    app: InferenceApp, options: GrpcOptions | None, host: str, grace: float
) -> Generator[None, None, None]:
    """The gRPC server on the app's models, on a pool of threads, while the block runs."""
    if options is None:
        yield
        return
    server = _grpc_server(app, options, host, False)
    server.start()
    try:
        yield
    finally:
        server.stop(grace)


def _grpc_server(app: InferenceApp, options: GrpcOptions, host: str, reuse_port: bool) -> Any:
    from pomona.runtime.serve.grpc_server import GrpcServer  # needs the grpc extra

    return GrpcServer(
        app.source,
        app.stats,
        host=host,
        options=options,
        ready=lambda: app.ready,
        reuse_port=reuse_port,
    )


def grpc_for_workers(options: GrpcOptions | None, host: str, grace: float) -> Any:
    """What each worker needs to serve gRPC, once the port is known to be free."""
    if options is None:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:  # without SO_REUSEPORT: a port that any other socket holds fails here
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, options.port))
    except OSError:
        raise PomonaError(
            f"cannot listen for gRPC on {host}:{options.port}: the port is in use or the "
            "address cannot be bound; choose another with --grpc-port"
        ) from None
    return {"options": dataclasses.asdict(options), "host": host, "grace": grace}


def start_grpc_in_worker(app: InferenceApp, fields: dict[str, Any]) -> Callable[[], None]:
    """Serve gRPC from this worker on the shared port; return what stops it."""
    server = _grpc_server(app, GrpcOptions(**fields["options"]), fields["host"], True)
    server.start()
    return functools.partial(server.stop, fields["grace"])
