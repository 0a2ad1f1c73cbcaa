"""The relay loop on its own: heartbeats at event boundaries only, and its timers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.asgi import Message
from proxy.http import Origin
from proxy.http.h1client import ConnectionPool, Response
from proxy.pump import Heartbeat, StreamTimeout, pump
from proxy.usage import UsageTap

pytestmark = pytest.mark.timeout(10)

Steps = list[tuple[float, bytes | None]]  # (delay, chunk); None ends the body


@contextlib.asynccontextmanager
async def upstream(steps: Steps) -> AsyncIterator[Response]:
    """A real loopback upstream writing one chunked event stream, a chunk per step.

    Yields the response as the passthrough's client reads it. Without a final
    ``None`` step the stream stays open (a silent upstream).
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        for delay, data in steps:
            await asyncio.sleep(delay)
            writer.write(b"0\r\n\r\n" if data is None else b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()  # hold the connection until the client closes it

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    pool = ConnectionPool(connect_timeout=5)
    try:
        port = server.sockets[0].getsockname()[1]
        response = await pool.request(Origin("http", "127.0.0.1", port), "GET", b"/stream", [])
        yield response
        response.close()
    finally:
        await pool.close()
        server.close()


class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.sent: list[tuple[float, bytes]] = []
        self.delay = delay

    async def __call__(self, message: Message) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)  # a slow client
        self.sent.append((time.monotonic(), message["body"]))

    @property
    def data(self) -> bytes:
        return b"".join(body for _, body in self.sent)


async def relay(body: Response, send: Recorder, tap: UsageTap, **kwargs: Any) -> None:
    """The pump, then the final message with the body's last piece, as the passthrough does."""
    tail = await pump(body, send, tap, **kwargs)
    await send({"type": "http.response.body", "body": tail, "more_body": False})


def _tap() -> UsageTap:
    return UsageTap("openai", b"text/event-stream", None)


async def test_heartbeats_wait_for_the_end_of_the_event() -> None:
    send = Recorder()
    steps: Steps = [(0, b'data: {"a":'), (0.35, b"1}\n\n"), (0.35, b"data: 2\n\n"), (0, None)]
    async with upstream(steps) as body:
        await relay(body, send, _tap(), idle=5, deadline=None, heartbeat=Heartbeat("comment", 0.1))
    assert send.data.startswith(b'data: {"a":1}\n\n')  # nothing came between the halves of the event
    assert send.data.count(b": keepalive\n\n") >= 2  # but several during the later silence
    assert send.data.replace(b": keepalive\n\n", b"") == b'data: {"a":1}\n\ndata: 2\n\n'


async def test_heartbeats_before_the_first_event_and_in_the_streams_line_ending() -> None:
    send = Recorder()
    steps: Steps = [(0.25, b"data: 1\r\n\r\n"), (0.25, b"data: 2\r\n\r\n"), (0, None)]
    async with upstream(steps) as body:
        await relay(body, send, _tap(), idle=5, deadline=None, heartbeat=Heartbeat("blank", 0.1))
    first_event = send.data.index(b"data: 1")
    assert set(send.data[:first_event].split(b"\n")) == {b""}  # LF blanks before anything was seen
    after = send.data[send.data.index(b"data: 1\r\n\r\n") + 11 : send.data.index(b"data: 2")]
    assert after and after.replace(b"\r\n", b"") == b""  # CRLF blanks once the stream showed CRLF


async def test_no_heartbeat_when_disabled_and_idle_timeout_aborts() -> None:
    send = Recorder()
    async with upstream([(0, b"data: 1\n\n")]) as body:
        started = time.monotonic()
        with pytest.raises(StreamTimeout) as info:
            await relay(body, send, _tap(), idle=0.3, deadline=None, heartbeat=None)
    assert info.value.kind == "idle_timeout"
    assert 0.25 < time.monotonic() - started < 1.0
    assert send.data == b"data: 1\n\n"


async def test_heartbeats_do_not_count_as_upstream_activity() -> None:
    send = Recorder()
    async with upstream([]) as body:
        with pytest.raises(StreamTimeout) as info:
            await relay(body, send, _tap(), idle=0.5, deadline=None, heartbeat=Heartbeat("comment", 0.1))
    assert info.value.kind == "idle_timeout"
    assert len(send.sent) >= 3


async def test_deadline_stops_a_trickling_upstream() -> None:
    send = Recorder()
    loop = asyncio.get_running_loop()
    async with upstream([(0.1, b"data: x\n\n")] * 30) as body:
        with pytest.raises(StreamTimeout) as info:
            await relay(body, send, _tap(), idle=5, deadline=loop.time() + 0.5, heartbeat=None)
    assert info.value.kind == "deadline"
    assert 2 <= len(send.sent) <= 6


async def test_a_slow_client_is_backpressure_not_upstream_silence() -> None:
    """While the client takes 0.3 s per chunk, an idle timeout of 0.2 s must not fire."""
    send = Recorder(delay=0.3)
    steps: Steps = [(0.05, b"data: %d\n\n" % i) for i in range(3)] + [(0, None)]
    async with upstream(steps) as body:
        await relay(body, send, _tap(), idle=0.2, deadline=None, heartbeat=Heartbeat("comment", 0.1))
    assert send.data == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
