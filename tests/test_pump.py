"""The relay loop on its own: heartbeats at event boundaries only, and its timers."""

from __future__ import annotations

import asyncio
import time
from unittest.mock import Mock

import aiohttp
import pytest

from proxy.asgi import Message
from proxy.pump import Heartbeat, StreamTimeout, pump
from proxy.usage import UsageTap

pytestmark = pytest.mark.timeout(10)


def _reader() -> aiohttp.StreamReader:
    # The protocol only matters for flow control, which these small feeds never trigger.
    return aiohttp.StreamReader(Mock(), 2**16, loop=asyncio.get_running_loop())


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


def _tap() -> UsageTap:
    return UsageTap("openai", b"text/event-stream", None)


async def _feed_later(reader: aiohttp.StreamReader, steps: list[tuple[float, bytes | None]]) -> None:
    for delay, data in steps:
        await asyncio.sleep(delay)
        if data is None:
            reader.feed_eof()
        else:
            reader.feed_data(data)


async def test_heartbeats_wait_for_the_end_of_the_event() -> None:
    reader, send = _reader(), Recorder()
    feeder = asyncio.create_task(
        _feed_later(reader, [(0, b'data: {"a":'), (0.35, b"1}\n\n"), (0.35, b"data: 2\n\n"), (0, None)])
    )
    await pump(reader, send, _tap(), idle=5, deadline=None, heartbeat=Heartbeat("comment", 0.1))
    await feeder
    assert send.data.startswith(b'data: {"a":1}\n\n')  # nothing came between the halves of the event
    assert send.data.count(b": keepalive\n\n") >= 2  # but several during the later silence
    assert send.data.replace(b": keepalive\n\n", b"") == b'data: {"a":1}\n\ndata: 2\n\n'


async def test_heartbeats_before_the_first_event_and_in_the_streams_line_ending() -> None:
    reader, send = _reader(), Recorder()
    feeder = asyncio.create_task(
        _feed_later(reader, [(0.25, b"data: 1\r\n\r\n"), (0.25, b"data: 2\r\n\r\n"), (0, None)])
    )
    await pump(reader, send, _tap(), idle=5, deadline=None, heartbeat=Heartbeat("blank", 0.1))
    await feeder
    first_event = send.data.index(b"data: 1")
    assert set(send.data[:first_event].split(b"\n")) == {b""}  # LF blanks before anything was seen
    after = send.data[send.data.index(b"data: 1\r\n\r\n") + 11 : send.data.index(b"data: 2")]
    assert after and after.replace(b"\r\n", b"") == b""  # CRLF blanks once the stream showed CRLF


async def test_no_heartbeat_when_disabled_and_idle_timeout_aborts() -> None:
    reader, send = _reader(), Recorder()
    reader.feed_data(b"data: 1\n\n")
    started = time.monotonic()
    with pytest.raises(StreamTimeout) as info:
        await pump(reader, send, _tap(), idle=0.3, deadline=None, heartbeat=None)
    assert info.value.kind == "idle_timeout"
    assert 0.25 < time.monotonic() - started < 1.0
    assert send.data == b"data: 1\n\n"


async def test_heartbeats_do_not_count_as_upstream_activity() -> None:
    reader, send = _reader(), Recorder()
    with pytest.raises(StreamTimeout) as info:
        await pump(reader, send, _tap(), idle=0.5, deadline=None, heartbeat=Heartbeat("comment", 0.1))
    assert info.value.kind == "idle_timeout"
    assert len(send.sent) >= 3


async def test_deadline_stops_a_trickling_upstream() -> None:
    reader, send = _reader(), Recorder()
    steps: list[tuple[float, bytes | None]] = [(0.1, b"data: x\n\n")] * 30
    feeder = asyncio.create_task(_feed_later(reader, steps))
    loop = asyncio.get_running_loop()
    with pytest.raises(StreamTimeout) as info:
        await pump(reader, send, _tap(), idle=5, deadline=loop.time() + 0.5, heartbeat=None)
    feeder.cancel()
    assert info.value.kind == "deadline"
    assert 2 <= len(send.sent) <= 6


async def test_a_slow_client_is_backpressure_not_upstream_silence() -> None:
    """While the client takes 0.3 s per chunk, an idle timeout of 0.2 s must not fire."""
    reader, send = _reader(), Recorder(delay=0.3)
    for i in range(3):
        reader.feed_data(b"data: %d\n\n" % i)
    reader.feed_eof()
    await pump(reader, send, _tap(), idle=0.2, deadline=None, heartbeat=Heartbeat("comment", 0.1))
    assert send.data == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
