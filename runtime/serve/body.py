"""Request bodies of the ASGI app: the size limit, bodies in several messages, compression."""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from pomona.runtime.serve.codec import RequestError

__all__ = ["STALLED", "Disconnected", "infer_headers", "read_body", "too_large"]

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

#: Scope key the server sets, to ``(status, seconds)``, when a body stops arriving: the
#: wait for it ends with that status (408 after the body timeout, 503 on shutdown).
STALLED = "pomona.stalled"
#: Digits a header integer may have: more is larger than any body, never a valid length.
_MAX_DIGITS = 18


class Disconnected(Exception):
    """The client went away before its request body arrived."""


def infer_headers(headers: list[tuple[bytes, bytes]]) -> tuple[int | None, int | None, bytes]:
    """``Content-Length``, ``Inference-Header-Content-Length`` and ``Content-Encoding``."""
    content_length = header_length = None
    encoding = b""
    for key, value in headers:
        if key == b"content-length":
            content_length = _header_int(value, "Content-Length")
        elif key == b"inference-header-content-length":
            header_length = _header_int(value, "Inference-Header-Content-Length")
        elif key == b"content-encoding":
            encoding = value.strip().lower()
    return content_length, header_length, encoding


def _header_int(value: bytes, name: str) -> int:
    """A header's non-negative integer; one of more than 18 digits reads as 10**18."""
    if not value.isdigit():
        value = value.strip()
        if not value.isdigit():
            raise RequestError(f"{name} must be a non-negative integer, got {value[:40]!r}")
    if len(value) > _MAX_DIGITS:
        return 10**_MAX_DIGITS
    return int(value)


def too_large(limit: int) -> RequestError:
    return RequestError(
        f"request body exceeds the limit of {limit} bytes (pomona serve --max-body-size)", 413
    )


async def read_body(
    receive: Receive,
    content_length: int | None,
    encoding: bytes,
    limit: int,
    scope: MutableMapping[str, Any] | None = None,
) -> bytes:
    """The whole request body, decompressed, refused (413) as soon as it passes ``limit``.

    A body that stops arriving ends with the status the server set in ``scope``
    (:data:`STALLED`), which it checks when a wait for more of the body brings nothing.
    """
    if content_length is not None and content_length > limit:
        raise too_large(limit)
    message = await receive()
    if message["type"] != "http.request":
        raise Disconnected
    body: bytes = message.get("body", b"")
    if message.get("more_body", False):
        body = await _read_more(body, receive, limit, scope)
    elif len(body) > limit:
        raise too_large(limit)
    if encoding and encoding != b"identity":
        body = _decompress(body, encoding, limit)
    return body


async def _read_more(
    body: bytes, receive: Receive, limit: int, scope: MutableMapping[str, Any] | None
) -> bytes:
    """Read the rest of a body that arrives in several messages, within the limit."""
    chunks = [body]
    size = len(body)
    if not body:
        _raise_if_stalled(scope)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise Disconnected
        chunk = message.get("body", b"")
        if not chunk and message.get("more_body", False):
            _raise_if_stalled(scope)
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _raise_if_stalled(scope: MutableMapping[str, Any] | None) -> None:
    stalled = None if scope is None else scope.get(STALLED)
    if stalled is None:
        return
    status, seconds = stalled
    if status == 503:
        raise RequestError("the server is shutting down; the request body did not arrive", 503)
    raise RequestError(f"request body stopped arriving for {seconds:g} s", 408)


def _decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
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
        data = inflater.decompress(body, limit + 1)
    except zlib.error as err:
        raise RequestError(f"body is not valid {encoding.decode()} data: {err}") from None
    if len(data) > limit:
        raise too_large(limit)
    if not inflater.eof:
        raise RequestError(f"{encoding.decode()} body is truncated")
    return data
