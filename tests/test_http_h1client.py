"""The lean HTTP/1.1 client against real loopback servers: each guarantee of its docstring.

Every server here is a real socket on 127.0.0.1 (``asyncio.start_server`` or a
raw listening socket); nothing of the client is mocked. The servers record
exactly what they received, per connection, and whether the client's side of
a connection went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ipaddress
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.http import ConnectFailed, Origin, ResponseBroken, UpstreamError
from proxy.http.h1client import HIGH_WATER, MAX_HEADER_BYTES, ConnectionPool, Response

pytestmark = pytest.mark.timeout(10)

ONE_SOCKET_READ = 256 * 1024  # the most an asyncio socket transport reads at once


# A scripted loopback upstream.


@dataclass
class Request:
    head: bytes  # request line and headers, through the blank line
    body: bytes  # de-chunked
    raw: bytes  # exactly the bytes received for this request

    @property
    def target(self) -> bytes:
        return self.head.split(b" ", 2)[1]

    def header(self, name: bytes) -> bytes | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name:
                return value.strip()
        return None


class Peer:
    """The server's side of one connection."""

    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.index = index
        self.reader = reader
        self.writer = writer
        self.requests: list[Request] = []
        self.got_request = asyncio.Event()

    async def request(self) -> Request | None:
        """The next request, or ``None`` if the client closed the connection first."""
        head = await self.read_head()
        return None if head is None else await self.read_body(head)

    async def read_head(self) -> bytes | None:
        try:
            return await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return None
        except ConnectionError:
            return None

    async def read_body(self, head: bytes) -> Request:
        """The body of the request whose head was read (de-chunked), and the request recorded."""
        reader = self.reader
        raw, body = [head], []
        request = Request(head, b"", b"")
        length = request.header(b"content-length")
        if length is not None:
            raw.append(await reader.readexactly(int(length)))
            body = raw[1:]
        elif (request.header(b"transfer-encoding") or b"").lower() == b"chunked":
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                data = await reader.readexactly(size + 2)
                assert data.endswith(b"\r\n"), data[-20:]
                raw += (size_line, data)
                if size == 0:
                    break
                body.append(data[:-2])
        request = Request(head, b"".join(body), b"".join(raw))
        self.requests.append(request)
        self.got_request.set()
        return request

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()

    def reset(self) -> None:
        """Close with a TCP reset instead of a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.writer.transport.abort()

    async def client_left(self, timeout: float = 3.0) -> bytes:
        """Wait until the client's side of the connection is gone; return what it sent meanwhile.

        Raises TimeoutError if the client keeps the connection open.
        """
        extra = b""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    data = await self.reader.read(65536)
                except ConnectionError:
                    return extra
                if not data:
                    return extra
                extra += data


Handler = Callable[[Peer], Awaitable[None]]


@dataclass
class Upstream:
    origin: Origin
    pool: ConnectionPool
    peers: list[Peer] = field(default_factory=list)
    server: asyncio.Server | None = None
    errors: list[BaseException] = field(default_factory=list)

    @property
    def requests(self) -> list[Request]:
        return [request for peer in self.peers for request in peer.requests]

    async def peer(self, index: int) -> Peer:
        await eventually(lambda: len(self.peers) > index)
        return self.peers[index]


async def eventually(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """Wait until ``condition()`` holds (a TimeoutError if it does not within ``timeout``)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def serve(
    handler: Handler, *, tls: ssl.SSLContext | None = None, pool: ConnectionPool | None = None
) -> AsyncIterator[Upstream]:
    """A loopback upstream running ``handler`` for each connection, and a pool to reach it.

    A handler failing fails the test (unless the test expects the client to
    have gone, which handlers express by catching ConnectionError themselves).
    """
    tasks: set[asyncio.Task[None]] = set()
    upstream: Upstream

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        peer = Peer(len(upstream.peers), reader, writer)
        upstream.peers.append(peer)
        try:
            await handler(peer)
        except asyncio.CancelledError:
            pass  # the test is over (a cancelled handler task would be logged as an error)
        except BaseException as exc:
            upstream.errors.append(exc)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    pool = pool or ConnectionPool(connect_timeout=5)
    upstream = Upstream(Origin("https" if tls else "http", "127.0.0.1", port), pool, server=server)
    try:
        yield upstream
    finally:
        await pool.close()
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if upstream.errors:
        raise upstream.errors[0]


def ok(body: bytes = b"ok", *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n" % len(body)
    return head + b"".join(line + b"\r\n" for line in extra) + b"\r\n" + body


async def answer_each(peer: Peer) -> None:
    """Answer every request on the connection with its own target as the body, kept alive."""
    while (request := await peer.request()) is not None:
        await peer.send(ok(request.target))


async def read_all(response: Response) -> bytes:
    data = b""
    while piece := await response.read():
        data += piece
    return data


async def read_until_broken(response: Response) -> tuple[bytes, ResponseBroken]:
    """Read until the body fails; a clean end (``b""``) fails the test."""
    data = b""
    while True:
        try:
            piece = await response.read()
        except ResponseBroken as exc:
            return data, exc
        assert piece, f"a cut-short body ended cleanly after {len(data)} bytes"
        data += piece


async def get(upstream: Upstream, target: bytes = b"/") -> tuple[Response, bytes]:
    """A GET and its whole body."""
    response = await upstream.pool.request(upstream.origin, "GET", target, [])
    return response, await read_all(response)


# 1. The request on the wire, and keep-alive.


async def test_requests_go_out_byte_for_byte_on_one_kept_alive_connection() -> None:
    async with serve(answer_each) as upstream:
        pool, origin = upstream.pool, upstream.origin
        host = b"127.0.0.1:%d" % origin.port
        headers = [
            (b"X-Custom", b"  Mixed Case\tvalue "),
            (b"authorization", b"Bearer sk-test"),
            (b"x-dup", b"1"),
            (b"x-dup", b"2"),
        ]
        first = await pool.request(origin, "GET", b"/v1/models?limit=2&x=%2F", headers)
        assert (first.status, await read_all(first)) == (200, b"/v1/models?limit=2&x=%2F")
        body = b'{"model": "m", "messages": []}'
        post = await pool.request(origin, "POST", b"/v1/chat", [(b"content-type", b"application/json")], body)
        assert await read_all(post) == b"/v1/chat"
        empty_post = await pool.request(origin, "POST", b"/empty", [])
        assert await read_all(empty_post) == b"/empty"
        empty_get = await pool.request(origin, "GET", b"/e", [], b"")
        assert await read_all(empty_get) == b"/e"
        delete = await pool.request(origin, "DELETE", b"/d", [], b"{}")
        assert await read_all(delete) == b"/d"

        assert pool.opened == 1
        assert len(upstream.peers) == 1
        assert pool.idle_count(origin) == 1
        raw = [request.raw for request in upstream.requests]
    assert raw == [
        b"GET /v1/models?limit=2&x=%2F HTTP/1.1\r\nhost: " + host + b"\r\n"
        b"X-Custom:   Mixed Case\tvalue \r\nauthorization: Bearer sk-test\r\nx-dup: 1\r\nx-dup: 2\r\n\r\n",
        b"POST /v1/chat HTTP/1.1\r\nhost: " + host + b"\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(body) + body,
        b"POST /empty HTTP/1.1\r\nhost: " + host + b"\r\ncontent-length: 0\r\n\r\n",
        b"GET /e HTTP/1.1\r\nhost: " + host + b"\r\n\r\n",
        b"DELETE /d HTTP/1.1\r\nhost: " + host + b"\r\ncontent-length: 2\r\n\r\n{}",
    ]


def test_host_header_leaves_out_the_default_port_and_brackets_ipv6() -> None:
    assert Origin("http", "127.0.0.1", 80).host_header == b"127.0.0.1"
    assert Origin("https", "api.example.com", 443).host_header == b"api.example.com"
    assert Origin("http", "api.example.com", 443).host_header == b"api.example.com:443"
    assert Origin("https", "::1", 8443).host_header == b"[::1]:8443"


async def test_response_status_and_headers_as_sent_names_lowercased() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(
            b"HTTP/1.1 429 Too Many Requests\r\nX-RateLimit-Remaining: 0\r\nSet-Cookie: a=1\r\n"
            b"Set-Cookie: b=2\r\nContent-Length: 4\r\n\r\nslow"
        )
        await peer.request()

    async with serve(handler) as upstream:
        response, body = await get(upstream)
    assert response.status == 429
    assert response.headers == [
        (b"x-ratelimit-remaining", b"0"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"content-length", b"4"),
    ]
    assert response.header(b"set-cookie") == b"a=1"
    assert response.header(b"absent") is None
    assert body == b"slow"
    assert response.complete


# 2. When a connection is not reused.


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok", id="connection-close"
        ),
        pytest.param(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", id="http-1.0"),
    ],
)
async def test_connection_not_reused_when_the_upstream_does_not_keep_it_alive(answer: bytes) -> None:
    left: list[bool] = []

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer)
        # The server keeps its side open: the client must be the one to close.
        await peer.client_left()
        left.append(True)

    async with serve(handler) as upstream:
        _, first = await get(upstream)
        _, second = await get(upstream)
        assert (first, second) == (b"ok", b"ok")
        assert upstream.pool.opened == 2
        assert [len(peer.requests) for peer in upstream.peers] == [1, 1]
        await eventually(lambda: bool(left))  # the client closed the first connection, unasked
        assert upstream.pool.idle_count(upstream.origin) == 0


async def test_closing_an_unfinished_response_aborts_its_connection() -> None:
    left = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 10)
        await peer.client_left()
        left.set()

    async with serve(handler) as upstream:
        response = await upstream.pool.request(upstream.origin, "GET", b"/", [])
        assert await response.read() == b"x" * 10
        response.close()
        async with asyncio.timeout(3):
            await left.wait()  # the upstream sees the client go: that is what stops its generation
        assert upstream.pool.idle_count(upstream.origin) == 0
        second = await upstream.pool.request(upstream.origin, "GET", b"/", [])
        second.close()
        assert upstream.pool.opened == 2


# 3. Stale keep-alive connections, and requests never sent twice on a fresh one.


async def test_a_connection_the_upstream_closed_while_idle_is_not_used_again() -> None:
    async def handler(peer: Peer) -> None:
        request = await peer.request()
        assert request is not None
        await peer.send(ok(request.target))  # kept alive, as far as the headers say...
        await asyncio.sleep(0.05)
        peer.close()  # ...then closed while idle, as upstreams do after their own idle timeout

    async with serve(handler) as upstream:
        _, first = await get(upstream, b"/1")
        await eventually(lambda: upstream.pool.idle_count(upstream.origin) == 0)  # noticed while idle
        _, second = await get(upstream, b"/2")
        assert (first, second) == (b"/1", b"/2")
        assert upstream.pool.opened == 2
        assert [[r.target for r in peer.requests] for peer in upstream.peers] == [[b"/1"], [b"/2"]]


async def test_a_reused_connection_closed_before_the_response_is_retried_on_a_fresh_one() -> None:
    """The race the idle check cannot see: the upstream closes just as the request goes out."""

    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            first = await peer.request()
            assert first is not None
            await peer.send(ok(first.target))
            await peer.request()  # the second request arrives, but the upstream had decided to close
            peer.close()
        else:
            await answer_each(peer)

    async with serve(handler) as upstream:
        _, first = await get(upstream, b"/1")
        second = await upstream.pool.request(upstream.origin, "POST", b"/2", [], b"payload")
        assert (first, await read_all(second)) == (b"/1", b"/2")
        assert upstream.pool.opened == 2
        assert [[r.target for r in peer.requests] for peer in upstream.peers] == [[b"/1", b"/2"], [b"/2"]]
        assert upstream.peers[1].requests[0].body == b"payload"


async def test_a_streamed_body_is_never_sent_twice_even_on_a_stale_connection() -> None:
    async def handler(peer: Peer) -> None:
        first = await peer.request()
        assert first is not None
        await peer.send(ok(first.target))
        await peer.request()
        peer.close()

    async def body() -> AsyncIterator[bytes]:
        yield b"part one, "
        yield b"part two"

    async with serve(handler) as upstream:
        await get(upstream, b"/1")
        with pytest.raises(ResponseBroken) as info:
            await upstream.pool.request(upstream.origin, "POST", b"/2", [], body())
        assert info.value.before_response
        assert upstream.pool.opened == 1
        assert [r.body for r in upstream.requests] == [b"", b"part one, part two"]


@pytest.mark.parametrize("ending", ["close", "reset"])
async def test_a_fresh_connection_lost_before_the_response_fails_and_is_not_resent(ending: str) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.close() if ending == "close" else peer.reset()

    async with serve(handler) as upstream:
        with pytest.raises(ResponseBroken) as info:
            await upstream.pool.request(upstream.origin, "POST", b"/once", [], b"not idempotent")
        assert info.value.before_response
        await asyncio.sleep(0.2)
        assert upstream.pool.opened == 1
        assert [r.body for r in upstream.requests] == [b"not idempotent"]


async def test_a_connection_closed_after_part_of_the_head_is_broken_but_not_before_response() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-le")
        peer.close()

    async with serve(handler) as upstream:
        with pytest.raises(ResponseBroken) as info:
            await upstream.pool.request(upstream.origin, "GET", b"/", [])
        assert not info.value.before_response  # the upstream did answer: not safe to retry elsewhere
        assert len(upstream.requests) == 1


# 4. Bodies that end early, and bodies that end at the close.


@pytest.mark.parametrize(
    ("answer", "received"),
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"y" * 10, b"y" * 10, id="content-length"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n",
            b"hello world",
            id="chunked-without-last-chunk",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\na\r\n wor",
            b"hello wor",
            id="chunked-cut-in-a-chunk",
        ),
        pytest.param(
            b"HTTP/1.0 200 OK\r\ncontent-length: 100\r\n\r\n" + b"z" * 10,
            b"z" * 10,
            id="http-1.0-content-length",
        ),
    ],
)
@pytest.mark.parametrize("how", ["fin", "reset"])
async def test_a_body_cut_short_raises_and_never_ends_cleanly(
    answer: bytes, received: bytes, how: str
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer)
        await asyncio.sleep(0.1)  # the client has read what came, and waits for more
        if how == "fin":
            peer.close()
        else:
            peer.reset()

    async with serve(handler) as upstream:
        response = await upstream.pool.request(upstream.origin, "GET", b"/", [])
        data, error = await read_until_broken(response)
        assert data == received
        assert not error.before_response
        assert not response.complete
        with pytest.raises(ResponseBroken):
            await response.read()  # and it stays broken
        assert upstream.pool.idle_count(upstream.origin) == 0


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
async def test_a_body_delimited_by_the_close_ends_cleanly_at_the_close(version: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/%s 200 OK\r\ncontent-type: text/plain\r\n\r\nfirst " % version)
        await asyncio.sleep(0.05)
        await peer.send(b"second")
        peer.close()

    async with serve(handler) as upstream:
        response, body = await get(upstream)
        assert body == b"first second"
        assert response.complete
        assert upstream.pool.idle_count(upstream.origin) == 0


async def test_a_body_delimited_by_the_close_ended_by_a_reset_is_broken() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\n\r\npartial")
        await asyncio.sleep(0.1)
        peer.reset()

    async with serve(handler) as upstream:
        response = await upstream.pool.request(upstream.origin, "GET", b"/", [])
        data, error = await read_until_broken(response)
        assert data == b"partial"
        assert not error.before_response


@pytest.mark.parametrize("status", [204, 304])
async def test_bodyless_statuses_end_at_the_headers_and_keep_the_connection(status: int) -> None:
    async def handler(peer: Peer) -> None:
        request = await peer.request()
        assert request is not None
        await peer.send(b"HTTP/1.1 %d Nothing\r\netag: x\r\n\r\n" % status)
        await answer_each(peer)

    async with serve(handler) as upstream:
        response, body = await get(upstream)
        assert (response.status, body, response.complete) == (status, b"", True)
        _, second = await get(upstream, b"/next")
        assert second == b"/next"
        assert upstream.pool.opened == 1


# 5. A read's deadline.


async def test_read_deadline_raises_timeout_and_the_response_can_still_be_read() -> None:
    go_on = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await go_on.wait()
        await peer.send(b"6\r\nsecond\r\n0\r\n\r\n")
        await answer_each(peer)

    async with serve(handler) as upstream:
        loop = asyncio.get_running_loop()
        response = await upstream.pool.request(upstream.origin, "GET", b"/", [])
        assert await response.read(loop.time() + 5) == b"first"
        started = loop.time()
        with pytest.raises(TimeoutError):
            await response.read(started + 0.2)
        assert 0.15 < loop.time() - started < 2.0
        with pytest.raises(TimeoutError):
            await response.read(loop.time() - 1)  # a deadline already passed
        go_on.set()
        assert await response.read(loop.time() + 5) == b"second"
        assert await response.read(loop.time() + 5) == b""
        assert response.complete
        _, again = await get(upstream, b"/again")  # the connection survived the timeouts
        assert again == b"/again"
        assert upstream.pool.opened == 1


# 6. Memory stays bounded while the reader is slow.


async def test_a_fast_upstream_is_paused_while_the_reader_is_slow() -> None:
    size = 16 * 1024 * 1024
    payload = random.Random(6).randbytes(size)
    unsent: list[int] = []

    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + payload)
        await asyncio.sleep(0.5)
        unsent.append(peer.writer.transport.get_write_buffer_size())
        await peer.writer.drain()
        await answer_each(peer)

    async with serve(handler) as upstream:
        response = await upstream.pool.request(upstream.origin, "GET", b"/", [])
        peak = 0
        for _ in range(60):  # 0.6 s without reading
            await asyncio.sleep(0.01)
            peak = max(peak, response._buffered)
        assert HIGH_WATER < peak <= HIGH_WATER + ONE_SOCKET_READ
        assert unsent and unsent[0] > size // 2  # the upstream could not send most of it: it was held back
        digest = hashlib.sha256()
        received = 0
        while piece := await response.read():
            assert response._buffered == 0
            received += len(piece)
            digest.update(piece)
            peak = max(peak, len(piece))
        assert received == size
        assert digest.digest() == hashlib.sha256(payload).digest()
        assert peak <= HIGH_WATER + ONE_SOCKET_READ
        _, again = await get(upstream, b"/again")
        assert again == b"/again"
        assert upstream.pool.opened == 1


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

    async with serve(handler) as upstream:
        response = await upstream.pool.request(upstream.origin, "GET", b"/", [])
        await eventually(lambda: response._buffered == first_part)
        first_part_in.set()
        await eventually(lambda: response._buffered == first_part + last_part)  # all in, nobody read
        assert await read_all(response) == b"a" * first_part + b"b" * last_part
        assert upstream.pool.idle_count(upstream.origin) == 1
        async with asyncio.timeout(3):
            _, again = await get(upstream, b"/again")
        assert again == b"/again"
        assert upstream.pool.opened == 1


# 7. Uploads.


async def test_a_streamed_body_without_length_goes_chunked_and_arrives_exactly() -> None:
    pieces = [b"{", b'"model": "m",', b"x" * 70000, b"\r\n0\r\n\r\n", b"}"]

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            await asyncio.sleep(0.01)
            yield piece

    async with serve(answer_each) as upstream:
        response = await upstream.pool.request(
            upstream.origin, "POST", b"/up", [(b"content-type", b"application/json")], body()
        )
        assert await read_all(response) == b"/up"
        [request] = upstream.requests
    host = b"127.0.0.1:%d" % upstream.origin.port
    assert request.head == (
        b"POST /up HTTP/1.1\r\nhost: " + host + b"\r\ncontent-type: application/json\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )
    assert request.body == b"".join(pieces)
    assert request.raw.endswith(b"\r\n}\r\n0\r\n\r\n")


async def test_a_streamed_body_with_a_length_goes_with_content_length() -> None:
    pieces = [b"a" * 1000, b"b" * 100000, b"c"]

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    length = sum(map(len, pieces))
    async with serve(answer_each) as upstream:
        response = await upstream.pool.request(upstream.origin, "PUT", b"/up", [], body(), length)
        assert await read_all(response) == b"/up"
        _, again = await get(upstream, b"/again")  # the exchange was complete: kept alive
        assert again == b"/again"
        assert upstream.pool.opened == 1
        request = upstream.requests[0]
    host = b"127.0.0.1:%d" % upstream.origin.port
    assert (
        request.raw
        == b"PUT /up HTTP/1.1\r\nhost: "
        + host
        + b"\r\ncontent-length: %d\r\n\r\n" % length
        + b"".join(pieces)
    )


async def test_an_empty_piece_of_a_chunked_upload_does_not_end_the_body() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"before"
        yield b""  # e.g. a re-encoder that had nothing to emit yet
        yield b" after"

    async with serve(answer_each) as upstream:
        async with asyncio.timeout(3):
            response = await upstream.pool.request(upstream.origin, "POST", b"/up", [], body())
            assert await read_all(response) == b"/up"
        assert [r.body for r in upstream.requests] == [b"before after"]


async def test_a_large_bytes_body_arrives_intact() -> None:
    payload = random.Random(7).randbytes(5 * 1024 * 1024)

    async with serve(answer_each) as upstream:
        response = await upstream.pool.request(upstream.origin, "POST", b"/big", [], payload)
        assert await read_all(response) == b"/big"
        [request] = upstream.requests
    assert request.header(b"content-length") == b"%d" % len(payload)
    assert hashlib.sha256(request.body).digest() == hashlib.sha256(payload).digest()


async def test_a_streamed_upload_waits_for_the_socket() -> None:
    piece_size, count = 64 * 1024, 512  # 32 MiB offered
    produced = 0
    sent = hashlib.sha256()
    stalled: list[int] = []
    reading = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        nonlocal produced
        for i in range(count):
            piece = i.to_bytes(4, "big") * (piece_size // 4)
            produced += len(piece)
            sent.update(piece)
            yield piece

    async def handler(peer: Peer) -> None:
        head = await peer.read_head()
        assert head is not None
        await asyncio.sleep(0.5)  # not reading: the client must stop producing
        stalled.append(produced)
        await asyncio.sleep(0.3)
        stalled.append(produced)
        reading.set()
        request = await peer.read_body(head)
        received.append(request.body)
        await peer.send(ok())

    received: list[bytes] = []
    async with serve(handler) as upstream:
        response = await upstream.pool.request(upstream.origin, "POST", b"/up", [], body(), None)
        assert await read_all(response) == b"ok"
    assert reading.is_set()
    assert stalled[0] == stalled[1]  # the producer was waiting...
    assert stalled[0] < count * piece_size // 2  # ...long before the end of the body
    assert hashlib.sha256(received[0]).digest() == sent.digest()
    assert len(received[0]) == count * piece_size


# 8. HEAD.


async def test_a_head_response_ends_at_its_headers_and_its_connection_is_not_reused() -> None:
    async def handler(peer: Peer) -> None:
        request = await peer.request()
        assert request is not None
        if request.head.startswith(b"HEAD "):
            await peer.send(
                b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\ncontent-type: application/json\r\n\r\n"
            )
            await peer.client_left()
        else:
            await peer.send(ok(request.target))

    async with serve(handler) as upstream:
        async with asyncio.timeout(3):
            response = await upstream.pool.request(upstream.origin, "HEAD", b"/h", [])
            assert response.header(b"content-length") == b"1000"
            assert await response.read() == b""
        assert response.complete
        _, body = await get(upstream, b"/after")
        assert body == b"/after"
        assert upstream.pool.opened == 2
        host = b"127.0.0.1:%d" % upstream.origin.port
        assert upstream.requests[0].raw == b"HEAD /h HTTP/1.1\r\nhost: " + host + b"\r\n\r\n"


# 9. Interim responses.


@pytest.mark.parametrize("split", [False, True], ids=["one-packet", "two-packets"])
async def test_interim_responses_are_skipped(split: bool) -> None:
    interim = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"
    )
    final = b"HTTP/1.1 201 Created\r\nx-final: yes\r\ncontent-length: 4\r\n\r\ndone"

    async def handler(peer: Peer) -> None:
        await peer.request()
        if split:
            await peer.send(interim)
            await asyncio.sleep(0.1)
            await peer.send(final)
        else:
            await peer.send(interim + final)
        await answer_each(peer)

    async with serve(handler) as upstream:
        response, body = await get(upstream)
        assert response.status == 201
        assert response.headers == [(b"x-final", b"yes"), (b"content-length", b"4")]
        assert body == b"done"
        _, again = await get(upstream, b"/again")
        assert again == b"/again"
        assert upstream.pool.opened == 1


# 10. Responses that break HTTP.


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"garbage\r\n\r\n", id="garbage"),
        pytest.param(b"HTTP/1.1 2x0 OK\r\ncontent-length: 0\r\n\r\n", id="bad-status"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc", id="two-lengths"
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", id="header-without-colon"),
    ],
)
async def test_a_malformed_response_is_broken(answer: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer)
        await peer.client_left()

    async with serve(handler) as upstream:
        with pytest.raises(ResponseBroken) as info:
            await upstream.pool.request(upstream.origin, "GET", b"/", [])
        assert not info.value.before_response
        assert "malformed" in info.value.reason
        await upstream.peer(0)
        assert upstream.pool.idle_count(upstream.origin) == 0


async def test_a_malformed_chunk_in_the_body_is_broken() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\nwhat\r\n")
        await peer.client_left()

    async with serve(handler) as upstream:
        response = await upstream.pool.request(upstream.origin, "GET", b"/", [])
        data, error = await read_until_broken(response)
        assert data == b"abc"
        assert not error.before_response


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

    async with serve(handler) as upstream:
        with pytest.raises(ResponseBroken):
            await upstream.pool.request(upstream.origin, "GET", b"/", [])
        async with asyncio.timeout(3):
            await left.wait()


async def test_headers_just_under_the_limit_are_fine() -> None:
    value = b"v" * (MAX_HEADER_BYTES - 1000)

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(ok(b"ok", b"x-long: " + value))
        await answer_each(peer)

    async with serve(handler) as upstream:
        response, body = await get(upstream)
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

    async with serve(handler) as upstream:
        with pytest.raises(ResponseBroken):
            async with asyncio.timeout(2):  # a TimeoutError here: the client was still buffering the head
                await upstream.pool.request(upstream.origin, "GET", b"/", [])
        assert sent < 8 * MAX_HEADER_BYTES  # it stopped taking the head in soon after the limit


async def test_bytes_nobody_asked_for_drop_an_idle_connection() -> None:
    async def handler(peer: Peer) -> None:
        request = await peer.request()
        assert request is not None
        await peer.send(ok(request.target))
        await asyncio.sleep(0.1)
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray")
        await answer_each(peer)

    async with serve(handler) as upstream:
        _, first = await get(upstream, b"/1")
        await eventually(lambda: upstream.pool.idle_count(upstream.origin) == 0)
        _, second = await get(upstream, b"/2")
        assert (first, second) == (b"/1", b"/2")
        assert upstream.pool.opened == 2


@pytest.mark.parametrize(
    "stray",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray", id="whole-response"),
        pytest.param(b"HTTP/1.1 299 Stray\r\nx-stray: ", id="start-of-a-head"),
    ],
)
async def test_a_response_nobody_asked_for_in_the_same_packet_drops_the_connection(stray: bytes) -> None:
    async def handler(peer: Peer) -> None:
        request = await peer.request()
        assert request is not None
        await peer.send(ok(request.target) + stray)
        await answer_each(peer)

    async with serve(handler) as upstream:
        _, first = await get(upstream, b"/1")
        assert first == b"/1"
        await asyncio.sleep(0.1)
        idle = upstream.pool.idle_count(upstream.origin)
        # Two requests at once, each must get its own response and nothing of the stray one.
        async with asyncio.timeout(3):
            results = await asyncio.gather(get(upstream, b"/a"), get(upstream, b"/b"))
        assert [(r.status, r.headers, body) for r, body in results] == [
            (200, [(b"content-length", b"2")], b"/a"),
            (200, [(b"content-length", b"2")], b"/b"),
        ]
        assert idle == 0  # the upstream's framing cannot be trusted: the connection is not kept


# 11. Line breaks cannot split the request.


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        pytest.param(b"/v1/x HTTP/1.1\r\nx-injected: 1\r\n\r\nGET /", [], id="crlf-in-target"),
        pytest.param(b"/v1/x\n", [], id="lf-in-target"),
        pytest.param(b"/", [(b"x-key", b"k\r\nx-injected: 1")], id="crlf-in-value"),
        pytest.param(b"/", [(b"x-key", b"k\r")], id="cr-in-value"),
        pytest.param(b"/", [(b"x-key", b"k\nx-injected: 1")], id="lf-in-value"),
        pytest.param(b"/", [(b"x-key", b"k\x00")], id="nul-in-value"),
        pytest.param(b"/", [(b"x-key\r\nx-injected", b"1")], id="crlf-in-name"),
    ],
)
async def test_a_line_break_in_the_target_or_a_header_is_refused_before_anything_is_sent(
    target: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    async with serve(answer_each) as upstream:
        with pytest.raises(ValueError, match="line break"):
            await upstream.pool.request(upstream.origin, "POST", target, headers, b"body")
        await asyncio.sleep(0.1)
        assert upstream.pool.opened == 0
        assert upstream.peers == []


# 12. Connecting.


async def test_a_refused_connection_is_connect_failed() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    pool = ConnectionPool(connect_timeout=5)
    try:
        with pytest.raises(ConnectFailed) as info:
            await pool.request(Origin("http", "127.0.0.1", port), "POST", b"/", [], b"x")
    finally:
        await pool.close()
    assert isinstance(info.value.cause, ConnectionRefusedError)
    assert not info.value.timed_out
    assert pool.opened == 0


@contextlib.contextmanager
def hanging_listener(host: str) -> Iterator[tuple[str, int]]:
    """A listener whose accept queue is full: Linux drops further SYNs, so connects to it hang."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind((host, 0))
        listener.listen(0)  # never accepted
        address = listener.getsockname()
        for _ in range(2):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(address)
            fillers.append(filler)
        time.sleep(0.1)  # the first filler is in the accept queue; the queue is full
        yield address
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_a_connect_that_hangs_is_connect_failed_timed_out() -> None:
    with hanging_listener("127.0.0.1") as address:
        pool = ConnectionPool(connect_timeout=0.3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            with pytest.raises(ConnectFailed) as info:
                await pool.request(Origin("http", *address), "GET", b"/", [])
        finally:
            await pool.close()
        assert info.value.timed_out
        assert info.value.cause is None
        assert 0.25 < loop.time() - started < 3.0


async def test_addresses_are_tried_in_turn_and_the_one_that_answered_stays_first() -> None:
    """No Happy Eyeballs in uvloop: a dead first address (say, broken IPv6) costs once per DNS answer."""
    resolved: list[int] = []
    port = 0

    async def resolve(host: str, _port: int) -> list[tuple[str, int]]:
        resolved.append(1)
        return [("127.0.0.2", port), ("127.0.0.1", port)]  # the server listens on 127.0.0.1 only

    async with serve(answer_each, pool=ConnectionPool(connect_timeout=5, resolve=resolve)) as upstream:
        port = upstream.origin.port
        await get(upstream)
        await upstream.pool.close()  # drops the kept-alive connection; the DNS answer stays
        await get(upstream)  # a new connection: the answering address is tried first now
        assert upstream.pool.opened == 2
        assert upstream.pool._dns[upstream.origin][1][0] == ("127.0.0.1", port)
        assert len(resolved) == 1  # the answer is cached


async def test_a_hanging_address_gets_only_its_share_of_the_connect_timeout() -> None:
    with hanging_listener("127.0.0.2") as hanging:
        port = 0

        async def resolve(host: str, _port: int) -> list[tuple[str, int]]:
            return [hanging, ("127.0.0.1", port)]

        pool = ConnectionPool(connect_timeout=1.0, resolve=resolve)
        async with serve(answer_each, pool=pool) as upstream:
            port = upstream.origin.port
            loop = asyncio.get_running_loop()
            started = loop.time()
            _, body = await get(upstream, b"/after-a-hang")
            assert body == b"/after-a-hang"
            assert 0.4 < loop.time() - started < 1.0  # half the timeout on the hanging address


# 13. TLS.


@dataclass
class Certificates:
    ca: bytes  # PEM of the test CA
    chain: Path  # the server's certificate (signed by the CA) ...
    key: Path  # ... and its key
    wrong_name_chain: Path  # signed by the same CA, for another name only
    wrong_name_key: Path


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    san: list[x509.GeneralName] | None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    if san is None:  # a CA
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    directory = tmp_path_factory.mktemp("tls")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Sluice test CA", ca_key, None, ca_key, None)

    def leaf(name: str, san: list[x509.GeneralName]) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(name, key, ca, ca_key, san)
        chain, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return chain, key_path

    chain, key = leaf("upstream", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    wrong_chain, wrong_key = leaf("elsewhere", [x509.DNSName("elsewhere.test")])
    return Certificates(ca.public_bytes(serialization.Encoding.PEM), chain, key, wrong_chain, wrong_key)


def _server_context(chain: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(chain, key)
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


async def test_https_to_a_trusted_upstream_with_keep_alive(certificates: Certificates) -> None:
    pool = ConnectionPool(connect_timeout=5)
    pool.ssl_context.load_verify_locations(cadata=certificates.ca.decode())
    tls = _server_context(certificates.chain, certificates.key)
    negotiated: list[str | None] = []

    async def handler(peer: Peer) -> None:
        negotiated.append(peer.writer.get_extra_info("ssl_object").selected_alpn_protocol())
        await answer_each(peer)

    async with serve(handler, tls=tls, pool=pool) as upstream:
        assert upstream.origin.scheme == "https"
        response, first = await get(upstream, b"/1")
        post = await pool.request(upstream.origin, "POST", b"/2", [], b"x" * 200000)
        assert (response.status, first, await read_all(post)) == (200, b"/1", b"/2")
        assert pool.opened == 1
        host = b"127.0.0.1:%d" % upstream.origin.port
        assert upstream.requests[0].raw == b"GET /1 HTTP/1.1\r\nhost: " + host + b"\r\n\r\n"
        assert upstream.requests[1].body == b"x" * 200000
    assert negotiated == ["http/1.1"]  # offered h2, the client asked for HTTP/1.1 only


async def test_https_refuses_an_untrusted_certificate(certificates: Certificates) -> None:
    tls = _server_context(certificates.chain, certificates.key)
    async with serve(answer_each, tls=tls) as upstream:  # the pool trusts only the system's CAs
        with pytest.raises(ConnectFailed) as info:
            await upstream.pool.request(upstream.origin, "GET", b"/", [])
        assert isinstance(info.value.cause, ssl.SSLCertVerificationError)
        assert not info.value.timed_out
        assert upstream.pool.opened == 0
        assert upstream.requests == []


async def test_https_refuses_a_certificate_for_another_name(certificates: Certificates) -> None:
    pool = ConnectionPool(connect_timeout=5)
    pool.ssl_context.load_verify_locations(cadata=certificates.ca.decode())
    tls = _server_context(certificates.wrong_name_chain, certificates.wrong_name_key)
    async with serve(answer_each, tls=tls, pool=pool) as upstream:
        with pytest.raises(ConnectFailed) as info:
            await pool.request(upstream.origin, "GET", b"/", [])
        assert isinstance(info.value.cause, ssl.SSLCertVerificationError)
        assert upstream.requests == []


# 14. Idle connections are closed.


async def test_an_idle_connection_is_closed_after_the_idle_timeout() -> None:
    idle_for: list[float] = []

    async def handler(peer: Peer) -> None:
        request = await peer.request()
        assert request is not None
        await peer.send(ok())
        answered = time.monotonic()
        await peer.client_left(5)
        idle_for.append(time.monotonic() - answered)

    pool = ConnectionPool(connect_timeout=5, idle_timeout=0.2)
    async with serve(handler, pool=pool) as upstream:
        _, body = await get(upstream)
        assert body == b"ok"
        assert pool.idle_count(upstream.origin) == 1
        await eventually(lambda: bool(idle_for), timeout=5)
        assert pool.idle_count(upstream.origin) == 0
    assert 0.15 < idle_for[0] < 3.0


async def test_a_connection_in_use_is_not_closed_by_the_idle_sweep() -> None:
    async def handler(peer: Peer) -> None:
        await answer_each(peer)

    pool = ConnectionPool(connect_timeout=5, idle_timeout=1.0)
    async with serve(handler, pool=pool) as upstream:
        for i in range(10):  # reused every 0.2 s, across several sweeps: never idle for 1 s
            _, body = await get(upstream, b"/%d" % i)
            assert body == b"/%d" % i
            await asyncio.sleep(0.2)
        assert pool.opened == 1


# 15. Cancellation.


async def test_cancelling_a_request_waiting_for_its_response_aborts_the_connection() -> None:
    left = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.client_left(5)  # a slow upstream, still thinking
        left.set()

    async with serve(handler) as upstream:
        task = asyncio.create_task(upstream.pool.request(upstream.origin, "POST", b"/", [], b"work"))
        peer = await upstream.peer(0)
        async with asyncio.timeout(3):
            await peer.got_request.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(2):
            await left.wait()  # the upstream learns promptly that nobody waits for the answer
        assert upstream.pool.idle_count(upstream.origin) == 0


async def test_cancelling_a_streamed_upload_aborts_the_connection() -> None:
    left = asyncio.Event()
    stuck = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        stuck.set()
        await asyncio.Event().wait()  # the client's own upload stalls
        yield b"never"

    async def handler(peer: Peer) -> None:
        await peer.client_left(5)
        left.set()

    async with serve(handler) as upstream:
        task = asyncio.create_task(upstream.pool.request(upstream.origin, "POST", b"/", [], body()))
        async with asyncio.timeout(3):
            await stuck.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(2):
            await left.wait()


# What ConnectFailed promises: the upstream never saw the request.


async def test_connect_failed_only_when_the_upstream_never_saw_the_request() -> None:
    servers: list[asyncio.Server] = []

    async def handler(peer: Peer) -> None:
        first = await peer.request()
        assert first is not None
        await peer.send(ok(first.target))
        await peer.request()  # the upstream has the second request (it may act on it) ...
        servers[0].close()  # ... and goes down: no new connection is possible
        peer.close()

    async with serve(handler) as upstream:
        assert upstream.server is not None
        servers.append(upstream.server)
        await get(upstream, b"/1")
        with pytest.raises(UpstreamError) as info:
            await upstream.pool.request(upstream.origin, "POST", b"/charge", [], b"once")
        assert [r.target for r in upstream.requests] == [b"/1", b"/charge"]
        # The upstream saw it: trying it on another upstream could run it twice.
        assert not isinstance(info.value, ConnectFailed)
