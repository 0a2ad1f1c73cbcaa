"""The HTTP/1.1 server protocol (proxy/http/h1server.py) under a real uvicorn, over loopback sockets.

H1Protocol replaces uvicorn's HttpToolsProtocol and must behave like it on
the wire: these tests are black-box. Each starts ``uvicorn.Server`` with
``http=H1Protocol`` on a socket bound here, runs it as a task on the test's
own event loop (so the apps below can share events with the test), and
talks to it with raw sockets so framing is asserted byte for byte. The last
test runs the production configuration (uvloop, in its own thread).

Anything the server logs at ERROR (an exception in a protocol callback
surfaces only there) fails the test, unless the test makes the app fail on
purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import hashlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import uvicorn
import uvloop
import websockets.asyncio.client

from proxy.http.eventloop import UVICORN_LOOP, Loop
from proxy.http.h1server import MAX_HEAD_BYTES, H1Protocol
from tests.rawhttp import RawConnection, RawResponse

pytestmark = pytest.mark.timeout(10)

Message = dict[str, Any]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

SMALL_BUFFER = (
    16 * 1024
)  # socket buffers for the flow-control tests: the kernel must not hide a missing pause
PIECE = 64 * 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


# The client side: raw bytes out, responses parsed by tests/rawhttp.py.


def http_request(
    method: str = "GET", target: str = "/", *headers: str, body: bytes | None = None, version: str = "1.1"
) -> bytes:
    """One request's bytes; a Content-Length is added when there is a body."""
    lines = [f"{method} {target} HTTP/{version}", "Host: sluice.test", *headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def chunked(*pieces: bytes) -> bytes:
    """A chunked body: each piece one chunk, then the terminator."""
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


class Client(RawConnection):
    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, *, bodyless: bool = False) -> RawResponse:
        """The next response; ``bodyless`` for HEAD, 204 and 304, whose head is all there is."""
        response = await self.read_head()
        return response if bodyless else await self.read_body(response)

    async def closed(self, timeout: float = 2.0) -> bytes:
        """Everything the server sends until it closes the connection (TimeoutError if it does not)."""
        data = b""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    piece = await self.reader.read(65536)
                except ConnectionError:
                    return data
                if not piece:
                    return data
                data += piece

    async def assert_quiet(self, seconds: float = 0.1) -> None:
        """Nothing arrives, and the connection stays open, for ``seconds``."""
        try:
            async with asyncio.timeout(seconds):
                data = await self.reader.read(1)
        except TimeoutError:
            return
        raise AssertionError(f"expected nothing from the server, got {data!r}")

    @property
    def port(self) -> int:
        return int(self.writer.get_extra_info("sockname")[1])


# The server side.


class ErrorRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Running:
    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None], port: int) -> None:
        self.server = server
        self.task = task  # server.serve()
        self.port = port
        self.clients: list[Client] = []

    async def connect(self, *, rcvbuf: int | None = None, sndbuf: int | None = None) -> Client:
        sock = socket.socket()
        # Set before connecting, so the window is small from the handshake on.
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
        client = Client(*await asyncio.open_connection(sock=sock))
        self.clients.append(client)
        return client


def listening_socket(small_buffers: bool = False) -> socket.socket:
    sock = socket.socket()
    if small_buffers:
        # Accepted sockets inherit the listener's buffer sizes.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def config(app: App, **options: Any) -> uvicorn.Config:
    settings: dict[str, Any] = {
        "http": H1Protocol,
        "lifespan": "off",
        "log_level": "warning",
        "log_config": None,  # uvicorn's dictConfig would rewire the test process's logging
        "access_log": False,
        "proxy_headers": False,
        "timeout_graceful_shutdown": 3,  # if the shutdown test's request never finishes: fail, not hang
        **options,
    }
    return uvicorn.Config(app, **settings)


@contextlib.contextmanager
def error_records() -> Iterator[ErrorRecords]:
    handler = ErrorRecords()
    # uvicorn's loggers may have propagation off if anything configured them earlier.
    loggers = [logging.getLogger(), logging.getLogger("uvicorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@contextlib.asynccontextmanager
async def running(
    app: App, *, small_buffers: bool = False, errors_expected: bool = False, **options: Any
) -> AsyncIterator[Running]:
    """uvicorn with H1Protocol serving ``app`` on 127.0.0.1, as a task of this loop."""
    sock = listening_socket(small_buffers)
    server = uvicorn.Server(config(app, **options))
    with error_records() as errors:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        await eventually(lambda: server.started or task.done())
        if task.done():
            task.result()
        handle = Running(server, task, sock.getsockname()[1])
        try:
            yield handle
        finally:
            for client in handle.clients:
                client.close()
            if task.done():  # the test shut it down itself
                task.result()
            else:
                await stop(server, task)
            sock.close()
    if not errors_expected:
        assert not errors.records, [errors.format(record) for record in errors.records]


async def stop(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    """Stop the server once its clients are gone, without uvicorn's graceful shutdown.

    That one sleeps 0.1-0.2 s; it has a test of its own (section 10). Here the
    listener closes and the server's connections and app tasks must all end
    by themselves: a protocol that never leaves ``server_state.connections``
    would hang uvicorn's shutdown for good.
    """
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    for listener in server.servers:
        listener.close()
    state = server.server_state
    try:
        await eventually(lambda: not state.connections and not state.tasks, timeout=2)
    except TimeoutError:
        left = f"{len(state.connections)} connections and {len(state.tasks)} app tasks"
        raise AssertionError(f"{left} outlived their clients") from None
    finally:
        for leftover in state.tasks:
            leftover.cancel()
    await server.lifespan.shutdown()


async def eventually(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """Wait until ``condition()`` holds (a TimeoutError if it does not within ``timeout``)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


# ASGI app helpers.


async def respond(send: Send, body: bytes = b"", status: int = 200, *headers: tuple[bytes, bytes]) -> None:
    start_headers = [(b"content-length", b"%d" % len(body)), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": body})


async def receive_all(receive: Receive) -> list[Message]:
    """Every message of the request body, through the one with more_body False (or a disconnect)."""
    messages = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            return messages


def body_of(messages: list[Message]) -> bytes:
    return b"".join(message.get("body", b"") for message in messages)


def recording(body: bytes) -> tuple[list[Scope], App]:
    """An app that keeps the scope of every request it is called for and answers ``body``."""
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await respond(send, body)

    return scopes, app


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the request's target and body: ``<raw_path>?<query> <body>``."""
    body = body_of(await receive_all(receive))
    target = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
    await respond(send, target + b" " + body)


# 1. The scope.


@pytest.mark.parametrize("version", ["1.1", "1.0"])
async def test_the_scope_describes_the_request(version: str) -> None:
    scopes, app = recording(b"ok")
    async with running(app) as server:
        client = await server.connect()
        headers = ("X-Custom: Mixed Case", "x-dup: 1", "X-Dup: 2")
        await client.send(http_request("DELETE", "/a%20b/c%2Fd?x=1&y=%2F", *headers, version=version))
        assert (await client.response()).body == b"ok"

    [scope] = scopes
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.3"}
    assert scope["http_version"] == version
    assert scope["method"] == "DELETE"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/a b/c/d"
    assert scope["raw_path"] == b"/a%20b/c%2Fd"
    assert scope["query_string"] == b"x=1&y=%2F"
    assert scope["headers"] == [
        (b"host", b"sluice.test"),
        (b"x-custom", b"Mixed Case"),
        (b"x-dup", b"1"),
        (b"x-dup", b"2"),
    ]
    assert scope["client"] == ("127.0.0.1", client.port)
    assert scope["server"] == ("127.0.0.1", server.port)
    assert scope["root_path"] == ""
    assert scope["state"] == {}
    assert set(scope["extensions"]) == {"sluice.disconnect"}


async def test_each_request_gets_its_own_copy_of_the_lifespan_state() -> None:
    shared = object()
    states: list[dict[str, Any]] = []
    seen: list[set[str]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            assert (await receive())["type"] == "lifespan.startup"
            scope["state"]["pool"] = shared
            await send({"type": "lifespan.startup.complete"})
            assert (await receive())["type"] == "lifespan.shutdown"
            await send({"type": "lifespan.shutdown.complete"})
            return
        states.append(scope["state"])
        seen.append(set(scope["state"]))
        scope["state"]["leak"] = True  # must not reach the next request
        await respond(send, b"ok")

    async with running(app, lifespan="on") as server:
        client = await server.connect()
        for _ in range(2):
            await client.send(http_request())
            await client.response()

    assert seen == [{"pool"}, {"pool"}]
    assert states[0] is not states[1]
    assert states[1]["pool"] is shared  # a shallow copy: the objects themselves are shared


async def test_an_absolute_form_target_is_kept_whole_in_raw_path() -> None:
    """A reverse proxy must see such a target to refuse it; the path alone would look harmless."""
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        refused = not scope["raw_path"].startswith(b"/")
        await respond(send, b"refused" if refused else b"served", 400 if refused else 200)

    async with running(app) as server:
        client = await server.connect()
        await client.send(http_request("GET", "http://evil.example/v1/x?k=1"))
        response = await client.response()

    assert scopes[0]["raw_path"] == b"http://evil.example/v1/x"
    assert scopes[0]["query_string"] == b"k=1"
    assert (response.status, response.body) == (400, b"refused")


# 2. Request bodies.

BODY = bytes(range(256)) * 64  # 16 KiB, every byte value


@pytest.mark.parametrize(
    ("head", "writes", "expected"),
    [
        pytest.param(http_request("POST", "/", body=b""), [], b"", id="empty"),
        pytest.param(http_request("GET", "/"), [], b"", id="none"),
        pytest.param(http_request("POST", "/", body=BODY), [], BODY, id="content-length"),
        pytest.param(
            http_request("POST", "/", f"Content-Length: {len(BODY)}"),
            [BODY[:1000], BODY[1000:9000], BODY[9000:]],
            BODY,
            id="content-length-in-pieces",
        ),
        pytest.param(
            http_request("POST", "/", "Transfer-Encoding: chunked"),
            [chunked(BODY[:5000], BODY[5000:5001], BODY[5001:])],
            BODY,
            id="chunked",
        ),
        pytest.param(
            # Framing split at awkward places: inside a size line, between a chunk and its CRLF.
            http_request("POST", "/", "Transfer-Encoding: chunked"),
            [b"1", b"0;ext=1\r", b"\n" + BODY[:8], BODY[8:16] + b"\r", b"\n3\r\nabc\r\n", b"0\r\n", b"\r\n"],
            BODY[:16] + b"abc",
            id="chunked-split",
        ),
    ],
)
async def test_a_request_body_reaches_the_app_exactly(
    head: bytes, writes: list[bytes], expected: bytes
) -> None:
    received: list[list[Message]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        received.append(await receive_all(receive))
        await respond(send, b"ok")

    async with running(app) as server:
        client = await server.connect()
        await client.send(head)
        for piece in writes:
            await asyncio.sleep(0.01)  # separate reads on the server, most of the time
            await client.send(piece)
        assert (await client.response()).body == b"ok"

    [messages] = received
    assert all(message["type"] == "http.request" for message in messages)
    assert body_of(messages) == expected
    assert [message["more_body"] for message in messages] == [True] * (len(messages) - 1) + [False]


async def test_a_large_upload_pauses_reading_until_the_app_reads_and_arrives_intact() -> None:
    size = 6 * 1024 * 1024
    upload = hashlib.sha256(b"seed").digest() * (size // 32)
    app_reads = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await app_reads.wait()
        digest, total = hashlib.sha256(), 0
        while True:
            message = await receive()
            digest.update(message["body"])
            total += len(message["body"])
            await asyncio.sleep(0.001)  # a slow reader
            if not message["more_body"]:
                break
        await respond(send, b"%d %s" % (total, digest.hexdigest().encode()))

    async with running(app, small_buffers=True) as server:
        client = await server.connect(sndbuf=SMALL_BUFFER)
        written = 0

        async def upload_body() -> None:
            nonlocal written
            await client.send(http_request("POST", "/", f"Content-Length: {size}"))
            for offset in range(0, size, PIECE):
                await client.send(upload[offset : offset + PIECE])
                written += PIECE

        uploading = asyncio.create_task(upload_body())
        await asyncio.sleep(0.3)
        # The app has read nothing: the server must have stopped reading the socket, so the
        # upload stalls once the (small) kernel buffers and the server's ~64 KiB are full.
        assert written < 1024 * 1024, f"{written} bytes accepted while the app read nothing"
        assert not uploading.done()
        app_reads.set()
        async with asyncio.timeout(5):
            await uploading
            response = await client.response()

    assert response.body == b"%d %s" % (size, hashlib.sha256(upload).hexdigest().encode())


# 3. Expect: 100-continue.


async def test_100_continue_is_sent_when_the_app_first_reads_and_only_once() -> None:
    app_reads = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await app_reads.wait()
        await respond(send, body_of(await receive_all(receive)))

    async with running(app) as server:
        client = await server.connect()
        await client.send(http_request("POST", "/", "Expect: 100-continue", "Content-Length: 10"))
        await client.assert_quiet()  # not on the headers alone: the app has not asked for the body
        app_reads.set()
        async with asyncio.timeout(2):
            assert await client.reader.readexactly(len(CONTINUE)) == CONTINUE
        await client.send(b"hello")
        await asyncio.sleep(0.05)  # the app reads again: no second 100
        await client.send(b"world")
        response = await client.response()

    assert (response.status, response.body) == (200, b"helloworld")


async def test_100_continue_is_never_sent_when_the_app_answers_without_reading() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, b"too large", 413)

    async with running(app) as server:
        client = await server.connect()
        await client.send(http_request("POST", "/", "Expect: 100-continue", "Content-Length: 10"))
        response = await client.response()  # a 100 first would be read as this response's status
        assert (response.status, response.body) == (413, b"too large")
        await client.assert_quiet()


# 4. Responses.


async def test_a_response_with_content_length_is_written_as_is_and_kept_alive() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-length", b"11"), (b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"hello ", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        await send({"type": "http.response.body", "body": b"world"})

    async with running(app) as server:
        client = await server.connect()
        for _ in range(2):
            await client.send(http_request())
            head = await client.reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"\r\ncontent-length: 11\r\n" in head
            assert b"transfer-encoding" not in head.lower()
            assert b"connection" not in head.lower()
            assert await client.reader.readexactly(11) == b"hello world"
        await client.assert_quiet()  # nothing after the body, and still open


@pytest.mark.parametrize(
    ("pieces", "wire"),
    [
        pytest.param([b"ab", b"", b"cde", b""], b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n", id="empty-last"),
        pytest.param([b"ab", b"cde"], b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n", id="body-in-last"),
        pytest.param([b""], b"0\r\n\r\n", id="no-body"),
        pytest.param([b"x" * 300], b"12c\r\n" + b"x" * 300 + b"\r\n0\r\n\r\n", id="hex-size"),
    ],
)
async def test_a_response_without_content_length_is_chunked_one_chunk_per_message(
    pieces: list[bytes], wire: bytes
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]})
        for index, piece in enumerate(pieces):
            await send({"type": "http.response.body", "body": piece, "more_body": index < len(pieces) - 1})

    async with running(app) as server:
        client = await server.connect()
        for _ in range(2):  # the framing ends exactly where the next response begins
            await client.send(http_request())
            head = await client.reader.readuntil(b"\r\n\r\n")
            assert b"\r\ntransfer-encoding: chunked\r\n" in head
            assert b"content-length" not in head
            assert await client.reader.readexactly(len(wire)) == wire
        await client.assert_quiet()


@pytest.mark.parametrize(
    ("headers", "first_wire", "last_wire"),
    [
        pytest.param([], b"5\r\nfirst\r\n", b"5\r\nlast!\r\n0\r\n\r\n", id="chunked"),
        pytest.param([(b"content-length", b"10")], b"first", b"last!", id="content-length"),
    ],
)
async def test_the_head_and_each_piece_go_out_when_sent_not_held_back(
    headers: list[tuple[bytes, bytes]], first_wire: bytes, last_wire: bytes
) -> None:
    """A stream (an SSE answer, say) reaches the client as the app produces it."""
    step = [asyncio.Event(), asyncio.Event()]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await step[0].wait()
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await step[1].wait()
        await send({"type": "http.response.body", "body": b"last!"})

    async with running(app) as server:
        client = await server.connect()
        await client.send(http_request())
        async with asyncio.timeout(1):  # the app waits for the client to have seen each part
            head = await client.reader.readuntil(b"\r\n\r\n")
            step[0].set()
            assert await client.reader.readexactly(len(first_wire)) == first_wire
            step[1].set()
            assert await client.reader.readexactly(len(last_wire)) == last_wire

    assert head.startswith(b"HTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize(
    ("method", "status", "headers", "body"),
    [
        pytest.param("HEAD", 200, [], b"dropped", id="head"),
        pytest.param("HEAD", 200, [(b"content-length", b"7")], b"dropped", id="head-with-length"),
        pytest.param("GET", 204, [], b"", id="204"),
        pytest.param("GET", 304, [(b"etag", b'"v1"')], b"", id="304"),
    ],
)
async def test_bodyless_responses_carry_no_body_and_no_chunked_framing(
    method: str, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/next":
            await respond(send, b"next")
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async with running(app) as server:
        client = await server.connect()
        await client.send(http_request(method, "/"))
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d " % status)
        assert b"transfer-encoding" not in head
        # A stray body or terminator would sit in front of the next response.
        await client.send(http_request("GET", "/next"))
        assert (await client.reader.readuntil(b"\r\n")) == b"HTTP/1.1 200 OK\r\n"


async def test_an_http_1_0_response_without_length_is_delimited_by_the_close() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ab", "more_body": True})
        await send({"type": "http.response.body", "body": b"cd", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async with running(app) as server:
        client = await server.connect()
        await client.send(http_request(version="1.0"))
        head = await client.reader.readuntil(b"\r\n\r\n")
        rest = await client.closed()

    assert b"transfer-encoding" not in head.lower()
    assert rest == b"abcd"


async def test_response_head_has_the_default_headers_and_lowercased_names() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(
            send, b"", 429, (b"X-RateLimit-Remaining", b"0"), (b"X-Tab", b"a\tb"), (b"X-Latin", b"caf\xe9")
        )

    async with running(app, headers=[("X-Served-By", "sluice")]) as server:
        client = await server.connect()
        await client.send(http_request())
        head = await client.reader.readuntil(b"\r\n\r\n")

    status_line, *lines = head[:-4].split(b"\r\n")
    assert status_line == b"HTTP/1.1 429 Too Many Requests"
    assert b"x-ratelimit-remaining: 0" in lines
    assert b"x-tab: a\tb" in lines  # a tab is a legal value character: passed through
    assert b"x-latin: caf\xe9" in lines
    assert b"x-served-by: sluice" in lines  # uvicorn's configured default headers
    [date] = [line[6:] for line in lines if line.startswith(b"date: ")]
    sent_at = email.utils.parsedate_to_datetime(date.decode()).timestamp()
    assert abs(sent_at - time.time()) < 5


# 5. Keep-alive and pipelining.


async def test_requests_on_one_connection_are_all_answered() -> None:
    clients: list[tuple[str, int]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        clients.append(scope["client"])
        await echo(scope, receive, send)

    async with running(app) as server:
        client = await server.connect()
        await client.send(http_request("GET", "/one?q=1"))
        assert (await client.response()).body == b"/one?q=1 "
        await client.send(
            http_request("POST", "/two", "Transfer-Encoding: chunked") + chunked(b"up", b"load")
        )
        assert (await client.response()).body == b"/two upload"
        await client.send(http_request("PUT", "/three", body=b"body"))
        assert (await client.response()).body == b"/three body"
        await client.assert_quiet()

    assert clients == [("127.0.0.1", client.port)] * 3


@pytest.mark.parametrize(
    ("request_headers", "response_headers"),
    [
        pytest.param(["Connection: close"], [], id="client-asks"),
        pytest.param(["Connection: keep-alive, close"], [], id="client-asks-among-tokens"),
        pytest.param([], [(b"connection", b"close")], id="app-asks"),
    ],
)
async def test_connection_close_closes_after_the_response(
    request_headers: list[str], response_headers: list[tuple[bytes, bytes]]
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, b"bye", 200, *response_headers)

    async with running(app) as server:
        client = await server.connect()
        await client.send(http_request("GET", "/", *request_headers))
        response = await client.response()
        assert await client.closed() == b""

    assert response.body == b"bye"
    assert response.header("connection") == "close"
    assert response.header_count("connection") == 1


async def test_pipelined_requests_are_answered_in_order_one_after_the_other() -> None:
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        events.append(f"start {path}")
        body = body_of(await receive_all(receive))
        if path == "/first":
            await asyncio.sleep(0.2)  # the second would start meanwhile if it were not queued
        events.append(f"finish {path}")
        await respond(send, path.encode() + b":" + body)

    async with running(app) as server:
        client = await server.connect()
        await client.send(http_request("POST", "/first", body=b"hello") + http_request("GET", "/second"))
        first = await client.response()
        second = await client.response()

    assert (first.body, second.body) == (b"/first:hello", b"/second:")
    assert events == ["start /first", "finish /first", "start /second", "finish /second"]


# 6. Errors.


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GARBAGE\r\n\r\n", id="garbage"),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            id="length-and-chunked",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            id="two-lengths",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            id="chunked-not-last",
        ),
        pytest.param(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", id="space-in-name"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n folded\r\n\r\n", id="obs-fold"),
        pytest.param(b"GET / HTTP/1.1\nHost: x\n\n", id="bare-lf"),
    ],
)
async def test_an_unparseable_request_gets_400_and_the_connection_closes(data: bytes) -> None:
    called, app = recording(b"served")
    async with running(app) as server:
        client = await server.connect()
        await client.send(data)
        response = await client.response()
        assert await client.closed() == b""

    assert response.status == 400
    assert response.header("connection") == "close"
    assert called == []


async def test_a_request_head_over_the_limit_gets_431_and_the_connection_closes() -> None:
    called: list[tuple[str, int]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append((scope["path"], sum(len(name) + len(value) for name, value in scope["headers"])))
        await respond(send, b"served")

    async with running(app) as server:
        client = await server.connect()
        answer = asyncio.create_task(client.response())
        await client.send(b"GET /big HTTP/1.1\r\nHost: sluice.test\r\nX-Big: ")
        for _ in range(8):  # one value of 2 x MAX_HEAD_BYTES, in pieces read one at a time
            await client.send(b"v" * (MAX_HEAD_BYTES // 4))
            # Also the pause between pieces. Once answered, stop: writing on into the closed
            # connection would reset it, and could lose the answer before it is read.
            await asyncio.wait([answer], timeout=0.02)
            if answer.done():
                break
        else:
            await client.send(b"\r\n\r\n")  # never cut: a server without the limit answers this
        response = await answer
        assert await client.closed() == b""

        # Not too tight: 16 KiB of headers are served, even spread over many reads (all but
        # the first and the last count towards the limit).
        normal = await server.connect()
        padding = [f"X-Pad-{index}: {'p' * 1000}" for index in range(16)]
        head = http_request("GET", "/normal", *padding)
        for offset in range(0, len(head), 1024):
            await normal.send(head[offset : offset + 1024])
            await asyncio.sleep(0.005)
        served = await normal.response()

    assert response.status == 431
    assert response.header("connection") == "close"
    assert (served.status, served.body) == (200, b"served")
    [(path, header_bytes)] = called  # the app never saw the head over the limit
    assert path == "/normal"
    assert header_bytes > 16 * 1000


@pytest.mark.parametrize("failure", ["raises", "returns"])
async def test_an_app_that_fails_before_starting_the_response_gets_500(failure: str) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if failure == "raises":
            raise ValueError("boom")

    async with running(app, errors_expected=True) as server:
        client = await server.connect()
        await client.send(http_request())
        response = await client.response()
        assert await client.closed() == b""

    assert response.status == 500
    assert (response.header("content-type") or "").startswith("text/plain")
    assert response.body == b"Internal Server Error"
    assert response.header("connection") == "close"


@pytest.mark.parametrize("failure", ["raises", "returns"])
@pytest.mark.parametrize(
    ("headers", "on_wire"),
    [
        pytest.param([], b"7\r\npartial\r\n", id="chunked"),
        pytest.param([(b"content-length", b"100")], b"partial", id="content-length"),
    ],
)
async def test_an_app_that_fails_mid_response_leaves_it_visibly_cut(
    failure: str, headers: list[tuple[bytes, bytes]], on_wire: bytes
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        if failure == "raises":
            raise ValueError("boom")

    async with running(app, errors_expected=True) as server:
        client = await server.connect()
        await client.send(http_request())
        head = await client.read_head()
        # The connection closes (a client would wait for the rest forever otherwise), and nothing
        # that ends the body cleanly comes first: no 0\r\n\r\n, no padding up to the length.
        rest = await client.closed()

    assert head.status == 200
    assert rest == on_wire


@pytest.mark.parametrize(
    "pieces",
    [
        pytest.param([(b"1234", True), (b"56", False)], id="longer"),
        pytest.param([(b"123456", False)], id="longer-at-once"),
        pytest.param([(b"12", True), (b"3", False)], id="shorter"),
    ],
)
async def test_a_body_that_does_not_match_content_length_raises_in_the_app(
    pieces: list[tuple[bytes, bool]],
) -> None:
    raised: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        try:
            for body, more_body in pieces:
                await send({"type": "http.response.body", "body": body, "more_body": more_body})
        except RuntimeError as exc:
            raised.append(exc)
            raise

    async with running(app, errors_expected=True) as server:
        client = await server.connect()
        await client.send(http_request())
        await client.read_head()
        rest = await client.closed()

    assert len(raised) == 1
    # What was written is some of what the app sent, and never all 5 announced bytes: the
    # client must see a cut response, not a complete one made of the wrong body.
    assert b"".join(body for body, _ in pieces).startswith(rest)
    assert len(rest) < 5


@pytest.mark.parametrize(
    "header",
    [
        pytest.param((b"x-evil", b"a\r\nset-cookie: pwned=1"), id="crlf-in-value"),
        pytest.param((b"x-evil", b"a\nset-cookie: pwned=1"), id="lf-in-value"),
        pytest.param((b"x-evil", b"a\rpwned"), id="cr-in-value"),
        pytest.param((b"x-evil", b"a\x00pwned"), id="nul-in-value"),
        pytest.param((b"x-evil", b"a\x7fpwned"), id="del-in-value"),
        pytest.param((b"x-evil", b"a\x1bpwned"), id="escape-in-value"),
        pytest.param((b"x-evil: pwned", b"v"), id="colon-in-name"),
        pytest.param((b"x-evil pwned", b"v"), id="space-in-name"),
        pytest.param((b"x-evil\r\npwned", b"v"), id="crlf-in-name"),
    ],
)
async def test_a_response_header_that_would_break_the_head_raises_and_writes_nothing(
    header: tuple[bytes, bytes],
) -> None:
    raised: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/plain"), header, (b"content-length", b"2")]
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
        except RuntimeError as exc:
            raised.append(exc)
            raise

    async with running(app, errors_expected=True) as server:
        client = await server.connect()
        await client.send(http_request())
        data = await client.closed()

    assert len(raised) == 1
    assert b"pwned" not in data
    assert b"text/plain\r\n" not in data  # not even the valid headers before the bad one
    # What may follow instead: nothing, or the server's own 500.
    assert data == b"" or data.startswith(b"HTTP/1.1 500 "), data


async def test_tabs_and_bytes_past_ascii_are_allowed_in_a_response_header_value() -> None:
    """HTAB and obs-text are field content (RFC 9110 §5.5); only other controls are refused."""
    value = b"a\tb \x80\xff c"

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-text", value)]})
        await send({"type": "http.response.body", "body": b"hi"})

    async with running(app) as server:
        client = await server.connect()
        await client.send(http_request())
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert b"\r\nx-text: " + value + b"\r\n" in head


async def test_a_refused_response_start_changes_nothing() -> None:
    """The app may catch the error and start again: nothing of the refused start remains."""
    raised: list[RuntimeError] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        # A length the body below does not match, then a value that would split the head.
        refused = [(b"content-length", b"100"), (b"x-bad", b"a\r\nb")]
        try:
            await send({"type": "http.response.start", "status": 200, "headers": refused})
        except RuntimeError as exc:
            raised.append(exc)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-good", b"1")]})
        await send({"type": "http.response.body", "body": b"hi", "more_body": False})

    async with running(app) as server:
        client = await server.connect()
        for _ in range(2):  # the connection stays usable
            await client.send(http_request())
            head = await client.reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"\r\nx-good: 1\r\n" in head
            assert b"\r\ntransfer-encoding: chunked\r\n" in head
            assert b"content-length" not in head
            assert b"x-bad" not in head
            assert await client.reader.readexactly(12) == b"2\r\nhi\r\n0\r\n\r\n"
        await client.assert_quiet()

    assert len(raised) == 2


# 7. The client going away.


@pytest.mark.parametrize("when", ["after-the-body", "mid-body"])
async def test_a_waiting_receive_returns_disconnect_when_the_client_closes(when: str) -> None:
    messages: list[Message] = []
    disconnected_at: list[float] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (message := await receive())["type"] == "http.request":
            messages.append(message)
        disconnected_at.append(time.monotonic())
        messages.append(message)

    async with running(app) as server:
        client = await server.connect()
        if when == "mid-body":
            await client.send(http_request("POST", "/", "Content-Length: 100") + b"0123456789")
            await eventually(lambda: body_of(messages) == b"0123456789")
        else:
            await client.send(http_request("POST", "/", body=b"0123456789"))
            await eventually(lambda: bool(messages) and not messages[-1]["more_body"])
        await asyncio.sleep(0.05)  # the app is waiting in receive()
        closed_at = time.monotonic()
        client.close()
        await eventually(lambda: bool(disconnected_at), timeout=1)

    assert messages[-1] == {"type": "http.disconnect"}
    assert body_of(messages) == b"0123456789"
    assert disconnected_at[0] - closed_at < 0.5
    # A body cut short must never look complete to the app.
    assert all(message.get("more_body", False) for message in messages[:-1]) == (when == "mid-body")


async def test_receive_after_the_response_returns_disconnect_at_once() -> None:
    after: list[tuple[Message, float]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive_all(receive)
        await respond(send, b"done")
        started = time.monotonic()
        message = await asyncio.wait_for(receive(), 2)
        after.append((message, time.monotonic() - started))

    async with running(app) as server:
        client = await server.connect()
        await client.send(http_request())
        assert (await client.response()).body == b"done"
        await eventually(lambda: bool(after))
        await client.assert_quiet(0.05)  # the client is still connected: the response ended, not it

    [(message, waited)] = after
    assert message == {"type": "http.disconnect"}
    assert waited < 0.5


# The sluice.disconnect extension: told of the client gone without a task in receive().


async def test_the_disconnect_extension_tells_of_a_client_gone_while_the_app_waits_elsewhere() -> None:
    told: list[float] = []
    registered: list[bool] = []
    upstream_cancelled = asyncio.Event()

    def gone() -> None:
        told.append(time.monotonic())
        upstream_cancelled.set()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive_all(receive)
        registered.append(scope["extensions"]["sluice.disconnect"](receive, gone))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await upstream_cancelled.wait()  # like the passthrough waiting on its upstream

    async with running(app) as server:
        client = await server.connect()
        await client.send(http_request("POST", "/", body=b"question"))
        await client.read_head()
        await asyncio.sleep(0.05)
        closed_at = time.monotonic()
        client.close()
        await eventually(lambda: bool(told), timeout=1)
        await asyncio.sleep(0.05)

    assert registered == [True]
    assert len(told) == 1  # once
    assert told[0] - closed_at < 0.5


async def test_the_disconnect_extension_refuses_a_receive_it_did_not_give() -> None:
    answers: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        async def wrapped() -> Message:
            return await receive()

        watch = scope["extensions"]["sluice.disconnect"]
        answers.append(watch(wrapped, lambda: None))
        answers.append(watch(receive, None))
        await receive_all(wrapped)
        await respond(send, b"ok")

    async with running(app) as server:
        client = await server.connect()
        await client.send(http_request("POST", "/", body=b"x"))
        assert (await client.response()).body == b"ok"

    assert answers == [False, True]


@pytest.mark.parametrize("how", ["response-complete", "withdrawn"])
async def test_the_disconnect_extension_is_silent_after_the_response_or_once_withdrawn(how: str) -> None:
    told: list[str] = []
    done = asyncio.Event()
    closed = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive_all(receive)
        watch = scope["extensions"]["sluice.disconnect"]
        watch(receive, lambda: told.append("told"))
        if how == "withdrawn":
            watch(receive, None)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
            done.set()
            await closed.wait()
        else:
            await respond(send, b"all")
            done.set()

    async with running(app) as server:
        client = await server.connect()
        await client.send(http_request())
        await client.read_head()
        await done.wait()
        client.close()
        await asyncio.sleep(0.1)
        closed.set()
        await asyncio.sleep(0.05)

    assert told == []


async def test_the_disconnect_extension_tells_at_once_of_a_client_already_gone() -> None:
    told: list[str] = []
    gone = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive_all(receive)
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()
        scope["extensions"]["sluice.disconnect"](receive, lambda: told.append("told"))
        await asyncio.sleep(0.2)

    async with running(app) as server:
        client = await server.connect()
        await client.send(http_request("POST", "/", body=b"x"))
        await asyncio.sleep(0.05)
        client.close()
        await asyncio.wait_for(gone.wait(), 1)
        await eventually(lambda: bool(told), timeout=0.5)

    assert told == ["told"]


async def test_send_after_the_client_left_returns_without_raising() -> None:
    outcome: list[str] = []
    client_gone = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await receive_all(receive)
        assert await receive() == {"type": "http.disconnect"}
        await client_gone.wait()
        try:
            for _ in range(50):  # more than any socket buffer: writes must not pile up or raise
                await send({"type": "http.response.body", "body": b"x" * PIECE, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except Exception as exc:
            outcome.append(repr(exc))
        else:
            outcome.append("returned")

    async with running(app) as server:
        client = await server.connect()
        await client.send(http_request())
        response = await client.read_head()
        assert await client.read_chunk(response) == b"first"
        client.close()
        client_gone.set()
        await eventually(lambda: bool(outcome))

    assert outcome == ["returned"]


# 8. Backpressure on the response.


async def test_send_waits_while_the_client_does_not_read() -> None:
    total_pieces = 80  # 5 MiB: all of it would be sent at once without backpressure
    sent = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal sent
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(total_pieces):
            await send({"type": "http.response.body", "body": b"y" * PIECE, "more_body": True})
            sent += 1
        await send({"type": "http.response.body", "body": b""})

    async with running(app, small_buffers=True) as server:
        client = await server.connect(rcvbuf=SMALL_BUFFER)
        await client.send(http_request())
        await asyncio.sleep(0.3)  # the client reads nothing
        stalled_at = sent
        await asyncio.sleep(0.2)
        assert sent == stalled_at, "send() kept returning while nothing was read"
        assert stalled_at < 40, f"{stalled_at} pieces of 64 KiB sent to a client that reads nothing"
        response = await client.response()  # reading resumes the app

    assert response.complete
    assert len(response.body) == total_pieces * PIECE
    assert sent == total_pieces


# 9. Keep-alive timeout.


async def test_an_idle_keep_alive_connection_is_closed_after_the_timeout() -> None:
    async with running(echo, timeout_keep_alive=1) as server:
        client = await server.connect()
        await client.send(http_request())
        await client.response()
        idle_from = time.monotonic()
        assert await client.closed(timeout=3) == b""

    assert 0.8 < time.monotonic() - idle_from < 3


async def test_the_keep_alive_timeout_does_not_close_a_connection_mid_request() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/slow":
            await asyncio.sleep(1.5)  # longer than the timeout, and past when a timer left armed would fire
        await respond(send, scope["path"].encode())

    async with running(app, timeout_keep_alive=1) as server:
        client = await server.connect()
        await client.send(http_request("GET", "/quick"))
        assert (await client.response()).body == b"/quick"  # arms the keep-alive timer
        await asyncio.sleep(0.5)
        await client.send(http_request("GET", "/slow"))  # must disarm it until this one is answered
        response = await client.response()

    assert response.complete
    assert response.body == b"/slow"


async def test_the_keep_alive_timeout_does_not_close_a_connection_still_receiving_a_body() -> None:
    """Answered early (a 401 or 413 before the upload is read): the upload goes on, so not idle.

    Closing with the upload's bytes unread would reset the connection, and a
    client still writing its body would see that error, not the answer.
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, b"refused", 401)

    async with running(app, timeout_keep_alive=1) as server:
        client = await server.connect()
        await client.send(http_request("POST", "/", "Content-Length: 8"))
        assert (await client.response()).status == 401
        for byte in b"12345678":  # 1.6 s of a slow upload, well past the timeout
            await asyncio.sleep(0.2)
            await client.send(bytes([byte]))
        await client.send(http_request("GET", "/next"))
        response = await client.response()

    assert (response.status, response.body) == (401, b"refused")


# The head timeout is a constructor argument: a compiled H1Protocol reads its
# own attribute, so a subclass overriding it would not be seen.
QuickHeads = functools.partial(H1Protocol, head_timeout=0.5)


async def test_a_connection_that_never_sends_a_request_is_closed_after_the_keep_alive_timeout() -> None:
    async with running(echo, timeout_keep_alive=1) as server:
        client = await server.connect()
        opened = time.monotonic()
        assert await client.closed(timeout=3) == b""  # no answer: there was no request

    assert 0.8 < time.monotonic() - opened < 3


async def test_a_request_head_trickled_in_past_the_head_timeout_gets_408() -> None:
    async with running(echo, http=QuickHeads, timeout_keep_alive=5, errors_expected=True) as server:
        quick, slow = await server.connect(), await server.connect()
        # In time: its first byte, a pause shorter than the head timeout, the rest.
        wire = http_request("GET", "/in-time")
        await quick.send(wire[:1])
        await asyncio.sleep(0.3)
        await quick.send(wire[1:])
        assert (await quick.response()).body == b"/in-time "
        # Too slow: a byte every 0.1 s, well within the keep-alive timeout each time.
        wire = http_request("GET", "/slow", "X-Padding: " + "p" * 40)

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in wire[:-1]:
                    await slow.send(bytes([byte]))
                    await asyncio.sleep(0.1)

        began = time.monotonic()
        trickling = asyncio.create_task(trickle())
        rest = await slow.closed(timeout=3)
        cut_after = time.monotonic() - began
        trickling.cancel()

    assert rest.startswith(b"HTTP/1.1 408 ")
    assert 0.4 < cut_after < 2  # head timeout 0.5 s; the whole head would take 7 s


async def test_a_head_pipelined_behind_an_answer_under_way_is_not_timed_out_meanwhile() -> None:
    """Cutting it would cut the answer in progress too."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/slow":
            await asyncio.sleep(1.5)  # three head timeouts
        await respond(send, scope["path"].encode())

    async with running(app, http=QuickHeads, timeout_keep_alive=5) as server:
        client = await server.connect()
        second = http_request("GET", "/second")
        await client.send(http_request("GET", "/slow") + second[:10])  # the next head, begun
        await asyncio.sleep(1.0)  # past its head timeout, while /slow is being answered
        await client.send(second[10:])
        first = await client.response()
        after = await client.response()

    assert (first.body, after.body) == (b"/slow", b"/second")


# 10. Graceful shutdown.


async def test_graceful_shutdown_finishes_the_request_in_flight_and_closes_idle_connections() -> None:
    started = asyncio.Event()
    finish = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/slow":
            started.set()
            await finish.wait()
        await respond(send, b"done")

    async with running(app) as server:
        idle = await server.connect()
        await idle.send(http_request())
        await idle.response()
        busy = await server.connect()
        await busy.send(http_request("GET", "/slow"))
        await asyncio.wait_for(started.wait(), 2)

        server.server.should_exit = True
        assert await idle.closed() == b""  # shutdown has begun
        finish.set()
        response = await busy.response()
        assert await busy.closed() == b""
        await asyncio.wait_for(asyncio.shield(server.task), 3)  # the server stopped
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", server.port)

    assert (response.status, response.body) == (200, b"done")
    assert response.header("connection") == "close"


# 11. WebSocket upgrades go to uvicorn's websocket protocol.


async def test_a_websocket_refused_by_the_app_gets_403() -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.close"})

    async with running(app) as server:
        client = await server.connect()
        await client.send(
            http_request(
                "GET",
                "/ws?x=1",
                "Upgrade: websocket",
                "Connection: Upgrade",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version: 13",
            )
        )
        response = await asyncio.wait_for(client.read_head(), 2)

    assert response.status == 403
    [scope] = scopes
    assert (scope["type"], scope["path"], scope["query_string"]) == ("websocket", "/ws", b"x=1")


async def test_a_websocket_accepted_by_the_app_exchanges_messages() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "websocket"
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": "echo:" + message["text"]})
        await send({"type": "websocket.close", "code": 1000})

    async with running(app) as server:
        ws = await websockets.asyncio.client.connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=2)
        try:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), 2) == "echo:hi"
        finally:
            await ws.close()


# 12. The production configuration: uvloop, uvicorn's own run(), in a thread of its own.


def test_under_uvloop_as_in_production() -> None:
    """Framing, pipelining and both directions of flow control, on uvloop's own transports."""
    loops: list[type] = []
    streamed = 0

    def digest(data: bytes) -> bytes:
        return hashlib.sha256(data).hexdigest().encode()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal streamed
        loops.append(type(asyncio.get_running_loop()))
        body = body_of(await receive_all(receive))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] == "/stream":
            for _ in range(80):
                await send({"type": "http.response.body", "body": b"s" * PIECE, "more_body": True})
                streamed += 1
        else:
            prefix = scope["path"].encode() + b":"
            await send({"type": "http.response.body", "body": prefix, "more_body": True})
        await send({"type": "http.response.body", "body": digest(body)})

    sock = listening_socket(small_buffers=True)
    server = uvicorn.Server(config(app, loop=UVICORN_LOOP))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)

    async def drive() -> None:
        async with asyncio.timeout(8):
            while not server.started:
                await asyncio.sleep(0.01)
            client = Client(*await asyncio.open_connection(*sock.getsockname()))
            upload = bytes(range(256)) * 4096  # 1 MiB
            await client.send(http_request("POST", "/big", body=upload))
            assert (await client.response()).body == b"/big:" + digest(upload)
            await client.send(
                http_request("POST", "/chunked", "Transfer-Encoding: chunked") + chunked(b"a", b"b")
            )
            assert (await client.response()).body == b"/chunked:" + digest(b"ab")
            await client.send(
                http_request("GET", "/p1") + http_request("HEAD", "/p2") + http_request("GET", "/p3")
            )
            assert (await client.response()).body == b"/p1:" + digest(b"")
            assert (await client.response(bodyless=True)).status == 200  # HEAD: its body is dropped
            third = await client.response()
            assert (third.body, third.complete) == (b"/p3:" + digest(b""), True)

            slow_sock = socket.socket()
            slow_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
            slow_sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(slow_sock, sock.getsockname())
            slow = Client(*await asyncio.open_connection(sock=slow_sock))
            await slow.send(http_request("GET", "/stream"))
            await asyncio.sleep(0.3)  # reading nothing
            stalled_at = streamed
            await asyncio.sleep(0.2)
            assert streamed == stalled_at < 40, f"{streamed} pieces of 64 KiB sent to a client reading none"
            stream = await slow.response()
            assert (len(stream.body), stream.complete) == (80 * PIECE + 64, True)

            server.should_exit = True
            assert await client.closed(3) == b""
            assert await slow.closed(3) == b""

    with error_records() as errors:
        thread.start()
        try:
            asyncio.run(drive())
        finally:
            server.should_exit = True
            thread.join(5)
            sock.close()
    assert not thread.is_alive()
    assert set(loops) == {Loop} and issubclass(Loop, uvloop.Loop)
    assert not errors.records, [errors.format(record) for record in errors.records]
