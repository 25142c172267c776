"""The connection under ``pomona serve``: uvicorn's httptools protocol, coalesced and guarded.

:class:`CoalescingTransport`: uvicorn writes a response's status line and headers when
the application sends ``http.response.start`` and its body on ``http.response.body``:
two ``write`` calls, and with ``TCP_NODELAY`` two TCP segments. On a model that answers
in microseconds the second send is a large share of a request's cost: sending both at
once cut the server's CPU time per one-row request by about a third. The transport holds
what the protocol writes during one event-loop callback and hands it to the real
transport at once, in one ``writelines`` (one ``writev`` on uvloop), as soon as that
callback returns. Only the order of the loop's work changes: every byte goes out in the
order written, no later than the loop's next turn, and before the transport closes.

:class:`GuardedHttpToolsProtocol` adds what uvicorn leaves to a proxy in front of it, so
that slow or hostile clients cannot stall the server (:class:`Limits`):

- a request head must arrive whole within ``header_timeout`` of the connection opening
  or of its first byte (a connection that sends nothing is closed, one that sends its
  head a byte at a time gets 408); an idle keep-alive connection closes after uvicorn's
  ``timeout_keep_alive``;
- a head larger than ``max_header_size`` gets 431 (httptools would otherwise collect it
  whole, at a cost that grows with the square of its size);
- a body that stops arriving for ``body_timeout`` gets 408, and on shutdown a body still
  incomplete after ``graceful_timeout`` gets 503: the application sees the stall
  through :data:`STALLED` in the request's scope (see :mod:`.body`);
- past ``max_connections`` open connections, a new one closes the connection idle the
  longest (no request running); with none idle, requests get uvicorn's 503;
- a connection closed before its request was read whole closes in two steps (a
  lingering close, as nginx does): the response is sent and the write side shut, then
  what the client still sends is read and dropped until it closes or ``linger`` passes.
  A client that sends its whole body before reading (Python's ``urllib``) so reads its
  413 rather than a reset connection.

Without httptools the server runs on uvicorn's own h11 protocol, with only uvicorn's
limits (its keep-alive timeout, ``h11_max_incomplete_event_size`` for the head).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import orjson

from pomona.runtime.serve.body import STALLED

try:
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
except ImportError:  # no httptools: uvicorn's h11 protocol, as it is
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

__all__ = ["CoalescingTransport", "Limits", "default_max_connections", "http_protocol"]

#: Descriptors kept free for the model, logs and the listening socket.
_RESERVED_FDS = 64
#: The connection cap where the descriptor limit is unknown or unlimited.
_NO_LIMIT = 10_000
#: How long a lingering close waits while the server shuts down.
_SHUTDOWN_LINGER = 0.5


def default_max_connections() -> int:
    """Open connections a process can hold: its descriptor limit, less a reserve."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows: no descriptor limit to read
        return _NO_LIMIT
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return _NO_LIMIT
    return max(16, soft - _RESERVED_FDS)


@dataclasses.dataclass(frozen=True)
class Limits:
    """How long and how much a client may take; travels to worker processes on the config."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    graceful_timeout: float = 5.0
    max_header_size: int = 65536
    max_connections: int = dataclasses.field(default_factory=default_max_connections)
    linger: float = 5.0


class CoalescingTransport(asyncio.Transport):
    """A transport that sends what is written during one loop callback in one call."""

    __slots__ = ("_linger", "_loop", "_pending", "_transport", "linger_seconds", "unread_input")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes | bytearray | memoryview] = []
        self._linger: asyncio.TimerHandle | None = None
        #: Set by the protocol while a request is not read whole: close lingers then.
        self.unread_input = False
        self.linger_seconds = 0.0

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

    @property
    def lingering(self) -> bool:
        """Whether the write side is shut and input is being dropped until the peer closes."""
        return self._linger is not None

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
        """Close; with input still unread, send what is written and linger (see module)."""
        self.flush()
        if self._linger is not None:  # closed again while lingering: now
            self._linger.cancel()
            self._linger = None
        elif (
            self.unread_input
            and self.linger_seconds > 0
            and not self._transport.is_closing()
            and self._transport.can_write_eof()
        ):
            self._transport.write_eof()
            self._transport.resume_reading()  # reading may be paused on a full body buffer
            self._linger = self._loop.call_later(self.linger_seconds, self.close)
            return
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._linger is not None or self._transport.is_closing()

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

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol through a :class:`CoalescingTransport`, with limits."""

        transport: CoalescingTransport

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.limits: Limits = getattr(self.config, "pomona_limits", None) or Limits()
            self._head_open = False
            self._head_bytes = 0
            self._body_open = False
            self._last_data = 0.0
            self._timer: asyncio.TimerHandle | None = None
            self._stopping = False

        # -- connections ---------------------------------------------------------------------

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= self.limits.max_connections:
                _close_longest_idle(self.connections)
            coalescing = CoalescingTransport(transport, self.loop)
            coalescing.linger_seconds = self.limits.linger
            super().connection_made(coalescing)
            self._last_data = self.loop.time()
            self._arm(self.limits.header_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.transport.lingering:
                return  # a lingering close: input is dropped until the peer closes
            self._last_data = self.loop.time()
            was_open = self._head_open
            super().data_received(data)
            if was_open and self._head_open:
                self._head_bytes += len(data)
                if self._head_bytes > self.limits.max_header_size and not self._closing():
                    limit = self.limits.max_header_size
                    self._refuse(431, f"request head exceeds the limit of {limit} bytes")
                    return
            # A request read whole in one chunk (the common case) arms no timer at all.
            if self._timer is None and (self._head_open or self._body_open):
                limits = self.limits
                if not self._closing():
                    self._arm(limits.header_timeout if self._head_open else limits.body_timeout)

        # -- parser callbacks ----------------------------------------------------------------

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_open = True
            self._head_bytes = 0
            self.transport.unread_input = True

        def on_headers_complete(self) -> None:
            self._head_open = False
            self._body_open = True
            if self._timer is not None:
                self._disarm()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._body_open = False
            self.transport.unread_input = False
            if self._timer is not None:
                self._disarm()
            super().on_message_complete()

        def shutdown(self) -> None:
            self._stopping = True
            self.transport.linger_seconds = min(self.transport.linger_seconds, _SHUTDOWN_LINGER)
            super().shutdown()
            if self._body_open and not self.transport.is_closing():
                self._arm(self.limits.graceful_timeout)

        # -- timers --------------------------------------------------------------------------

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._on_timer, seconds)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _on_timer(self, seconds: float) -> None:
            self._timer = None
            if self._closing():
                return
            if self._body_open:
                idle = self.loop.time() - self._last_data
                if not self._stopping and idle < seconds:  # data came: wait the rest
                    self._timer = self.loop.call_later(seconds - idle, self._on_timer, seconds)
                    return
                self._stall(503 if self._stopping else 408, seconds)
            elif self._head_open:
                self._refuse(408, f"request head not received within {seconds:g} s")
            elif self.cycle is None or self.cycle.response_complete:
                self.transport.close()  # idle: nothing was asked

        def _stall(self, status: int, seconds: float) -> None:
            """Wake the application waiting for a body that stopped arriving."""
            cycle = self.cycle
            if cycle is None or cycle.response_started:
                self.transport.close()
                return
            cycle.keep_alive = False
            cycle.scope[STALLED] = (status, seconds)  # type: ignore[literal-required]
            cycle.message_event.set()

        def _refuse(self, status: int, message: str) -> None:
            """Answer ``status`` before the application has the request, and close."""
            self._head_open = False
            if self.cycle is not None and not self.cycle.response_complete:
                self.transport.close()  # an earlier request is being answered: just close
                return
            body = orjson.dumps({"error": message})
            self.transport.write(
                b"".join(
                    [
                        STATUS_LINE[status],
                        b"content-type: application/json\r\n",
                        b"content-length: %d\r\n" % len(body),
                        b"connection: close\r\n\r\n",
                        body,
                    ]
                )
            )
            self.transport.close()

        def _closing(self) -> bool:
            return self.transport is None or self.transport.is_closing()

    def _close_longest_idle(connections: set[Any]) -> None:
        """Close the connection that has waited longest without a request running."""
        victim = None
        for conn in connections:
            cycle = getattr(conn, "cycle", None)
            if cycle is not None and not cycle.response_complete:
                continue
            if victim is None or getattr(conn, "_last_data", 0.0) < victim._last_data:
                victim = conn
        if victim is not None:
            connections.discard(victim)  # now: its connection_lost comes a loop turn later
            victim.transport.unread_input = False  # nothing it sent is owed an answer
            victim.transport.close()


def http_protocol() -> type[asyncio.Protocol] | str:
    """uvicorn's ``http`` setting: the guarded httptools protocol, or ``"auto"`` without it."""
    if HttpToolsProtocol is None:
        return "auto"
    return GuardedHttpToolsProtocol
