"""A lean HTTP/1.1 server protocol, plugged into uvicorn in place of its own.

Why: counted with callgrind (``make bench-instructions``, issue 7), uvicorn's
httptools protocol spent about 131 k instructions per small request serving a
static ASGI app, where the same parser, one task per request and the same
ASGI messages take about 61 k. On Sluice's hot path that difference was the
largest single cost left. uvicorn still owns everything around the
connection: sockets, workers, signals, lifespan, graceful shutdown and the
``date`` header; this module is what ``uvicorn.Config(http=...)`` accepts.

What it does the same as uvicorn's protocol: httptools (llhttp) parsing,
one asyncio task per request, keep-alive and pipelining (answered in order),
``Expect: 100-continue`` answered on the first ``receive()``, chunked
responses when the app sets no ``Content-Length``, ``http.disconnect`` once
the client is gone or the response is complete, a 400 for a request that
cannot be parsed, a 500 when the app fails before answering, a cut
connection (never a terminating chunk) when it fails or returns after
starting, ``send`` waiting while the socket's buffer is full, websocket
upgrades handed to uvicorn's websocket protocol, ``limit_concurrency`` and
``timeout_keep_alive``.

One addition: the ``sluice.disconnect`` scope extension (see
:meth:`_Cycle.watch_disconnect`), which tells the app of a client gone without
its having to wait in ``receive()`` in a task of its own.

Where it differs, on purpose:

* The response head is written with the first body piece when both are sent
  in the same event-loop step (a whole small JSON answer is then one
  ``send()`` system call, not two); otherwise it goes out at the end of that
  step, so a stream's headers are never held back.
* A request head larger than ``MAX_HEAD_BYTES`` is answered 431 and the
  connection closed; uvicorn's httptools protocol buffers it without limit.
* An absolute-form target (``GET http://host/x``) keeps its whole text in
  ``raw_path``, so path validation refuses it rather than seeing ``/x``.
* A response to an HTTP/1.0 request without ``Content-Length`` is delimited
  by closing the connection, not chunked (1.0 clients cannot read chunks).
* A parse error in the middle of a request whose answer has started cuts the
  connection instead of writing a 400 into that answer.
* An app returning without completing its response is logged at DEBUG, not
  ERROR: that is how Sluice cuts a failed stream, and it logs its own warning.
* No uvicorn access log (Sluice writes its own).
* A connection that sends nothing is closed after ``timeout_keep_alive``,
  and a request head not whole ``head_timeout`` after its first byte is
  answered 408 and closed (checked once per ``head_timeout``, so within two).
  uvicorn's protocol waits for ever in both cases: without nginx in front, a
  client trickling bytes would hold a connection for good.
"""

from __future__ import annotations

import asyncio
import contextvars
import http
import logging
import re
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal, cast

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.server import ServerState

from .interface import DISCONNECT_EXTENSION, connection_tokens
from .wire import line_breaks, name_of, value_of

__all__ = ["HEAD_TIMEOUT", "MAX_HEAD_BYTES", "H1Protocol"]

logger = logging.getLogger("uvicorn.error")

HIGH_WATER = 64 * 1024  # buffered request body bytes that pause reading from the client
MAX_HEAD_BYTES = 64 * 1024  # request line plus headers; nginx allows 32 KiB by default
HEAD_TIMEOUT = 60.0  # seconds from a request's first byte to its whole head: nginx's client_header_timeout

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]

_ASGI: Final = {"version": "3.0", "spec_version": "2.3"}
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_CHUNKED_HEADER: Final = b"transfer-encoding: chunked\r\n"
_CLOSE_HEADER: Final = b"connection: close\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"
_BAD_NAME: Final = re.compile(b"[^!#$%&'*+\\-.^_`|~0-9A-Za-z]|^$")
_GOOD_NAMES: Final[set[bytes]] = set()  # header names already checked; they repeat on every response
_GOOD_NAMES_MAX: Final = 4096
_BODYLESS_STATUS: Final = frozenset({204, 304})
_METHODS: Final[dict[bytes, str]] = {}


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


_STATUS_LINES: Final = {status: _status_line(status) for status in range(100, 600)}


def _address(info: object) -> tuple[str, int] | None:
    if isinstance(info, (tuple, list)) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None


def _simple_response(status: int, text: str) -> bytes:
    body = text.encode()
    head = b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    return _STATUS_LINES[status] + head % len(body) + body


class H1Protocol(asyncio.Protocol):
    """One client connection: parses requests, runs the app for each, writes its answers."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        head_timeout: float = HEAD_TIMEOUT,
    ) -> None:
        # A constructor argument rather than a class attribute to override:
        # compiled (mypyc) code reads its own attribute, never a subclass's.
        self.head_timeout = head_timeout
        if not config.loaded:
            config.load()
        self.config = config
        self.app: App = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.server_state = server_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.app_state = app_state
        self.root_path = config.root_path
        self.keep_alive_timeout = float(config.timeout_keep_alive)
        self.limit_concurrency = config.limit_concurrency
        self.fresh_context = bool(getattr(config, "reset_contextvars", False))
        self.parser = httptools.HttpRequestParser(self)
        # As uvicorn: bytes after a `Connection: close` request are ignored,
        # not an error that would replace the answer with a 400.
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)

        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.scheme = "http"
        self.cycle: _Cycle | None = None  # the request being answered (or last answered)
        self.pipeline: deque[_Cycle] = deque()  # parsed requests waiting for their turn
        self.parsing: _Cycle | None = None  # the request whose body the parser is reading
        self.read_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        # Keep-alive and head timeouts: one timer per connection, re-armed
        # only when it fires early, instead of a new timer for every request.
        self.idle_since = 0.0  # when the connection became idle; 0 while not idle
        self.head_since = 0.0  # when the head being parsed began; 0 outside one
        self.idle_timer: asyncio.TimerHandle | None = None
        # Per request, while its head is parsed.
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.expect_continue = False
        self.in_head = False
        self.head_bytes = 0
        self.websocket = False

    # ------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)  # type: ignore[arg-type]  # uvicorn's set lists its own classes
        self.client = _address(transport.get_extra_info("peername"))
        self.server = _address(transport.get_extra_info("sockname"))
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        self._became_idle()  # a connection that never sends a request is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        cycle = self.cycle
        if cycle is not None:
            if not cycle.finished:
                cycle.disconnected = True
            cycle.wake()
        self.resume_writing()  # a send waiting for the socket returns (and is ignored)
        self._stop_idle_timer()
        if exc is None:
            self.transport.close()

    def eof_received(self) -> None:
        pass  # as uvicorn: the transport closes, and connection_lost tells the app

    def data_received(self, data: bytes) -> None:
        if self.idle_since:
            # Bytes while idle (the rest of a body answered early, or the next
            # request on its way): the connection is in use, not idle.
            self.idle_since = self.loop.time()
        began = self.in_head
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgraded()
            return
        except httptools.HttpParserError as exc:
            self._bad_request(400, f"Invalid HTTP request received: {exc}")
            return
        # A head still incomplete: count what it has taken so far. The piece
        # it began in is not counted (it may hold earlier pipelined requests),
        # so a head is cut at MAX_HEAD_BYTES plus one read.
        if self.in_head and began:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self._bad_request(431, "Request header fields too large.")

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close when idle, else after the current answer."""
        cycle = self.cycle
        if cycle is None or cycle.finished:
            self.transport.close()
        else:
            cycle.keep_alive = False

    # ----------------------------------------------------------- flow control
    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter, self.drain_waiter = self.drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        if self.drain_waiter is None:
            self.drain_waiter = self.loop.create_future()
        await asyncio.shield(self.drain_waiter)  # shared by every sender waiting

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    # ------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.expect_continue = False
        self.in_head = True
        self.head_bytes = 0
        self.idle_since = 0.0  # busy: the keep-alive timeout leaves the connection alone
        self.head_since = self.loop.time()  # but the head must come whole in time
        if self.idle_timer is None:
            self.idle_timer = self.loop.call_later(self.head_timeout, self._idle_check)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_since = 0.0
        parser = self.parser
        if parser.should_upgrade() and self._is_websocket():
            self.websocket = True  # handed over when the parser stops at the upgrade
            return
        url = self.url
        target, _, query = url.partition(b"?")
        if url.find(b"#") != -1:  # find, not `in`: see headers.py
            target, query = target.partition(b"#")[0], query.partition(b"#")[0]
        # An exception here reaches data_received as a parser error: a 400.
        path = target.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        method = parser.get_method()
        name = _METHODS.get(method)
        if name is None:
            name = method.decode("ascii")
            if len(_METHODS) < 64:  # any token is a method: remember only the first few
                _METHODS[method] = name
        version = parser.get_http_version()
        scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": name,
            "root_path": self.root_path,
            "path": self.root_path + path if self.root_path else path,
            "raw_path": self.root_path.encode() + target if self.root_path else target,
            "query_string": query,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }
        keep_alive = version != "1.0" and parser.should_keep_alive()
        cycle = _Cycle(self, scope, keep_alive, self.expect_continue)
        scope["extensions"] = {DISCONNECT_EXTENSION: cycle.watch_disconnect}
        if self.limit_concurrency is not None and (
            len(self.connections) >= self.limit_concurrency or len(self.tasks) >= self.limit_concurrency
        ):
            logger.warning("Exceeded concurrency limit.")
            cycle.app = cast(App, service_unavailable)
        self.parsing = cycle
        current = self.cycle
        if current is None or current.finished:
            self.cycle = cycle
            self._start(cycle)
        else:
            # Pipelined: answered once the one before is complete. Reading
            # stops meanwhile, so a client cannot queue requests without limit.
            self.pipeline.append(cycle)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        if cycle is None or cycle.finished:
            return  # answered already: the rest of the body is read and dropped
        cycle.body += body
        if len(cycle.body) > HIGH_WATER:
            self.pause_reading()
        cycle.wake()

    def on_message_complete(self) -> None:
        cycle = self.parsing
        if cycle is None or cycle.finished:
            return
        cycle.request_body = "parsed"
        cycle.wake()

    # ----------------------------------------------------------------- steps
    def _start(self, cycle: _Cycle) -> None:
        if self.fresh_context:
            task = self.loop.create_task(cycle.run(), context=contextvars.Context())
        else:
            task = self.loop.create_task(cycle.run())
        cycle.task = task
        self.tasks.add(task)

    def response_complete(self, cycle: _Cycle) -> None:
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        if self.pipeline:  # its body, if any, was buffered in its own cycle
            self.cycle = self.pipeline.popleft()
            self._start(self.cycle)
            if not self.pipeline:
                self.resume_reading()
        else:
            self.resume_reading()
            self._became_idle()

    def _became_idle(self) -> None:
        self.idle_since = self.loop.time()
        if self.idle_timer is None:
            self.idle_timer = self.loop.call_later(
                self._check_within(self.keep_alive_timeout), self._idle_check
            )

    def _check_within(self, seconds: float) -> float:
        # The timer comes back at least every head_timeout, so a head begun
        # while it is armed for a later keep-alive deadline is still cut
        # within two head timeouts of its first byte, with no timer per request.
        return min(seconds, self.head_timeout)

    def _idle_check(self) -> None:
        self.idle_timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        answering = self.cycle is not None and not self.cycle.finished
        if self.head_since and not answering:
            # A head being trickled in. (Behind an answer under way, it is
            # left until that answer completes: reading may be paused.)
            left = self.head_since + self.head_timeout - now
            if left <= 0:
                self._bad_request(408, "Request head not received in time.")
                return
        elif self.idle_since:
            left = self.idle_since + self.keep_alive_timeout - now
            if left <= 0:
                self.transport.close()
                return
        else:
            return  # busy: re-armed when the answer completes
        self.idle_timer = self.loop.call_later(self._check_within(left), self._idle_check)

    def _stop_idle_timer(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    def _bad_request(self, status: int, message: str) -> None:
        logger.warning(message)
        cycle, answering = self.cycle, False
        if cycle is not None and not cycle.finished:
            cycle.disconnected = True  # the app sees the client gone; its sends go nowhere
            cycle.wake()
            answering = cycle.answer == "started"
        if not answering:  # never write a 400 into an answer already under way
            self.transport.write(_simple_response(status, message))
        self.transport.close()

    def _is_websocket(self) -> bool:
        if self.config.ws_protocol_class is None:
            return False
        upgrade, tokens = None, []
        for name, value in self.headers:
            if name == b"connection":
                tokens = connection_tokens(value)
            elif name == b"upgrade":
                upgrade = value.lower()
        return upgrade == b"websocket" and b"upgrade" in tokens

    def _upgraded(self) -> None:
        if not self.websocket:
            # An upgrade we do not speak (h2c, CONNECT...): answered as plain
            # HTTP; what follows is not HTTP/1.1, so the connection ends there.
            # It is the request just parsed, which may wait behind another.
            cycle = self.parsing
            if cycle is not None:
                cycle.keep_alive = False
                if cycle.request_body == "reading":
                    cycle.request_body = "parsed"
                    cycle.wake()
            return
        # As uvicorn's own protocol does: replay the head to the websocket protocol.
        self.connections.discard(self)
        self._stop_idle_timer()
        head = [self.parser.get_method(), b" ", self.url, b" HTTP/1.1\r\n"]
        for name, value in self.headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        protocol = self.config.ws_protocol_class(  # type: ignore[call-arg,misc]
            config=self.config, server_state=self.server_state, app_state=self.app_state
        )
        protocol.connection_made(self.transport)
        protocol.data_received(b"".join(head))
        self.transport.set_protocol(protocol)


# How far a request's body has come: the parser is still reading it; the
# parser has all of it, and the app has yet to receive its last message; the
# app has received all of it.
BodyState = Literal["reading", "parsed", "delivered"]
# How far the answer has come: not begun; its head sent (or held back to go
# with the first body piece); complete; cut short (the connection closed
# without the rest: the app failed, or returned without completing it).
AnswerState = Literal["pending", "started", "complete", "cut"]
# How the answer's body is delimited on the wire.
Framing = Literal["none", "length", "chunked", "close"]


class _Cycle:
    """One request and its answer: the ASGI ``receive`` and ``send`` the app gets."""

    __slots__ = (
        "answer",
        "app",
        "body",
        "conn",
        "continue_due",
        "disconnected",
        "framing",
        "head",
        "head_only",
        "http10",
        "keep_alive",
        "on_gone",
        "remaining",
        "request_body",
        "scope",
        "task",
        "transport",
        "waiter",
    )

    def __init__(
        self, conn: H1Protocol, scope: dict[str, Any], keep_alive: bool, expect_continue: bool
    ) -> None:
        self.conn = conn
        # Given to the app, and dropped once it runs: the scope holds our
        # watch_disconnect, and keeping it here too would make a reference
        # cycle that only the garbage collector could free.
        self.scope: dict[str, Any] | None = scope
        self.head_only = scope["method"] == "HEAD"
        self.http10 = scope["http_version"] == "1.0"
        self.app: App = conn.app
        self.task: asyncio.Task[None] | None = None
        self.transport = conn.transport
        self.keep_alive = keep_alive
        self.disconnected = False  # the client is gone (or must be treated as gone)
        # Request side.
        self.request_body: BodyState = "reading"
        self.body = bytearray()  # received, not yet handed to the app
        self.continue_due = expect_continue  # a 100 Continue to send when the app first reads
        self.waiter: asyncio.Future[None] | None = None
        self.on_gone: Callable[[], None] | None = None  # see watch_disconnect
        # Response side.
        self.answer: AnswerState = "pending"
        self.framing: Framing = "none"
        self.remaining = -1  # with "length" framing: the body bytes Content-Length still allows
        self.head: bytes | None = None  # written with the first body piece, or at the end of the step

    @property
    def finished(self) -> bool:
        """Whether the answer is over: complete, or cut short."""
        answer = self.answer
        return answer == "complete" or answer == "cut"

    def wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.on_gone is not None and (self.disconnected or self.finished):
            on_gone, self.on_gone = self.on_gone, None
            if self.disconnected:
                on_gone()

    def watch_disconnect(self, receive: object, on_gone: Callable[[], None] | None) -> bool:
        """The disconnect scope extension: ``on_gone()`` once the client has gone.

        What a task waiting in ``receive()`` for ``http.disconnect`` would
        learn, without the task. Called at most once, before the response is
        complete; ``None`` withdraws it. Only for the ``receive`` this server
        gave the app (False otherwise): a layer that wraps it may have its own
        idea of the client's messages, so such a caller keeps waiting in its
        ``receive()``.
        """
        if receive != self.receive:
            return False
        if on_gone is not None and self.disconnected:
            self.conn.loop.call_soon(on_gone)  # gone already: told as soon as it can be
        elif not self.finished:
            self.on_gone = on_gone
        return True

    # ------------------------------------------------------------------ run
    async def run(self) -> None:
        try:
            scope, self.scope = self.scope, None
            assert scope is not None  # run once
            result: object = await self.app(scope, self.receive, self.send)  # type: ignore[func-returns-value]
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                logger.error("Exception in ASGI application\n", exc_info=exc)
            if self.answer == "pending" and not self.disconnected:
                self._write_now(_simple_response(500, "Internal Server Error"))
                self.disconnected = True
            self._cut()
        else:
            if result is not None:
                logger.error("ASGI callable should return None, but returned '%s'.", result)
                self._cut()
            elif self.answer == "pending" and not self.disconnected:
                logger.error("ASGI callable returned without starting response.")
                self._write_now(_simple_response(500, "Internal Server Error"))
                self._cut()
            elif not self.finished and not self.disconnected:
                logger.debug("ASGI callable returned without completing response.")
                self._cut()
        finally:
            self.on_gone = None  # the app is done: nothing left to tell (and no cycle kept)
            if self.task is not None:
                self.conn.tasks.discard(self.task)

    def _cut(self) -> None:
        # Whatever was written goes out, then the connection ends: a client
        # never mistakes a failed answer for a complete one.
        self.answer = "cut"
        self._write_now(b"")  # a head still held back
        self.transport.close()

    def _write_now(self, data: bytes) -> None:
        head, self.head = self.head, None
        if head is not None:
            data = head + data
        if data:
            self.transport.write(data)

    def _flush_head(self) -> None:
        if not self.transport.is_closing():
            self._write_now(b"")  # nothing when the first body piece took the head along

    # -------------------------------------------------------------- receive
    async def receive(self) -> Message:
        if self.continue_due:
            self.continue_due = False
            if not self.transport.is_closing() and self.request_body == "reading":
                self.transport.write(_CONTINUE)
        while not (self.disconnected or self.finished or self.body or self._end_pending()):
            if self.conn.parsing is self:
                self.conn.resume_reading()
            if self.waiter is None:
                self.waiter = self.conn.loop.create_future()
            await asyncio.shield(self.waiter)  # several receivers may wait on one waiter
        if self.disconnected or self.finished:
            return {"type": "http.disconnect"}
        body, self.body = bytes(self.body), bytearray()
        more_body = self._more_body()
        if not more_body:
            self.request_body = "delivered"
        elif self.conn.parsing is self:
            self.conn.resume_reading()  # paused above HIGH_WATER: the app has taken it
        return {"type": "http.request", "body": body, "more_body": more_body}

    # Methods, not tests of self.request_body in place: callbacks change it
    # while receive() waits, and a test would narrow its type past the wait.
    def _end_pending(self) -> bool:
        return self.request_body == "parsed"

    def _more_body(self) -> bool:
        return self.request_body == "reading"

    # ----------------------------------------------------------------- send
    async def send(self, message: Message) -> None:
        if self.conn.write_paused and not self.disconnected:
            await self.conn.drain()
        if self.disconnected:
            return
        kind = message["type"]
        answer = self.answer
        if answer == "pending":
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{kind}'.")
            self._head(message["status"], message.get("headers", ()))
        elif answer == "started":
            if kind != "http.response.body":
                raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{kind}'.")
            self._body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' sent, after response already completed.")

    def _head(self, status: int, headers: Any) -> None:
        try:
            parts = [_STATUS_LINES[status]]
        except (KeyError, TypeError):
            raise RuntimeError(f"Invalid HTTP status code {status!r}.") from None
        # Locals until the head is known to be valid: a refused start changes nothing.
        lines, remaining, keep_alive = 1, -1, self.keep_alive
        framing: Framing = "close"
        close = False
        for pair in (*self.conn.server_state.default_headers, *headers):
            # Typed (ASGI header names and values are bytes): compiled, the
            # comparisons below are then byte compares, not generic ones.
            # name_of/value_of index a tuple in C, and a list as well.
            name = name_of(pair)
            value = value_of(pair)
            if name not in _GOOD_NAMES:  # a name found there is lower-case already
                name = name.lower()
                if name not in _GOOD_NAMES:
                    if _BAD_NAME.search(name):
                        raise RuntimeError("Invalid HTTP header name.")
                    if len(_GOOD_NAMES) < _GOOD_NAMES_MAX:
                        _GOOD_NAMES.add(name)
            if name == b"content-length":
                if framing == "close":
                    try:
                        remaining = int(value)
                    except ValueError:
                        raise RuntimeError("Invalid Content-Length header.") from None
                    framing = "length"
            elif name == b"transfer-encoding":
                if value.lower() == b"chunked":
                    remaining, framing = -1, "chunked"
            elif name == b"connection" and b"close" in connection_tokens(value):
                keep_alive, close = False, True
            parts.append(name)  # four appends: `+=` a tuple builds the tuple first
            parts.append(b": ")
            parts.append(value)
            parts.append(b"\r\n")
            lines += 1
        if status in _BODYLESS_STATUS or status < 200 or self.head_only:
            remaining, framing = -1, "none"
        elif framing == "close":
            if self.http10:
                keep_alive = False  # 1.0 clients cannot read chunks: the close ends the body
            else:
                framing = "chunked"
                parts.append(_CHUNKED_HEADER)
                lines += 1
        if not keep_alive and not close:
            parts.append(_CLOSE_HEADER)
            lines += 1
        parts.append(b"\r\n")
        head = b"".join(parts)
        if line_breaks(head) != 2 * (lines + 1):  # the status line, each header, the blank line
            raise RuntimeError("Invalid HTTP header value.")
        self.remaining, self.framing, self.keep_alive = remaining, framing, keep_alive
        self.answer = "started"
        self.continue_due = False  # answered without reading the body: no 100 Continue
        self.head = head
        self.conn.loop.call_soon(self._flush_head)

    def _body(self, body: bytes, more_body: bool) -> None:
        framing = self.framing
        if framing == "none":
            data = b""
        elif framing == "chunked":
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more_body:
                data += _LAST_CHUNK
        else:
            if framing == "length":
                if len(body) > self.remaining:
                    raise RuntimeError("Response content longer than Content-Length")
                self.remaining -= len(body)
            data = body
        if not more_body and self.remaining > 0:
            raise RuntimeError("Response content shorter than Content-Length")
        self._write_now(data)
        if not more_body:
            self.answer = "complete"
            self.wake()  # a receive() waiting for the client now returns http.disconnect
            if not self.keep_alive:
                self.transport.close()
            self.conn.response_complete(self)
