"""The ``stock`` upstream client: aiohttp's, held to the contract of :mod:`.interface`.

The fast client (:mod:`.h1client`) is the reference; this one exists so an
operator can rule the custom transport out, and so the contract tests
(``tests/test_http_client.py``) have a second implementation to hold it
against. aiohttp is configured, and in a few places corrected, to keep the
same edges:

* The request goes out as given. No ``Accept``, ``Accept-Encoding``,
  ``User-Agent`` or ``Content-Type`` of aiohttp's own (``skip_auto_headers``),
  no cookies (a dummy jar), nothing from the environment (``trust_env=False``),
  no redirect followed, no decompression. A per-request middleware
  (:class:`_Exchange`) writes the head itself, so it is byte for byte the
  fast client's: ``host`` and the framing header lower-case, names that
  differ only in case kept apart, no framing of aiohttp's own.
  aiohttp writes text: a target or header that is not UTF-8, or a target it
  would not send as given (a ``#``), is refused before anything is sent. It
  does drop the ``?`` of an empty query.
* aiohttp retries idempotent methods once by itself when a connection fails,
  even a fresh one: a request the upstream may have acted on would go twice.
  The middleware turns those failures into :class:`_Unretried`, which aiohttp
  does not retry; :meth:`AiohttpClient.request` retries a request itself only
  where the fast client does (a reused connection, a body of bytes).
* A kept-alive connection on which the upstream sent a response to no
  request is dropped, not reused (:class:`_Connector`): aiohttp would hand
  that response to the next request on it.
* A body cut short raises :class:`ResponseBroken` after the bytes that did
  arrive (aiohttp's reader raises ahead of its buffered bytes), and a body
  delimited by the close that ends in a reset is broken, not complete
  (aiohttp ends it cleanly). A malformed chunk after the first read breaks
  the body at once (aiohttp closes the connection but leaves the body's
  reader waiting).
* Memory is bounded by aiohttp's reader, which pauses the socket past twice
  ``READ_BUFSIZE`` unread bytes, and by its writer, which waits for the socket.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Final

import aiohttp
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from yarl import URL

from .interface import Body, ConnectFailed, Headers, Origin, ResponseBroken, UpstreamError, header_value
from .wire import body_framed, framing, line_breaks

IDLE_TIMEOUT = 15.0  # seconds an unused keep-alive connection is kept (as the fast client)
DNS_TTL = 300  # seconds an origin's addresses are reused (as the fast client)
MAX_FIELD_BYTES = 64 * 1024  # one header line: the fast client's limit for the whole head
MAX_HEADERS = 256  # aiohttp counts header lines; the fast client counts only bytes
READ_BUFSIZE = 64 * 1024  # aiohttp pauses the socket past twice this many unread body bytes

# Headers aiohttp would add on its own.
_NO_AUTO_HEADERS: Final = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


class _Unretried(Exception):
    """A connection failure, out of aiohttp's reach: it retries only its own exception types."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error.__class__.__name__)
        self.error = error


class _Malformed(aiohttp.ClientPayloadError):
    """The body's connection closed because the parser failed on what came next."""


class _Exchange:
    """The middleware of one request: its head exactly as given, and no retry by aiohttp.

    aiohttp builds a request's headers itself: it merges names that differ
    only in case (``X-A: 1`` and ``x-a: 2`` become ``x-a: 2``), and adds its
    own framing (``Transfer-Encoding: chunked``, ``Content-Length: 0`` on a
    bodiless DELETE). Once the request is built, and before it is sent, this
    puts back the head ``request()`` wrote: Host, the headers as given, the
    framing as the fast client decides it. (How aiohttp writes the body
    follows from what it was first given: see ``request()``.)
    """

    __slots__ = ("wire",)

    def __init__(self, wire: list[tuple[str, str]]) -> None:
        self.wire = wire

    async def __call__(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        headers = request.headers
        headers.clear()
        headers.extend(self.wire)
        try:
            return await handler(request)
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
            raise _Unretried(exc) from None


class _Attempt:
    """One try of a request, as aiohttp's trace signals and the body see it."""

    __slots__ = ("body_error", "reused")

    def __init__(self) -> None:
        self.reused = False  # the connection had carried an exchange before
        self.body_error: Exception | None = None  # raised by the caller's body iterator


async def _on_reuse(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceConnectionReuseconnParams
) -> None:
    attempt = context.trace_request_ctx
    if isinstance(attempt, _Attempt):
        attempt.reused = True


async def _on_create(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceConnectionCreateStartParams
) -> None:
    attempt = context.trace_request_ctx
    if isinstance(attempt, _Attempt):
        attempt.reused = False  # a kept-alive one was taken, then dropped (see _Connector)


class _Connector(aiohttp.TCPConnector):
    """aiohttp's connector, which does not hand out a connection that spoke unasked.

    An upstream may send a response to no request on an idle connection (a
    408 before it closes it). aiohttp queues it, and would hand it to the
    next request on that connection as its answer; the connection is
    dropped here instead, as the fast client drops it. (A stray head cut
    short is not seen here: aiohttp discards it with the parser it replaces.)
    """

    async def connect(
        self,
        req: aiohttp.ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's signature)
    ) -> Connection:
        while True:
            connection = await super().connect(req, traces, timeout)
            protocol = connection.protocol
            if protocol is None or not protocol.should_close:
                return connection
            connection.close()


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        # aiohttp encodes what it writes as UTF-8: other bytes cannot go out as given.
        raise ValueError(f"{what} is not UTF-8: aiohttp cannot send it as given") from None


def _reason(error: OSError) -> str:
    """An OSError told without its text (aiohttp's may carry the URL)."""
    if error.errno is not None:
        return f"[Errno {error.errno}] {os.strerror(error.errno)}"
    return error.__class__.__name__


def _root(error: BaseException) -> BaseException:
    """The first cause of an exception aiohttp wrapped (once or twice)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: never logged as unhandled


class AiohttpResponse:
    """An aiohttp response seen through :class:`.interface.Response`."""

    __slots__ = ("_closed", "_delivered", "_error", "_protocol", "_response", "_watched", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse, head_request: bool) -> None:
        self._response = response
        self.status = response.status
        self.headers: Headers = [(name.lower(), value) for name, value in response.raw_headers]
        self._delivered = 0  # body bytes returned by read()
        self._error: ResponseBroken | None = None
        # A body delimited by the close: aiohttp ends it cleanly however the
        # connection ended. Its ``closed`` future tells a reset from a FIN.
        self._closed: asyncio.Future[None] | None = None
        # A framed body whose connection closes before its end: aiohttp sets
        # no error on the body when its parser failed first (a malformed
        # chunk), and a reader would wait for its deadline. Told here instead.
        self._watched: asyncio.Future[None] | None = None
        connection = response.connection
        protocol = self._protocol = connection.protocol if connection is not None else None
        if protocol is not None and not head_request and self.status not in (204, 304):
            closed = protocol.closed
            if closed is None:
                pass
            elif body_framed(self.headers):
                closed.add_done_callback(self._closed_early)
                self._watched = closed
            else:
                closed.add_done_callback(_consume)
                self._closed = closed

    def header(self, name: bytes) -> bytes | None:
        return header_value(self.headers, name)

    @property
    def complete(self) -> bool:
        return self._error is None and self._response.content.at_eof() and not self._lost()

    async def read(self, deadline: float | None = None) -> bytes:
        """What has arrived since the last read; ``b""`` at the end of the body.

        Raises :class:`TimeoutError` if nothing arrives before ``deadline`` (a
        ``loop.time()``), and :class:`ResponseBroken` if the body was cut short.
        """
        if self._error is not None:
            raise self._error
        content = self._response.content
        try:
            if deadline is None:
                data = await content.readany()
            else:
                async with asyncio.timeout_at(deadline):
                    data = await content.readany()
        except _Malformed as exc:
            return self._broken(f"malformed response ({_root(exc).__class__.__name__})")
        except aiohttp.ClientPayloadError as exc:
            return self._broken(f"body cut short ({_root(exc).__class__.__name__})")
        except aiohttp.ClientOSError as exc:
            return self._broken(f"connection lost ({_reason(exc)})")
        except aiohttp.ClientConnectionError as exc:
            return self._broken(f"connection lost ({exc.__class__.__name__})")
        if data:
            self._delivered += len(data)
        elif self._lost():
            return self._broken("connection lost (reset before the end of a body delimited by the close)")
        return data

    def close(self) -> None:
        """Done with this response. If its body is unfinished, the connection is
        dropped, which is what tells the upstream to stop generating."""
        self._unwatch()
        response = self._response
        if self._error is None and response.content.is_eof() and not self._lost():
            response.release()  # all of it arrived: the connection is back in the pool already
        else:
            response.close()

    def _closed_early(self, closed: asyncio.Future[None]) -> None:
        _consume(closed)
        content = self._response.content
        if not content.is_eof() and content.exception() is None:
            # The protocol keeps the parser's error, if that is why it closed.
            error = self._protocol.exception() if self._protocol is not None else None
            if error is None:
                content.set_exception(
                    aiohttp.ClientPayloadError("connection closed before the end of the body")
                )
            else:
                malformed = _Malformed("malformed response")
                malformed.__cause__ = error
                content.set_exception(malformed)

    def _unwatch(self) -> None:
        # The future lives as long as the connection, which outlives this
        # response when it is kept alive: take this response's callback off.
        watched, self._watched = self._watched, None
        if watched is not None:
            watched.remove_done_callback(self._closed_early)

    def _lost(self) -> bool:
        closed = self._closed
        return (
            closed is not None and closed.done() and not closed.cancelled() and closed.exception() is not None
        )

    def _broken(self, reason: str) -> bytes:
        """Fail the body; first hand over what arrived before the failure, if any did."""
        self._error = ResponseBroken(reason)
        self._unwatch()
        response = self._response
        content = response.content
        data = b""
        if content.total_bytes > self._delivered:
            # aiohttp's readers raise the error ahead of the bytes still
            # buffered; the fast client hands those over first, so must this.
            data = content._read_nowait(-1)
        response.close()  # the connection is gone: let go of it now, as the fast client does
        if data:
            self._delivered += len(data)
            return data
        raise self._error


class AiohttpClient:
    """A keep-alive pool of upstream connections: one aiohttp session, opened in the worker's loop."""

    def __init__(self, connect_timeout: float, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | None = None

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            context = ssl.create_default_context()
            context.set_alpn_protocols(["http/1.1"])
            self._ssl = context
        return self._ssl

    @property
    def is_open(self) -> bool:
        return self._session is not None and not self._session.closed

    async def open(self) -> None:
        if self.is_open:
            return
        trace = aiohttp.TraceConfig()
        trace.on_connection_reuseconn.append(_on_reuse)
        trace.on_connection_create_start.append(_on_create)
        connector = _Connector(
            # No limit: aiohttp would queue requests for a free connection
            # without bound; the passthrough caps concurrency itself.
            limit=0,
            ttl_dns_cache=DNS_TTL,
            keepalive_timeout=self.idle_timeout,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            trace_configs=[trace],
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
            # Only the connect timeout is aiohttp's: a generation may rightly
            # stream for many minutes, and reads carry their own deadline.
            timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout, sock_read=None),
            read_bufsize=READ_BUFSIZE,
            max_line_size=MAX_FIELD_BYTES,
            max_field_size=MAX_FIELD_BYTES,
            max_headers=MAX_HEADERS,
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def request(
        self,
        origin: Origin,
        method: str,
        target: bytes,
        headers: Headers,
        body: Body = None,
        length: int | None = None,
    ) -> AiohttpResponse:
        """:meth:`.interface.Client.request`, through aiohttp (see the module's notes)."""
        session = self._session
        if session is None:
            raise RuntimeError("the upstream client is not open")
        if (
            line_breaks(method.encode("ascii"))
            or line_breaks(target)
            or any(line_breaks(name) or line_breaks(value) for name, value in headers)
        ):
            raise ValueError("line break or control character in an upstream request line or header")
        path = _text(target, "the request target")
        url = URL(origin.url + path, encoded=True)
        # yarl drops an empty query's "?": the only liberty taken with a target.
        if url.raw_path_qs != path and url.raw_path_qs + "?" != path:
            raise ValueError("the request target cannot go through aiohttp as given")
        wire: list[tuple[str, str]] = [("host", origin.host_header.decode("ascii"))]
        wire += [(_text(name, "a header name"), _text(value, "a header value")) for name, value in headers]
        frame = framing(method, body, length)
        header = None if frame is None else (frame[0].decode("ascii"), frame[1].decode("ascii"))
        if header is not None:
            wire.append(header)
        tls = self.ssl_context if origin.scheme == "https" else True
        exchange = (_Exchange(wire),)
        # aiohttp chunks a streamed body unless it is given a Content-Length
        # first; every other header it is given is replaced by the middleware.
        first = (
            [header]
            if header is not None and isinstance(body, AsyncIterator) and length is not None
            else None
        )

        stale: ResponseBroken | None = None
        while True:
            attempt = _Attempt()
            # b"" goes as no body: aiohttp would frame an empty payload itself.
            data = self._pieces(body, attempt) if isinstance(body, AsyncIterator) else body or None
            try:
                response = await session.request(
                    method,
                    url,
                    headers=first,
                    data=data,
                    allow_redirects=False,
                    ssl=tls,
                    trace_request_ctx=attempt,
                    middlewares=exchange,
                )
            except Exception as exc:
                if attempt.body_error is not None:
                    raise attempt.body_error from None  # the caller's body failed: its own error
                error = _translate(exc)
                if error is None:
                    raise
                if isinstance(error, ConnectFailed) and stale is not None:
                    # The stale connection may have delivered the request:
                    # never report it as one the upstream did not see.
                    raise stale from None
                if not (
                    isinstance(error, ResponseBroken)
                    and error.before_response
                    and attempt.reused
                    and not isinstance(body, AsyncIterator)
                ):
                    raise error from None
                # A stale keep-alive connection: once more, on the next one the
                # pool gives (another kept-alive one, or a fresh one), as the
                # fast client does. A request that went out on a fresh
                # connection is never sent twice.
                stale = error
                continue
            if response.status == 101:
                # aiohttp hands over an upgrade as a response with no body.
                # It answers only a request that asked for one, which Sluice never sends.
                response.close()
                raise ResponseBroken("malformed response (an upgrade nobody asked for)")
            return AiohttpResponse(response, method == "HEAD")

    @staticmethod
    async def _pieces(body: AsyncIterator[bytes], attempt: _Attempt) -> AsyncIterator[bytes]:
        """The caller's body, its empty pieces left out, and its failure kept for the caller."""
        try:
            async for piece in body:
                if piece:
                    yield piece
        except Exception as exc:
            attempt.body_error = exc
            raise


def _translate(exc: Exception) -> UpstreamError | None:
    """aiohttp's exception as the interface's, with no URL or header value in its message.

    None for an exception that is not aiohttp's: it goes to the caller as is.
    """
    if isinstance(exc, _Unretried):
        exc = exc.error
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectFailed(None, timed_out=True)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cause = exc.certificate_error
        return ConnectFailed(cause if isinstance(cause, OSError) else None)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectFailed(exc.os_error)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        # A message: the head had begun to arrive. A string: not a byte of a response had.
        return ResponseBroken(
            "connection closed by the upstream", before_response=isinstance(exc.message, str)
        )
    if isinstance(exc, aiohttp.ClientResponseError):
        # An HTTP parse error in the head (aiohttp's message quotes the head: not kept).
        return ResponseBroken(f"malformed response ({_root(exc).__class__.__name__})")
    if isinstance(exc, aiohttp.ClientOSError):
        return ResponseBroken(f"connection lost ({_reason(exc)})", before_response=True)
    if isinstance(exc, aiohttp.ClientError):
        return ResponseBroken(f"connection lost ({exc.__class__.__name__})", before_response=True)
    return None
