"""A lean HTTP/1.1 client for the hot path: one request, its response's bytes as they arrive.

Why not aiohttp here: measured on our 2-core machine (bench/results, issue 7),
a minimal uvicorn proxy spent about 270 µs of CPU per small request through
``aiohttp.ClientSession.request`` and about 110 µs through this shape: an
``asyncio.Protocol`` per connection and httptools' response parser (the same
llhttp uvicorn parses requests with). The passthrough needs little of what a
general client offers (no redirects, cookies, decompression, proxies or
auth), so the rest is overhead it pays on every request.

Guarantees:

* The request goes out as given: method, target and headers byte for byte,
  plus ``Host`` and the body's framing (``Content-Length``, or chunked when a
  streamed body has no declared length). Nothing else is added.
* The response body comes back as the upstream sent it, de-chunked but never
  decoded: each :meth:`Response.read` returns what has arrived since the last.
* Memory is bounded: reading from the upstream pauses while more than
  ``HIGH_WATER`` bytes wait for the reader; an upload waits for the socket.
* A response that ends before its framing says it is complete raises
  :class:`ResponseBroken`, never a clean end. A connection is reused only
  after a complete exchange the upstream agreed to keep alive.
* A request that could not be sent at all raises :class:`ConnectFailed`: only
  then is it known that the upstream never saw it (safe to try elsewhere).
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

import httptools

from .interface import Body, ConnectFailed, Headers, Origin, ResponseBroken, header_value
from .wire import body_framed, framing, line_breaks

HIGH_WATER = 64 * 1024  # buffered body bytes that pause the upstream socket
IDLE_TIMEOUT = 15.0  # seconds an unused keep-alive connection is kept (aiohttp's default too)
DNS_TTL = 300.0  # seconds an origin's addresses are reused (aiohttp's default too)
MAX_HEADER_BYTES = 64 * 1024  # provider responses carry long rate-limit and trace headers


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Response:
    """Status, headers (names lower-cased) and a body read piece by piece."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_eof",
        "_error",
        "_loop",
        "_waiter",
        "headers",
        "status",
    )

    def __init__(self, conn: _Connection, status: int, headers: Headers) -> None:
        self._conn: _Connection | None = conn
        self._loop = conn.loop
        self.status = status
        self.headers = headers
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._eof = False
        self._error: ResponseBroken | None = None
        self._waiter: asyncio.Future[None] | None = None

    def header(self, name: bytes) -> bytes | None:
        return header_value(self.headers, name)

    @property
    def complete(self) -> bool:
        return self._eof and not self._chunks

    async def read(self, deadline: float | None = None) -> bytes:
        """What has arrived since the last read; ``b""`` at the end of the body.

        Raises :class:`TimeoutError` if nothing arrives before ``deadline`` (a
        ``loop.time()``), and :class:`ResponseBroken` if the body was cut short.
        """
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            loop = self._loop
            waiter = self._waiter = loop.create_future()
            timer = loop.call_at(deadline, _expire, waiter) if deadline is not None else None
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        conn = self._conn
        if conn is not None and conn.reading_paused:
            conn.resume_reading()
        return data

    def close(self) -> None:
        """Done with this response. If its body is unfinished, the connection is
        dropped, which is what tells the upstream to stop generating."""
        conn, self._conn = self._conn, None
        if conn is not None and not self._eof:
            conn.abort()

    # Called by the connection.

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        self._wake()
        conn = self._conn
        if self._buffered > HIGH_WATER and conn is not None and not conn.reading_paused:
            conn.pause_reading()

    def _end(self) -> None:
        self._eof = True
        self._conn = None
        self._wake()

    def _fail(self, error: ResponseBroken) -> None:
        if not self._eof:
            self._error = error
            self._conn = None
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one exchange at a time."""

    # The exchange in progress (see reset).
    head_request: bool
    request_sent: bool
    got_bytes: bool
    header_bytes: int
    head_bytes: int
    status: int
    headers: Headers
    until_close: bool
    response: Response | None

    def __init__(self, pool: ConnectionPool, origin: Origin) -> None:
        # Kept: asyncio.get_running_loop() makes a getpid() system call (its
        # fork check) every time, and the exchange needs the loop for each
        # waiter. A connection lives and dies in the loop that opened it.
        self.loop = asyncio.get_running_loop()
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reading_paused = False
        self.idle_since = 0.0
        self.uses = 0  # exchanges started on this connection
        self.headers_waiter: asyncio.Future[Response] | None = None
        self._drain: asyncio.Future[None] | None = None
        self.reset(head_request=False)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.headers_waiter is None and self.response is None:
            # Bytes nobody asked for: the connection's framing is lost.
            self.abort()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            # An upgrade (101) answers only a request that asked for one, which Sluice never sends.
            self._broken(f"malformed response ({exc.__class__.__name__})")
            self.abort()
            return
        if self.headers_waiter is not None:
            # Still in the head: llhttp hands a header over only once its line
            # ends, so an endless line would otherwise be buffered without limit.
            self.head_bytes += len(data)
            if self.head_bytes > 2 * MAX_HEADER_BYTES:
                self._broken("response headers too large")
                self.abort()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.response is not None and self.until_close and exc is None:
            self.response._end()  # a body delimited by the close ended cleanly
            self.response = None
        else:
            self._broken("connection closed by the upstream" if exc is None else f"connection lost ({exc})")
        self.resume_writing()  # an upload waiting for the socket stops at the next piece

    def pause_writing(self) -> None:
        if self._drain is None:
            self._drain = self.loop.create_future()

    def resume_writing(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.headers_waiter is None:
            # A response to no request (more bytes after the answer): the framing is lost.
            raise httptools.HttpParserError("a response nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES:
            raise httptools.HttpParserError("response headers too large")
        if self.response is not None:
            return  # a trailer field, after the body: not one of the response's headers
        # llhttp drops the whitespace before a value, not after it; neither is
        # part of the value (RFC 9110, 5.5). Tested first: most values end in
        # neither, and a method call on every header costs more than the test.
        if value and (value[-1] == 32 or value[-1] == 9):
            value = value.rstrip(b" \t")
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            # Interim responses (103 Early Hints, a stray 100 Continue) are not
            # the answer; llhttp parses the real one as the next message.
            self.headers, self.header_bytes = [], 0
            return
        self.status = status
        response = Response(self, status, self.headers)
        self.response = response
        self.until_close = (
            status not in (204, 304) and not self.head_request and not body_framed(self.headers)
        )
        waiter, self.headers_waiter = self.headers_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)
        if self.head_request:
            # llhttp cannot be told a response is to HEAD: it would wait for the
            # body Content-Length announces. End here; the connection is not reused.
            response._end()
            self.response = None
            self.abort()

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        if self.status == 0:
            return  # an interim response ended
        response, self.response = self.response, None
        if response is not None:
            response._end()
        if self.request_sent and self.parser.should_keep_alive() and not self.closed:
            # Reading may be paused for a reader that has yet to catch up; this
            # response is all in, so the connection reads again for the next one.
            if self.reading_paused:
                self.resume_reading()
            self.pool.release(self)
        else:
            self.abort()

    # Used by the client and the response.

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()
            self.reading_paused = True

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
        self.reading_paused = False

    def abort(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.pool.forget(self)
            self.transport.abort()

    def reset(self, head_request: bool) -> None:
        """The state of one exchange, fresh for the next."""
        self.head_request = head_request
        self.request_sent = False
        self.got_bytes = False
        self.header_bytes = 0
        self.head_bytes = 0  # raw bytes received while no final head is complete
        self.status = 0
        self.headers = []
        self.until_close = False  # the body ends when the upstream closes
        self.response = None

    async def drain(self) -> None:
        if self._drain is not None:
            await self._drain

    def _broken(self, reason: str) -> None:
        error = ResponseBroken(reason, before_response=not self.got_bytes)
        waiter, self.headers_waiter = self.headers_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        response, self.response = self.response, None
        if response is not None:
            response._fail(error)


def _check(head: bytes, lines: int) -> None:
    """Refuse a request head with a line break or control character inside a line.

    The client's header values were parsed by Sluice's server, which refuses
    them; this guards what Sluice adds itself (keys, paths) against splitting
    the request.
    """
    if line_breaks(head) != 2 * lines:
        raise ValueError("line break or control character in an upstream request line or header")


Address = tuple[str, int]
Resolver = Callable[[str, int], Awaitable[list[Address]]]


async def _getaddrinfo(host: str, port: int) -> list[Address]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(str(info[4][0]), int(info[4][1])) for info in infos]


class ConnectionPool:
    """Keep-alive connections per origin, most recently used first."""

    def __init__(
        self,
        connect_timeout: float,
        idle_timeout: float = IDLE_TIMEOUT,
        resolve: Resolver | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self._resolve = resolve or _getaddrinfo
        self._dns: dict[Origin, tuple[float, list[Address]]] = {}
        self._idle: dict[Origin, list[_Connection]] = {}
        self._all: set[_Connection] = set()
        self._ssl: ssl.SSLContext | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.opened = 0  # connections made, for tests and metrics
        self._closed = False

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            context = ssl.create_default_context()
            context.set_alpn_protocols(["http/1.1"])
            self._ssl = context
        return self._ssl

    def idle_count(self, origin: Origin) -> int:
        return len(self._idle.get(origin, ()))

    async def _addresses(self, origin: Origin) -> list[Address]:
        now = time.monotonic()
        cached = self._dns.get(origin)
        if cached is not None and cached[0] > now:
            return cached[1]
        addresses = list(dict.fromkeys(await self._resolve(origin.host, origin.port)))
        if not addresses:
            raise OSError(f"no address for {origin.host}")
        self._dns[origin] = (now + DNS_TTL, addresses)
        return addresses

    async def _connect(self, origin: Origin) -> _Connection:
        """A new connection, to the first of the origin's addresses that answers.

        uvloop has no Happy Eyeballs, so on a host whose IPv6 (say) is
        broken, addresses are tried in turn, each with its share of the
        connect timeout, and the one that answered is tried first from then
        on (until the DNS answer expires): a broken family costs once.
        """
        loop = asyncio.get_running_loop()
        tls = origin.scheme == "https"
        failure: OSError | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                addresses = await self._addresses(origin)
                for index, (host, port) in enumerate(addresses):
                    share = self.connect_timeout / (len(addresses) - index)
                    try:
                        async with asyncio.timeout(share):
                            _, conn = await loop.create_connection(
                                lambda: _Connection(self, origin),
                                host,
                                port,
                                ssl=self.ssl_context if tls else None,
                                server_hostname=origin.host if tls else None,
                            )
                    except (OSError, TimeoutError) as exc:
                        failure = exc if isinstance(exc, OSError) else None
                        continue
                    if index:
                        addresses.insert(0, addresses.pop(index))  # sticky: it answered
                    break
                else:
                    if failure is None:
                        raise TimeoutError
                    raise failure
        except TimeoutError:
            raise ConnectFailed(None, timed_out=True) from None
        except OSError as exc:
            raise ConnectFailed(exc) from exc
        self.opened += 1
        self._all.add(conn)
        return conn

    async def acquire(self, origin: Origin) -> _Connection:
        idle = self._idle.get(origin)
        if idle:
            stale_before = time.monotonic() - self.idle_timeout
            while idle:
                conn = idle.pop()
                if not conn.closed and conn.idle_since > stale_before:
                    return conn
                conn.abort()
        return await self._connect(origin)

    def release(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.origin, []).append(conn)
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self.idle_timeout, self._sweep)

    def forget(self, conn: _Connection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)

    def _sweep(self) -> None:
        """Close connections idle for longer than ``idle_timeout`` (oldest first in each list)."""
        self._sweeper = None
        stale_before = time.monotonic() - self.idle_timeout
        for idle in list(self._idle.values()):
            while idle and idle[0].idle_since <= stale_before:
                idle.pop(0).abort()
        if any(self._idle.values()):
            self._sweeper = asyncio.get_running_loop().call_later(self.idle_timeout / 2, self._sweep)

    @property
    def is_open(self) -> bool:
        return not self._closed

    async def open(self) -> None:
        self._closed = False

    async def close(self) -> None:
        """Drop every connection, idle or in use."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._all):
            conn.abort()
        self._idle.clear()

    async def request(
        self,
        origin: Origin,
        method: str,
        target: bytes,
        headers: Headers,
        body: Body = None,
        length: int | None = None,
    ) -> Response:
        """:meth:`.interface.Client.request`."""
        head = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\nhost: ", origin.host_header, b"\r\n"]
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        frame = framing(method, body, length)
        if frame is not None:
            head += (frame[0], b": ", frame[1], b"\r\n")
        head.append(b"\r\n")
        wire = b"".join(head)
        # The request line, Host, each header, the framing line, the blank line.
        _check(wire, len(headers) + 3 + (frame is not None))
        stale: ResponseBroken | None = None
        while True:
            try:
                conn = await self.acquire(origin)
            except ConnectFailed:
                if stale is not None:
                    # The stale connection may have delivered the request:
                    # never report it as one the upstream did not see.
                    raise stale from None
                raise
            try:
                return await self._exchange(conn, method, wire, body, length is None)
            except ResponseBroken as exc:
                if not (exc.before_response and conn.uses > 1 and not isinstance(body, AsyncIterator)):
                    raise
                # A stale keep-alive connection: once more on a fresh one.
                # A request that went out on a fresh connection is never sent twice.
                stale = exc

    async def _exchange(
        self,
        conn: _Connection,
        method: str,
        wire: bytes,
        body: bytes | AsyncIterator[bytes] | None,
        chunked: bool,
    ) -> Response:
        transport = conn.transport
        assert transport is not None
        conn.reset(head_request=method == "HEAD")
        conn.uses += 1
        waiter: asyncio.Future[Response] = conn.loop.create_future()
        conn.headers_waiter = waiter
        try:
            if isinstance(body, bytes) or body is None:
                transport.write(wire + body if body else wire)
            else:
                transport.write(wire)
                await self._upload(conn, body, chunked)
            conn.request_sent = not conn.closed
            return await waiter
        except BaseException:
            # Cancelled (the client left, a timeout) or failed: the upstream
            # must see the connection go, so it stops working on the request.
            conn.headers_waiter = None
            if not waiter.done():
                waiter.cancel()
            conn.abort()
            raise

    async def _upload(self, conn: _Connection, body: AsyncIterator[bytes], chunked: bool) -> None:
        transport = conn.transport
        assert transport is not None
        async for piece in body:
            if conn.closed:
                break  # the upstream answered (or failed) early: the response says which
            if not piece:
                continue  # an empty chunk would be the last-chunk marker
            if chunked:
                transport.writelines([b"%x\r\n" % len(piece), piece, b"\r\n"])
            else:
                transport.write(piece)
            await conn.drain()
        if chunked and not conn.closed:
            transport.write(b"0\r\n\r\n")
