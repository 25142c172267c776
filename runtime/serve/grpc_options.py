"""The options of the gRPC server, importable without the ``grpc`` extra."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_GRPC_MAX_MESSAGE_BYTES", "GrpcOptions"]

#: Largest gRPC message received or sent, as the REST body limit (gRPC's own is 4 MiB).
DEFAULT_GRPC_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class GrpcOptions:
    """Where the gRPC service listens and the largest message it takes."""

    port: int
    max_message_bytes: int = DEFAULT_GRPC_MAX_MESSAGE_BYTES
