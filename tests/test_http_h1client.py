"""What only the fast client (:class:`ConnectionPool`) promises, against real loopback upstreams.

The upstream client contract, which both clients keep, is tested in
``tests/test_http_client.py`` through the fast client too. Here are the fast
client's own numbers and machinery: its flow control (``HIGH_WATER``), its
head limit (``MAX_HEADER_BYTES``), its address list and DNS cache, and its idle
sweeper. The upstreams are those of ``tests/scripted_upstream.py``: real
sockets on 127.0.0.1, nothing of the client mocked.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from proxy.http import ResponseBroken
from proxy.http.h1client import HIGH_WATER, MAX_HEADER_BYTES, ConnectionPool
from tests.scripted_upstream import (
    Peer,
    answer_each,
    answer_first_with,
    eventually,
    hanging_listener,
    ok,
    read_all,
    serve,
)

pytestmark = pytest.mark.timeout(10)

ONE_SOCKET_READ = 256 * 1024  # the most an asyncio socket transport reads at once


# 1. Flow control: reading from the upstream pauses past HIGH_WATER unread bytes.


async def test_unread_body_bytes_stay_within_high_water_and_one_socket_read() -> None:
    size = 16 * 1024 * 1024

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + b"x" * size)

    pool = ConnectionPool(connect_timeout=5)
    async with serve("fast", handler, client=pool) as upstream:
        response = await pool.request(upstream.origin, "GET", b"/", [])
        peak = 0
        for _ in range(60):  # 0.6 s without reading
            await asyncio.sleep(0.01)
            peak = max(peak, response._buffered)
        assert HIGH_WATER < peak <= HIGH_WATER + ONE_SOCKET_READ
        received = 0
        while piece := await response.read():
            assert response._buffered == 0  # a read hands over all that was buffered
            assert len(piece) <= HIGH_WATER + ONE_SOCKET_READ
            received += len(piece)
        assert received == size


async def test_a_connection_whose_response_ended_while_reading_was_paused_is_reused() -> None:
    """The last piece of a body takes the buffer over HIGH_WATER: reading pauses, then the body ends.

    The connection goes back to the pool; it must not stay paused there, or the
    next request on it never sees its response.
    """
    first_part = HIGH_WATER - 1000
    last_part = 8000
    first_part_in = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (first_part + last_part))
        await peer.send(b"a" * first_part)
        await first_part_in.wait()  # all of it in the client's buffer, nothing read yet
        await peer.send(b"b" * last_part)
        await answer_each(peer)

    pool = ConnectionPool(connect_timeout=5)
    async with serve("fast", handler, client=pool) as upstream:
        response = await pool.request(upstream.origin, "GET", b"/", [])
        await eventually(lambda: response._buffered == first_part)
        first_part_in.set()
        await eventually(lambda: response._buffered == first_part + last_part)  # all in, nobody read
        assert await read_all(response) == b"a" * first_part + b"b" * last_part
        assert pool.idle_count(upstream.origin) == 1
        async with asyncio.timeout(3):
            _, again = await upstream.get(b"/again")
        assert again == b"/again"
        assert pool.opened == 1


# 2. The head's limit: MAX_HEADER_BYTES.


@pytest.mark.parametrize("shape", ["one-long-header", "many-headers"])
async def test_oversized_response_headers_are_broken(shape: str) -> None:
    if shape == "one-long-header":
        headers = b"x-long: " + b"v" * (MAX_HEADER_BYTES + 1) + b"\r\n"
    else:
        headers = b"".join(b"x-trace-%05d: %s\r\n" % (i, b"t" * 40) for i in range(MAX_HEADER_BYTES // 40))
    left = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\n" + headers + b"content-length: 2\r\n\r\nok")
        await peer.client_left()
        left.set()

    pool = ConnectionPool(connect_timeout=5)
    async with serve("fast", handler, client=pool) as upstream:
        with pytest.raises(ResponseBroken):
            await pool.request(upstream.origin, "GET", b"/", [])
        async with asyncio.timeout(3):
            await left.wait()


async def test_headers_just_under_the_limit_are_fine() -> None:
    value = b"v" * (MAX_HEADER_BYTES - 1000)

    async with serve("fast", answer_first_with(ok(b"ok", b"x-long: " + value))) as upstream:
        response, body = await upstream.get()
        assert response.header(b"x-long") == value
        assert body == b"ok"


async def test_a_header_that_never_ends_is_refused_past_the_limit() -> None:
    sent = 0

    async def handler(peer: Peer) -> None:
        nonlocal sent
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nx-endless: ")
        with contextlib.suppress(ConnectionError):
            while sent < 32 * MAX_HEADER_BYTES:  # 2 MiB of one header value, never a line break
                await peer.send(b"v" * 65536)
                sent += 65536
                await asyncio.sleep(0.001)
            await asyncio.Event().wait()  # then silence, the connection held open

    pool = ConnectionPool(connect_timeout=5)
    async with serve("fast", handler, client=pool) as upstream:
        with pytest.raises(ResponseBroken):
            async with asyncio.timeout(2):  # a TimeoutError here: the client was still buffering the head
                await pool.request(upstream.origin, "GET", b"/", [])
        assert sent < 8 * MAX_HEADER_BYTES  # it stopped taking the head in soon after the limit


# 3. Connecting: each address in turn, with its share of the connect timeout.


async def test_addresses_are_tried_in_turn_and_the_one_that_answered_stays_first() -> None:
    """No Happy Eyeballs in uvloop: a dead first address (say, broken IPv6) costs once per DNS answer."""
    resolved: list[int] = []
    port = 0

    async def resolve(host: str, _port: int) -> list[tuple[str, int]]:
        resolved.append(1)
        return [("127.0.0.2", port), ("127.0.0.1", port)]  # the server listens on 127.0.0.1 only

    pool = ConnectionPool(connect_timeout=5, resolve=resolve)
    async with serve("fast", answer_each, client=pool) as upstream:
        port = upstream.origin.port
        await upstream.get()
        assert pool.opened == 1  # the refused attempt on 127.0.0.2 is not a connection made
        await pool.close()  # drops the kept-alive connection; the DNS answer stays
        await upstream.get()  # a new connection: the answering address is tried first now
        assert pool.opened == 2
        assert pool._dns[upstream.origin][1][0] == ("127.0.0.1", port)
        assert len(resolved) == 1  # the answer is cached


async def test_a_hanging_address_gets_only_its_share_of_the_connect_timeout() -> None:
    with hanging_listener("127.0.0.2") as hanging:
        port = 0

        async def resolve(host: str, _port: int) -> list[tuple[str, int]]:
            return [hanging, ("127.0.0.1", port)]

        pool = ConnectionPool(connect_timeout=1.0, resolve=resolve)
        async with serve("fast", answer_each, client=pool) as upstream:
            port = upstream.origin.port
            loop = asyncio.get_running_loop()
            started = loop.time()
            _, body = await upstream.get(b"/after-a-hang")
            assert body == b"/after-a-hang"
            assert 0.4 < loop.time() - started < 1.0  # half the timeout on the hanging address


# 4. The idle sweeper.


async def test_a_connection_in_use_is_not_closed_by_the_idle_sweep() -> None:
    pool = ConnectionPool(connect_timeout=5, idle_timeout=1.0)
    async with serve("fast", answer_each, client=pool) as upstream:
        for i in range(10):  # reused every 0.2 s, across several sweeps: never idle for 1 s
            _, body = await upstream.get(b"/%d" % i)
            assert body == b"/%d" % i
            await asyncio.sleep(0.2)
        assert pool.opened == 1
