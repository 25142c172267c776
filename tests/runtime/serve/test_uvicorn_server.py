"""The coalescing transport under ``pomona serve``: what it sends, when, and in what order."""

from __future__ import annotations

import asyncio
from typing import Any

from pomona.runtime.serve.uvicorn_server import (
    CoalescingTransport,
    http_protocol,
    uvicorn_options,
)
from tests.conftest import needs

needs("httptools")  # the coalescing protocol runs on httptools


class Recorder(asyncio.Transport):
    """A transport that records the calls the coalescing transport makes on it."""

    def __init__(self) -> None:
        super().__init__({"peername": ("127.0.0.1", 1234)})
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, list_of_data: Any) -> None:
        self.calls.append(("writelines", [bytes(d) for d in list_of_data]))

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", None))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 7


def run(body: Any) -> Any:
    async def main() -> Any:
        return await body(asyncio.get_running_loop())

    return asyncio.run(main())


def test_writes_of_one_callback_go_out_in_one_call_at_its_end() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        real = Recorder()
        transport = CoalescingTransport(real, loop)
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.write(b"")  # nothing to send: no call
        transport.write(memoryview(b"body"))
        assert real.calls == []
        assert transport.get_write_buffer_size() == 7 + 19 + 4
        await asyncio.sleep(0)
        assert real.calls == [("writelines", [b"HTTP/1.1 200 OK\r\n\r\n", b"body"])]
        transport.write(b"next")
        await asyncio.sleep(0)
        assert real.calls[1:] == [("write", b"next")]
        await asyncio.sleep(0)
        assert len(real.calls) == 2  # a flush with nothing pending does nothing

    run(body)


def test_close_sends_what_is_pending_first_and_abort_drops_it() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        real = Recorder()
        transport = CoalescingTransport(real, loop)
        transport.write(b"a")
        transport.write(b"b")
        transport.close()
        assert real.calls == [("writelines", [b"a", b"b"]), ("close", None)]
        assert transport.is_closing()
        transport.write(b"late")  # the peer is gone: dropped, as by a closed transport
        await asyncio.sleep(0)
        assert real.calls[2:] == []

        real = Recorder()
        transport = CoalescingTransport(real, loop)
        transport.write(b"a")
        transport.abort()
        await asyncio.sleep(0)
        assert real.calls == [("abort", None)]

    run(body)


def test_everything_else_is_the_real_transports() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        real = Recorder()
        transport = CoalescingTransport(real, loop)
        assert transport.get_extra_info("peername") == ("127.0.0.1", 1234)
        assert transport.get_extra_info("socket", "none") == "none"

    run(body)


def test_pomona_serve_runs_the_coalescing_protocol() -> None:
    from pomona.runtime.serve.uvicorn_protocol import GuardedHttpToolsProtocol

    protocol = uvicorn_options(host="127.0.0.1", port=1)["http"]
    assert protocol is GuardedHttpToolsProtocol is http_protocol()


class HalfCloser(Recorder):
    """A recorder whose transport can shut its write side, as TCP transports can."""

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.calls.append(("write_eof", None))

    def resume_reading(self) -> None:
        self.calls.append(("resume_reading", None))


def test_close_with_unread_input_lingers_then_closes() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        real = HalfCloser()
        transport = CoalescingTransport(real, loop)
        transport.linger_seconds = 0.01
        transport.unread_input = True
        transport.write(b"HTTP/1.1 413 \r\n\r\n")
        transport.close()
        # The answer goes out and the write side is shut; reading goes on until the peer
        # closes or the linger time passes.
        assert real.calls == [
            ("write", b"HTTP/1.1 413 \r\n\r\n"),
            ("write_eof", None),
            ("resume_reading", None),
        ]
        assert transport.lingering and transport.is_closing()
        while transport.lingering:
            await asyncio.sleep(0.01)
        assert real.calls[-1] == ("close", None)

        real = HalfCloser()
        transport = CoalescingTransport(real, loop)
        transport.linger_seconds = 60.0
        transport.unread_input = True
        transport.close()
        transport.close()  # closed again while lingering (the peer closed): now
        assert real.calls[-1] == ("close", None) and not transport.lingering

        real = HalfCloser()
        transport = CoalescingTransport(real, loop)
        transport.linger_seconds = 60.0
        transport.close()  # the request was read whole: a plain close
        assert real.calls == [("close", None)]

    run(body)
