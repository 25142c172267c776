"""A small ASGI driver: call the app in-process with a scope, a receive and a send."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from pomona.runtime.serve.app import InferenceApp


class Answer:
    """What the app sent for one request."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = messages
        start = [m for m in messages if m["type"] == "http.response.start"]
        self.status: int | None = start[0]["status"] if start else None
        self.headers = {
            key.decode(): value.decode() for key, value in (start[0]["headers"] if start else [])
        }
        self.body = b"".join(
            m.get("body", b"") for m in messages if m["type"] == "http.response.body"
        )


async def call_async(
    app: InferenceApp,
    method: str,
    path: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """Send one request; a body given as an iterable of chunks arrives in that many messages."""
    head = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if isinstance(body, bytes | None):
        chunks = [body or b""]
        if body is not None and "content-length" not in {k.lower() for k in headers or {}}:
            head.append((b"content-length", str(len(body)).encode()))
    else:
        chunks = list(body) or [b""]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": head,
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8000),
    }
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return Answer(sent)


def call(app: InferenceApp, *request: Any) -> Answer:
    """:func:`call_async` (same arguments) on an event loop of its own."""
    return asyncio.run(call_async(app, *request))
