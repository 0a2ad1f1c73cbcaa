"""The upstream client contract (``proxy/http/interface.py``), held against both transports.

Every test runs through the fast client (:class:`ConnectionPool`) and through
the stock one (:class:`AiohttpClient`), against the real loopback upstream of
``tests/scripted_upstream.py``, scripted byte by byte: it records the raw
bytes of each request per connection, answers with exactly the bytes a test
gives, and can pause, cut (FIN) or reset a connection. Nothing of either
client is mocked. Where the two clients differ on purpose, the test says so
and asserts each one's behaviour. What only the fast client has (its flow
control's numbers, its address list and DNS cache, its idle sweeper) is in
``tests/test_http_h1client.py``.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import random
import socket
import ssl
import time
import traceback
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from proxy.http import (
    Client,
    ConnectFailed,
    HttpMode,
    Origin,
    Response,
    ResponseBroken,
    UpstreamError,
    new_client,
)
from proxy.http.aioclient import AiohttpClient
from proxy.http.h1client import ConnectionPool
from tests.scripted_upstream import (
    KINDS,
    Certificates,
    Peer,
    Upstream,
    answer_each,
    answer_first_with,
    eventually,
    hanging_listener,
    make_certificates,
    make_client,
    ok,
    on_the_first_connection,
    read_all,
    read_until_broken,
    serve,
    server_context,
)

pytestmark = pytest.mark.timeout(10)


def trust(client: Client, ca: bytes) -> None:
    assert isinstance(client, ConnectionPool | AiohttpClient)
    client.ssl_context.load_verify_locations(cadata=ca.decode())


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def assert_get_broken(upstream: Upstream, reason: str = "") -> None:
    """A GET of ``/`` fails with ResponseBroken, ``reason`` in its reason, after the upstream
    began to answer: not a failure before the response (never safe to send elsewhere)."""
    with pytest.raises(ResponseBroken) as info:
        await upstream.client.request(upstream.origin, "GET", b"/", [])
    assert not info.value.before_response
    assert reason in info.value.reason


# 0. The factory and the client's life.


async def test_new_client_builds_each_transport_and_open_close_tell_is_open(kind: str) -> None:
    client = new_client(cast(HttpMode, kind), 3.0)
    assert isinstance(client, ConnectionPool if kind == "fast" else AiohttpClient)
    assert (client.connect_timeout, client.idle_timeout) == (3.0, 15.0)  # idle: 15 s, as aiohttp's default
    await client.open()
    assert client.is_open
    await client.close()
    assert not client.is_open


def test_the_host_header_leaves_out_the_default_port_and_brackets_ipv6() -> None:
    """Both clients write ``Origin.host_header`` as the Host; the stock one connects to ``Origin.url``."""
    assert Origin("http", "127.0.0.1", 80).host_header == b"127.0.0.1"
    assert Origin("https", "api.example.com", 443).host_header == b"api.example.com"
    assert Origin("http", "api.example.com", 443).host_header == b"api.example.com:443"
    assert Origin("https", "::1", 8443).host_header == b"[::1]:8443"
    assert Origin("https", "::1", 443).url == "https://[::1]"


# 1. The request on the wire: byte-identical through both clients.


async def _body(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        await asyncio.sleep(0.005)
        yield piece


async def _send_the_requests(client: Client, origin: Origin) -> list[tuple[int, bytes]]:
    """One of every shape of request; each response's status and body."""
    shapes: list[
        tuple[str, bytes, list[tuple[bytes, bytes]], bytes | AsyncIterator[bytes] | None, int | None]
    ]
    shapes = [
        (
            "GET",
            b"/v1/models?limit=2&x=%2F&y=a+b%20c&z=[1]&k=",
            [
                (b"X-Custom", b"  Mixed Case\tvalue "),
                (b"authorization", b"Bearer sk-test"),
                (b"x-dup", b"1"),
                (b"x-other", b"between"),
                (b"x-dup", b"2"),
                (b"X-Dup", b"3"),  # aiohttp would fold these three into this one
                (b"x-utf8", "café ✓".encode()),
            ],
            None,
            None,
        ),
        ("POST", b"/v1/chat", [(b"content-type", b"application/json")], b'{"model": "m"}', None),
        ("POST", b"/empty-post", [], None, None),
        ("PUT", b"/empty-put", [], b"", None),
        ("PATCH", b"/empty-patch", [], b"", None),
        ("GET", b"/empty-get", [], b"", None),
        ("DELETE", b"/bodiless-delete", [], None, None),
        ("DELETE", b"/delete-with-body", [], b"{}", None),
        ("OPTIONS", b"/options", [], None, None),
        ("HEAD", b"/head", [], None, None),
        ("GET", b"/a/../b/./c//d?q=%zz", [], None, None),
        ("PUT", b"/streamed-with-length", [], _body(b"a" * 1000, b"b" * 70000, b"c"), 71001),
        ("POST", b"/streamed-chunked", [(b"x-k", b"v")], _body(b"{", b"", b"\r\n0\r\n\r\n", b"}"), None),
    ]
    results = []
    for method, target, headers, body, length in shapes:
        response = await client.request(origin, method, target, headers, body, length)
        results.append((response.status, await read_all(response)))
        response.close()
    return results


async def _answer_with_a_cookie(peer: Peer) -> None:
    while (request := await peer.request()) is not None:
        body = b"" if request.head.startswith(b"HEAD ") else request.target
        await peer.send(ok(body, b"set-cookie: session=abc; Path=/"))


async def test_requests_go_out_byte_for_byte_and_identically_through_both_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Nothing from the environment: a proxy here would swallow every request.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    wires: dict[str, list[bytes]] = {}
    for kind in KINDS:
        async with serve(kind, _answer_with_a_cookie) as upstream:
            results = await _send_the_requests(upstream.client, upstream.origin)
            assert [status for status, _ in results] == [200] * len(results)
            assert results[0][1] == b"/v1/models?limit=2&x=%2F&y=a+b%20c&z=[1]&k="
            assert upstream.connections == (2 if kind == "fast" else 1)  # see the HEAD test
            wires[kind] = [request.raw for request in upstream.requests]
            host = b"host: 127.0.0.1:%d\r\n" % upstream.origin.port
        # The port differs between the two upstreams; nothing else may.
        wires[kind] = [raw.replace(host, b"host: H\r\n") for raw in wires[kind]]
    assert wires["fast"] == wires["stock"]
    # And what both sent is exactly the request as given: no Accept,
    # Accept-Encoding, User-Agent, Content-Type, Connection or Cookie (the
    # upstream set one on every response), the framing only where needed.
    assert wires["stock"] == [
        b"GET /v1/models?limit=2&x=%2F&y=a+b%20c&z=[1]&k= HTTP/1.1\r\nhost: H\r\n"
        b"X-Custom:   Mixed Case\tvalue \r\nauthorization: Bearer sk-test\r\nx-dup: 1\r\n"
        b"x-other: between\r\nx-dup: 2\r\nX-Dup: 3\r\nx-utf8: caf\xc3\xa9 \xe2\x9c\x93\r\n\r\n",
        b"POST /v1/chat HTTP/1.1\r\nhost: H\r\ncontent-type: application/json\r\ncontent-length: 14\r\n\r\n"
        b'{"model": "m"}',
        b"POST /empty-post HTTP/1.1\r\nhost: H\r\ncontent-length: 0\r\n\r\n",
        b"PUT /empty-put HTTP/1.1\r\nhost: H\r\ncontent-length: 0\r\n\r\n",
        b"PATCH /empty-patch HTTP/1.1\r\nhost: H\r\ncontent-length: 0\r\n\r\n",
        b"GET /empty-get HTTP/1.1\r\nhost: H\r\n\r\n",
        b"DELETE /bodiless-delete HTTP/1.1\r\nhost: H\r\n\r\n",
        b"DELETE /delete-with-body HTTP/1.1\r\nhost: H\r\ncontent-length: 2\r\n\r\n{}",
        b"OPTIONS /options HTTP/1.1\r\nhost: H\r\n\r\n",
        b"HEAD /head HTTP/1.1\r\nhost: H\r\n\r\n",
        b"GET /a/../b/./c//d?q=%zz HTTP/1.1\r\nhost: H\r\n\r\n",
        b"PUT /streamed-with-length HTTP/1.1\r\nhost: H\r\ncontent-length: 71001\r\n\r\n"
        + b"a" * 1000
        + b"b" * 70000
        + b"c",
        b"POST /streamed-chunked HTTP/1.1\r\nhost: H\r\nx-k: v\r\ntransfer-encoding: chunked\r\n\r\n"
        b"1\r\n{\r\n7\r\n\r\n0\r\n\r\n\r\n1\r\n}\r\n0\r\n\r\n",
    ]


async def test_an_empty_query_keeps_its_question_mark_only_through_the_fast_client(kind: str) -> None:
    """yarl (under aiohttp) drops the "?" of an empty query; no other liberty is taken with a target."""
    async with serve(kind, answer_each) as upstream:
        _, body = await upstream.get(b"/v1/models?")
    assert body == (b"/v1/models?" if kind == "fast" else b"/v1/models")


async def test_a_target_with_a_fragment_goes_as_is_only_through_the_fast_client(kind: str) -> None:
    """yarl would cut the target at "#": the stock client refuses it rather than send another."""
    async with serve(kind, answer_each) as upstream:
        if kind == "fast":
            _, body = await upstream.get(b"/p?a=1#frag")
            assert body == b"/p?a=1#frag"
        else:
            with pytest.raises(ValueError, match="as given"):
                await upstream.get(b"/p?a=1#frag")
            await asyncio.sleep(0.02)
            assert upstream.peers == []


async def test_a_redirect_is_returned_not_followed(kind: str) -> None:
    async def handler(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            await peer.send(b"HTTP/1.1 302 Found\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n")
            assert request.target == b"/here"

    async with serve(kind, handler) as upstream:
        response, body = await upstream.get(b"/here")
        assert (response.status, response.header(b"location"), body) == (302, b"/elsewhere", b"")
        await asyncio.sleep(0.05)
        assert [r.target for r in upstream.requests] == [b"/here"]


async def test_a_large_bytes_body_arrives_intact(kind: str) -> None:
    payload = random.Random(7).randbytes(5 * 1024 * 1024)

    async with serve(kind, answer_each) as upstream:
        response = await upstream.client.request(upstream.origin, "POST", b"/big", [], payload)
        assert await read_all(response) == b"/big"
        [request] = upstream.requests
    assert request.header(b"content-length") == b"%d" % len(payload)
    assert hashlib.sha256(request.body).digest() == hashlib.sha256(payload).digest()


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
        pytest.param(b"/", [(b"x-key\nx-injected", b"1")], id="lf-in-name"),
    ],
)
async def test_a_line_break_in_the_target_or_a_header_is_refused_before_anything_is_sent(
    kind: str, target: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    async with serve(kind, answer_each) as upstream:
        with pytest.raises(ValueError, match="line break"):
            await upstream.client.request(upstream.origin, "POST", target, headers, b"body")
        await asyncio.sleep(0.02)
        assert upstream.peers == []


async def test_a_header_value_that_is_not_utf8_goes_as_is_only_through_the_fast_client(kind: str) -> None:
    """aiohttp writes header text as UTF-8: a Latin-1 byte cannot go out as given, so it is refused."""
    value = b"caf\xe9"  # obs-text, not UTF-8
    async with serve(kind, answer_each) as upstream:
        if kind == "fast":
            response = await upstream.client.request(upstream.origin, "GET", b"/", [(b"x-name", value)])
            assert await read_all(response) == b"/"
            assert upstream.requests[0].header(b"x-name") == value
        else:
            with pytest.raises(ValueError, match="not UTF-8") as info:
                await upstream.client.request(upstream.origin, "GET", b"/", [(b"x-name", value)])
            assert "caf" not in str(info.value)
            await asyncio.sleep(0.02)
            assert upstream.peers == []


# 2. The response: status, headers, body pieces as they arrive.


async def test_status_and_headers_as_sent_names_lowercased_in_order(kind: str) -> None:
    answer = (
        b"HTTP/1.1 429 Too Many Requests\r\nX-RateLimit-Remaining: 0\r\nSet-Cookie: a=1\r\n"
        b"Set-Cookie: b=2\r\nX-Empty:\r\nX-Spaced:  a  b \t \r\nX-Obs: caf\xe9\r\n"
        b"Content-Length: 4\r\n\r\nslow"
    )
    async with serve(kind, answer_first_with(answer)) as upstream:
        response, body = await upstream.get()
    assert response.status == 429
    assert response.headers == [
        (b"x-ratelimit-remaining", b"0"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"x-empty", b""),
        (b"x-spaced", b"a  b"),  # whitespace around a value is not part of it (RFC 9110, 5.5)
        (b"x-obs", b"caf\xe9"),
        (b"content-length", b"4"),
    ]
    assert response.header(b"set-cookie") == b"a=1"
    assert response.header(b"absent") is None
    assert body == b"slow"
    assert response.complete


@pytest.mark.parametrize("framing", ["chunked", "content-length", "close"])
async def test_each_piece_is_read_as_soon_as_it_arrives(kind: str, framing: str) -> None:
    """A read returns a piece before the upstream sends the next one: nothing waits for more."""
    pieces = [b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"]
    was_read = [asyncio.Event() for _ in pieces]

    async def handler(peer: Peer) -> None:
        await peer.request()
        if framing == "chunked":
            await peer.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        elif framing == "content-length":
            await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % sum(map(len, pieces)))
        else:
            await peer.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
        for piece, read in zip(pieces, was_read, strict=True):
            await peer.send(b"%x\r\n%s\r\n" % (len(piece), piece) if framing == "chunked" else piece)
            await read.wait()
        if framing == "chunked":
            await peer.send(b"0\r\n\r\n")
        elif framing == "close":
            peer.close()
            return
        await peer.request()

    async with serve(kind, handler) as upstream:
        response = await upstream.client.request(upstream.origin, "GET", b"/stream", [])
        async with asyncio.timeout(3):  # a client that waits for more would hang here
            for piece, read in zip(pieces, was_read, strict=True):
                assert await response.read() == piece
                assert not response.complete or framing == "content-length"
                read.set()
            assert await response.read() == b""
        assert response.complete


async def test_compressed_bytes_come_back_untouched(kind: str) -> None:
    text = b'{"choices": [{"text": "' + b"compressible " * 200 + b'"}]}'
    packed = gzip.compress(text)

    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n"
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(packed), packed)
    )
    async with serve(kind, answer_first_with(answer)) as upstream:
        response, body = await upstream.get()
        assert response.header(b"content-encoding") == b"gzip"
        assert body == packed
        assert upstream.requests[0].header(b"accept-encoding") is None


@pytest.mark.parametrize("split", [False, True], ids=["one-packet", "two-packets"])
async def test_interim_responses_are_skipped(kind: str, split: bool) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\n"
    final = b"HTTP/1.1 201 Created\r\nx-final: yes\r\ncontent-length: 4\r\n\r\ndone"

    async def handler(peer: Peer) -> None:
        await peer.request()
        if split:
            await peer.send(interim)
            await asyncio.sleep(0.05)
            await peer.send(final)
        else:
            await peer.send(interim + final)
        await answer_each(peer)

    async with serve(kind, handler) as upstream:
        response, body = await upstream.get()
        assert (response.status, response.headers, body) == (
            201,
            [(b"x-final", b"yes"), (b"content-length", b"4")],
            b"done",
        )
        _, again = await upstream.get(b"/again")
        assert again == b"/again"
        assert upstream.connections == 1


async def test_a_head_response_ends_at_its_headers(kind: str) -> None:
    """HEAD: no body whatever Content-Length says. The fast client then drops the connection
    (its parser cannot be told the response was to HEAD); aiohttp's keeps it."""
    left: list[int] = []

    async def handler(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            if request.head.startswith(b"HEAD "):
                await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\ncontent-type: a/b\r\n\r\n")
            else:
                await peer.send(ok(request.target))
        left.append(peer.index)

    async with serve(kind, handler) as upstream:
        async with asyncio.timeout(3):
            response = await upstream.client.request(upstream.origin, "HEAD", b"/h", [])
            assert response.header(b"content-length") == b"1000"
            assert await response.read() == b""
        assert response.complete
        if kind == "fast":
            await eventually(lambda: left == [0])  # dropped as the response ended, before any close()
        response.close()
        _, body = await upstream.get(b"/after")
        assert body == b"/after"
        assert upstream.connections == (2 if kind == "fast" else 1)
        assert left == ([0] if kind == "fast" else [])


@pytest.mark.parametrize("status", [204, 304])
async def test_bodyless_statuses_end_at_the_headers_and_keep_the_connection(kind: str, status: int) -> None:
    answer = b"HTTP/1.1 %d Nothing\r\netag: x\r\n\r\n" % status
    async with serve(kind, answer_first_with(answer)) as upstream:
        response, body = await upstream.get()
        assert (response.status, body, response.complete) == (status, b"", True)
        _, second = await upstream.get(b"/next")
        assert second == b"/next"
        assert upstream.connections == 1


async def test_long_response_headers_are_accepted(kind: str) -> None:
    """Provider responses carry long rate-limit and trace headers: 32 KiB in one, 60 KiB in all."""
    long_one = b"v" * (32 * 1024)
    many = [b"x-trace-%03d: %s" % (i, b"t" * 500) for i in range(56)]  # 28 KiB more

    async with serve(kind, answer_first_with(ok(b"ok", b"x-long: " + long_one, *many))) as upstream:
        response, body = await upstream.get()
    assert response.header(b"x-long") == long_one
    assert len(response.headers) == 58
    assert body == b"ok"


async def test_a_header_past_the_limit_is_broken(kind: str) -> None:
    left = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(
            b"HTTP/1.1 200 OK\r\nx-long: " + b"v" * (65 * 1024) + b"\r\ncontent-length: 2\r\n\r\nok"
        )
        await peer.client_left()
        left.set()

    async with serve(kind, handler) as upstream:
        await assert_get_broken(upstream)
        async with asyncio.timeout(3):
            await left.wait()


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
async def test_a_malformed_response_is_broken(kind: str, answer: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer)
        await peer.client_left()

    async with serve(kind, handler) as upstream:
        await assert_get_broken(upstream, "malformed")


@pytest.mark.parametrize(
    ("kind", "split"),
    [
        pytest.param("fast", False, id="fast-one-packet"),
        pytest.param("fast", True, id="fast-two-packets"),
        pytest.param("stock", False, id="stock-one-packet"),
        pytest.param("stock", True, id="stock-two-packets"),
    ],
)
async def test_a_malformed_chunk_in_the_body_is_broken(kind: str, split: bool) -> None:
    """What came before the bad chunk is read first. Except through aiohttp when it all comes in one
    packet: its parser takes the packet whole and fails before it hands out the headers."""
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    good, bad = b"3\r\nabc\r\n", b"zz\r\nwhat\r\n"
    first_read = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        if split:
            await peer.send(head + good)
            await first_read.wait()
            await peer.send(bad)
        else:
            await peer.send(head + good + bad)
        await peer.client_left()

    async with serve(kind, handler) as upstream:
        if kind == "stock" and not split:
            await assert_get_broken(upstream, "malformed")
            return
        response = await upstream.client.request(upstream.origin, "GET", b"/", [])
        assert await response.read() == b"abc"
        first_read.set()
        async with asyncio.timeout(1):
            data, error = await read_until_broken(response)
        assert data == b""
        assert not error.before_response
        assert "malformed" in error.reason
        assert not response.complete


async def test_trailer_fields_are_not_response_headers(kind: str) -> None:
    """Trailers come after the body; the headers were handed over long before (RFC 9110, 6.5)."""

    answer = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n"
        b"2;ext=1\r\nab\r\n0\r\nx-checksum: 1234\r\n\r\n"
    )
    async with serve(kind, answer_first_with(answer)) as upstream:
        response, body = await upstream.get()
        assert (body, response.complete) == (b"ab", True)
        assert response.headers == [(b"transfer-encoding", b"chunked"), (b"trailer", b"x-checksum")]
        _, again = await upstream.get(b"/again")
        assert again == b"/again"
        assert upstream.connections == 1


async def test_an_upgrade_nobody_asked_for_is_malformed(kind: str) -> None:
    """A 101 answers only a request that asked to switch protocols, which Sluice never sends."""

    @on_the_first_connection
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nab"
        )
        await peer.client_left()

    async with serve(kind, handler) as upstream:
        await assert_get_broken(upstream, "malformed")
        _, again = await upstream.get(b"/again")
        assert again == b"/again"
        assert upstream.connections == 2


@pytest.mark.parametrize(
    ("answer", "headers"),
    [
        pytest.param(b"HTTP/1.1 200 OK\ncontent-length: 2\n\nab", [(b"content-length", b"2")], id="bare-lf"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nx-a: 1\r\n  2\r\ncontent-length: 2\r\n\r\nab",
            [(b"x-a", b"1  2"), (b"content-length", b"2")],
            id="obs-fold",
        ),
    ],
)
async def test_obsolete_line_syntax_is_refused_only_by_the_fast_client(
    kind: str, answer: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """llhttp (fast) is strict; aiohttp parses responses leniently and cannot be told otherwise."""

    async with serve(kind, answer_first_with(answer)) as upstream:
        if kind == "fast":
            with pytest.raises(ResponseBroken, match="malformed"):
                await upstream.get()
        else:
            response, body = await upstream.get()
            assert (response.headers, body) == (headers, b"ab")


# 3. Deadlines.


async def test_a_read_deadline_raises_timeout_and_the_response_stays_usable(kind: str) -> None:
    go_on = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await go_on.wait()
        await peer.send(b"6\r\nsecond\r\n0\r\n\r\n")
        await answer_each(peer)

    async with serve(kind, handler) as upstream:
        loop = asyncio.get_running_loop()
        response = await upstream.client.request(upstream.origin, "GET", b"/", [])
        assert await response.read(loop.time() + 5) == b"first"
        started = loop.time()
        with pytest.raises(TimeoutError):
            await response.read(started + 0.15)
        assert 0.1 < loop.time() - started < 1.0
        with pytest.raises(TimeoutError):
            await response.read(loop.time() - 1)  # a deadline already passed
        assert not response.complete
        go_on.set()
        assert await response.read(loop.time() + 5) == b"second"
        assert await response.read(loop.time() + 5) == b""
        assert response.complete
        _, again = await upstream.get(b"/again")  # the connection survived the timeouts
        assert again == b"/again"
        assert upstream.connections == 1


# 4. Bodies cut short, and bodies that end at the close.


async def _read_a_cut_body(upstream: Upstream, cut: asyncio.Event, reader: str) -> tuple[Response, bytes]:
    """GET ``/`` and read until the body breaks, waiting first for the upstream to ``cut`` it
    if the ``reader`` comes ``late``; the response and what it read."""
    response = await upstream.client.request(upstream.origin, "GET", b"/", [])
    if reader == "late":
        await cut.wait()
        await asyncio.sleep(0.02)
        assert not response.complete
    data, error = await read_until_broken(response)
    assert not error.before_response
    assert not response.complete
    return response, data


@pytest.mark.parametrize(
    ("answer", "received"),
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"y" * 10, b"y" * 10, id="short-length"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n",
            b"hello world",
            id="chunked-no-last-chunk",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\na\r\n wor",
            b"hello wor",
            id="chunked-cut-in-a-chunk",
        ),
        pytest.param(
            b"HTTP/1.0 200 OK\r\ncontent-length: 100\r\n\r\n" + b"z" * 10,
            b"z" * 10,
            id="http-1.0-short-length",
        ),
    ],
)
@pytest.mark.parametrize("how", ["fin", "reset"])
@pytest.mark.parametrize("reader", ["waiting", "late"])
async def test_a_body_cut_short_raises_and_never_ends_cleanly(
    kind: str, answer: bytes, received: bytes, how: str, reader: str
) -> None:
    """Every byte that arrived is read, then ResponseBroken; also when the reader comes only
    after the cut (aiohttp's own reader would raise first and lose the buffered bytes)."""
    cut = asyncio.Event()

    @on_the_first_connection
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer)
        await asyncio.sleep(0.02)
        peer.close() if how == "fin" else peer.reset()
        cut.set()

    async with serve(kind, handler) as upstream:
        response, data = await _read_a_cut_body(upstream, cut, reader)
        assert data == received
        with pytest.raises(ResponseBroken):
            await response.read()  # and it stays broken
        response.close()
        _, again = await upstream.get(b"/again")  # on a new connection
        assert again == b"/again"
        assert upstream.connections == 2


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
async def test_a_body_delimited_by_the_close_ends_cleanly_at_a_fin(kind: str, version: bytes) -> None:
    @on_the_first_connection
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/%s 200 OK\r\ncontent-type: text/plain\r\n\r\nfirst " % version)
        await asyncio.sleep(0.05)
        await peer.send(b"second")
        peer.close()

    async with serve(kind, handler) as upstream:
        response, body = await upstream.get()
        assert body == b"first second"
        assert response.complete
        # That connection is not kept: a streamed body, never sent twice, goes on a fresh one.
        after = await upstream.client.request(upstream.origin, "POST", b"/after", [], _body(b"once"))
        assert await read_all(after) == b"/after"
        assert upstream.connections == 2


@pytest.mark.parametrize("reader", ["waiting", "late"])
async def test_a_body_delimited_by_the_close_ended_by_a_reset_is_broken(kind: str, reader: str) -> None:
    """aiohttp ends such a body cleanly whatever the close; the stock client must not."""
    cut = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\n\r\npartial")
        await asyncio.sleep(0.02)
        peer.reset()
        cut.set()

    async with serve(kind, handler) as upstream:
        _, data = await _read_a_cut_body(upstream, cut, reader)
        assert data == b"partial"


# 5. Connecting.


async def test_a_refused_connection_is_connect_failed(kind: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    client = make_client(kind)
    await client.open()
    try:
        with pytest.raises(ConnectFailed) as info:
            await client.request(Origin("http", "127.0.0.1", port), "POST", b"/", [], b"x")
    finally:
        await client.close()
    assert isinstance(info.value.cause, ConnectionRefusedError)
    assert not info.value.timed_out


async def test_a_name_that_does_not_resolve_is_connect_failed(kind: str) -> None:
    name = "sluice-test.invalid"  # RFC 6761: never resolves
    try:
        async with asyncio.timeout(2):
            await asyncio.get_running_loop().getaddrinfo(name, 80)
    except TimeoutError:
        pytest.skip("this machine's resolver is slow to fail")
    except socket.gaierror:
        pass
    client = make_client(kind)
    await client.open()
    try:
        with pytest.raises(ConnectFailed) as info:
            await client.request(Origin("http", name, 80), "GET", b"/", [])
    finally:
        await client.close()
    assert isinstance(info.value.cause, socket.gaierror)
    assert not info.value.timed_out


async def test_a_connect_that_hangs_is_connect_failed_timed_out(kind: str) -> None:
    with hanging_listener("127.0.0.1") as address:
        client = make_client(kind, connect_timeout=0.1)
        await client.open()
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            with pytest.raises(ConnectFailed) as info:
                await client.request(Origin("http", *address), "GET", b"/", [])
        finally:
            await client.close()
        assert info.value.timed_out
        assert info.value.cause is None
        assert 0.08 < loop.time() - started < 2.0


# 6. Keep-alive, and connections dropped.


async def test_connections_are_kept_alive_and_reused(kind: str) -> None:
    async with serve(kind, answer_each) as upstream:
        client, origin = upstream.client, upstream.origin
        for i in range(3):
            _, body = await upstream.get(b"/%d" % i)
            assert body == b"/%d" % i
        # A body that all arrived but was never read: closing keeps the connection.
        unread = await client.request(origin, "GET", b"/unread", [])
        await asyncio.sleep(0.05)
        unread.close()
        _, body = await upstream.get(b"/4")
        assert body == b"/4"
        assert upstream.connections == 1
        # Two at once need two connections; both are kept.
        first, second = await asyncio.gather(upstream.get(b"/a"), upstream.get(b"/b"))
        assert (first[1], second[1]) == (b"/a", b"/b")
        await asyncio.gather(upstream.get(b"/c"), upstream.get(b"/d"))
        assert upstream.connections == 2
        assert sum(len(peer.requests) for peer in upstream.peers) == 9


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok", id="connection-close"
        ),
        pytest.param(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", id="http-1.0"),
    ],
)
async def test_a_connection_the_upstream_does_not_keep_alive_is_closed_by_the_client(
    kind: str, answer: bytes
) -> None:
    left: list[bool] = []

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer)
        await peer.client_left()  # the upstream keeps its side open: the client must close
        left.append(True)

    async with serve(kind, handler) as upstream:
        response, first = await upstream.get()
        response.close()
        _, second = await upstream.get()
        assert (first, second) == (b"ok", b"ok")
        assert upstream.connections == 2
        await eventually(lambda: len(left) == 2)  # the second one too, its response never closed


async def test_closing_an_unfinished_response_drops_its_connection(kind: str) -> None:
    left = asyncio.Event()

    @on_the_first_connection
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 10)
        await peer.client_left()
        left.set()

    async with serve(kind, handler) as upstream:
        response = await upstream.client.request(upstream.origin, "GET", b"/", [])
        assert await response.read() == b"x" * 10
        response.close()
        async with asyncio.timeout(1):
            await left.wait()  # what stops the upstream generating
        _, body = await upstream.get(b"/next")
        assert body == b"/next"
        assert upstream.connections == 2


async def test_an_idle_connection_is_closed_after_the_idle_timeout(kind: str) -> None:
    idle_for: list[float] = []

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(ok())
        answered = time.monotonic()
        await peer.client_left(5)
        idle_for.append(time.monotonic() - answered)

    client = make_client(kind, idle_timeout=0.1)
    async with serve(kind, handler, client=client) as upstream:
        _, body = await upstream.get()
        assert body == b"ok"
        await eventually(lambda: bool(idle_for), timeout=3)
    assert 0.08 < idle_for[0] < 1.5


async def test_a_connection_the_upstream_closed_while_idle_is_not_used_again(kind: str) -> None:
    """The client sees the close while the connection idles: a streamed body, which is never sent
    twice, would fail on that connection rather than go again on a fresh one."""

    async def handler(peer: Peer) -> None:
        request = await peer.request()
        assert request is not None
        await peer.send(ok(request.target))
        await asyncio.sleep(0.02)
        peer.close()  # as upstreams do after their own idle timeout

    async with serve(kind, handler) as upstream:
        _, first = await upstream.get(b"/1")
        await asyncio.sleep(0.05)
        second = await upstream.client.request(upstream.origin, "POST", b"/2", [], _body(b"once"))
        assert (first, await read_all(second)) == (b"/1", b"/2")
        assert [[r.target for r in peer.requests] for peer in upstream.peers] == [[b"/1"], [b"/2"]]


@pytest.mark.parametrize(
    ("stray", "when"),
    [
        pytest.param(
            b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 5\r\n\r\nstray", "idle", id="while-idle"
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray", "same-packet", id="same-packet"),
        pytest.param(b"HTTP/1.1 299 Stray\r\nx-stray: ", "same-packet", id="start-of-a-head"),
    ],
)
async def test_a_response_nobody_asked_for_never_answers_a_later_request(
    kind: str, stray: bytes, when: str
) -> None:
    """An upstream may answer nothing with something (a 408 before it closes an idle connection):
    that connection's framing cannot be trusted, and no request may get that answer."""

    async def handler(peer: Peer) -> None:
        request = await peer.request()
        assert request is not None
        if when == "idle":
            await peer.send(ok(request.target))
            await asyncio.sleep(0.05)
            await peer.send(stray)
        else:
            await peer.send(ok(request.target) + stray)
        await answer_each(peer)  # and it would go on answering on that connection

    async with serve(kind, handler) as upstream:
        _, first = await upstream.get(b"/1")
        assert first == b"/1"
        await asyncio.sleep(0.1)
        async with asyncio.timeout(3):
            results = await asyncio.gather(upstream.get(b"/a"), upstream.get(b"/b"))
        assert [(r.status, r.headers, body) for r, body in results] == [
            (200, [(b"content-length", b"2")], b"/a"),
            (200, [(b"content-length", b"2")], b"/b"),
        ]
        if kind == "stock" and stray.endswith(b": "):
            # aiohttp cannot be asked about a head cut short: it reuses the connection,
            # dropping the stray bytes with the parser it replaces.
            assert len(upstream.peers[0].requests) == 2
        else:
            assert [r.target for r in upstream.peers[0].requests] == [b"/1"]  # never used again


# 7. Stale keep-alive connections: retried once, only when it cannot send a request twice.


@on_the_first_connection
async def _stale_second(peer: Peer) -> None:
    """The first connection answers one request, takes in the second and closes (it had decided to)."""
    first = await peer.request()
    assert first is not None
    await peer.send(ok(first.target))
    await peer.request()
    peer.close()


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_a_reused_connection_closed_before_the_response_is_retried_with_a_bytes_body(
    kind: str, method: str
) -> None:
    async with serve(kind, _stale_second) as upstream:
        await upstream.get(b"/1")
        response = await upstream.client.request(upstream.origin, method, b"/2", [], b"payload")
        assert await read_all(response) == b"/2"
        assert [[(r.target, r.body) for r in peer.requests] for peer in upstream.peers] == [
            [(b"/1", b""), (b"/2", b"payload")],
            [(b"/2", b"payload")],
        ]


async def test_each_stale_kept_alive_connection_is_passed_over_until_one_answers(kind: str) -> None:
    async def handler(peer: Peer) -> None:
        if peer.index >= 2:
            await answer_each(peer)
            return
        first = await peer.request()
        assert first is not None
        await peer.send(ok(first.target))
        await peer.request()  # each kept-alive connection takes in the retried request, then closes
        peer.close()

    async with serve(kind, handler) as upstream:
        await asyncio.gather(upstream.get(b"/a"), upstream.get(b"/b"))
        assert upstream.connections == 2
        response = await upstream.client.request(upstream.origin, "POST", b"/2", [], b"payload")
        assert await read_all(response) == b"/2"
        assert sorted(tuple(r.target for r in peer.requests) for peer in upstream.peers) == [
            (b"/2",),
            (b"/a", b"/2"),
            (b"/b", b"/2"),
        ]


async def test_a_streamed_body_is_never_sent_twice_even_on_a_stale_connection(kind: str) -> None:
    async with serve(kind, _stale_second) as upstream:
        await upstream.get(b"/1")
        with pytest.raises(ResponseBroken) as info:
            await upstream.client.request(upstream.origin, "PUT", b"/2", [], _body(b"part one, ", b"two"))
        assert info.value.before_response
        await asyncio.sleep(0.02)
        assert upstream.connections == 1
        assert [r.body for r in upstream.requests] == [b"", b"part one, two"]


@pytest.mark.parametrize("method", ["GET", "PUT", "POST"])
@pytest.mark.parametrize("ending", ["fin", "reset"])
async def test_a_fresh_connection_lost_before_the_response_is_not_resent(
    kind: str, method: str, ending: str
) -> None:
    """Idempotent methods too: aiohttp would send a GET or PUT again by itself."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.close() if ending == "fin" else peer.reset()

    async with serve(kind, handler) as upstream:
        with pytest.raises(ResponseBroken) as info:
            await upstream.client.request(upstream.origin, method, b"/once", [], b"not twice")
        assert info.value.before_response
        await asyncio.sleep(0.05)
        assert upstream.connections == 1
        assert [r.body for r in upstream.requests] == [b"not twice"]


async def test_a_request_on_a_fresh_connection_after_a_dropped_idle_one_is_not_resent(kind: str) -> None:
    """The idle connection is dropped for a stray answer; the request then goes out on a fresh one,
    which fails before the response: that is not a stale connection, and nothing is sent again."""

    async def handler(peer: Peer) -> None:
        request = await peer.request()
        assert request is not None
        if peer.index == 0:
            await peer.send(ok(request.target))
            await asyncio.sleep(0.02)
            await peer.send(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n")
            await peer.client_left()
        else:
            peer.close()

    async with serve(kind, handler) as upstream:
        await upstream.get(b"/1")
        await asyncio.sleep(0.1)
        with pytest.raises(ResponseBroken) as info:
            await upstream.client.request(upstream.origin, "POST", b"/2", [], b"once")
        assert info.value.before_response
        await asyncio.sleep(0.05)
        assert [[r.target for r in peer.requests] for peer in upstream.peers] == [[b"/1"], [b"/2"]]


async def test_a_connection_closed_after_part_of_the_head_is_broken_but_not_before_response(
    kind: str,
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-le")
        peer.close()

    async with serve(kind, handler) as upstream:
        await assert_get_broken(upstream)  # the upstream did answer: not safe to retry elsewhere
        assert len(upstream.requests) == 1


async def test_connect_failed_only_when_the_upstream_never_saw_the_request(kind: str) -> None:
    async def handler(peer: Peer) -> None:
        first = await peer.request()
        assert first is not None
        await peer.send(ok(first.target))
        await peer.request()  # the upstream has the second request (it may act on it) ...
        upstream.server.close()  # ... and goes down: no new connection is possible
        peer.close()

    async with serve(kind, handler) as upstream:
        await upstream.get(b"/1")
        with pytest.raises(UpstreamError) as info:
            await upstream.client.request(upstream.origin, "POST", b"/charge", [], b"once")
        assert [r.target for r in upstream.requests] == [b"/1", b"/charge"]
        assert not isinstance(info.value, ConnectFailed)


async def test_a_failing_request_body_raises_its_own_error(kind: str) -> None:
    class ClientWentAway(Exception):
        pass

    left = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"start"
        await asyncio.sleep(0.05)
        raise ClientWentAway

    async def handler(peer: Peer) -> None:
        await peer.client_left()
        left.set()

    async with serve(kind, handler) as upstream:
        with pytest.raises(ClientWentAway):
            await upstream.client.request(upstream.origin, "POST", b"/", [], body())
        async with asyncio.timeout(1):
            await left.wait()


# 8. Error messages never carry a secret.


async def test_errors_carry_no_query_and_no_header_value(kind: str) -> None:
    secret_query, secret_header = "q-SECRET-9f2c", "h-SECRET-71ab"
    target = b"/v1/x?key=" + secret_query.encode()
    headers = [(b"x-goog-api-key", secret_header.encode())]
    answers = [
        b"garbage\r\n\r\n",  # malformed
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",  # cut short
        b"HTTP/1.1 200 OK\r\nx-bad-" + b"v" * (70 * 1024) + b"\r\n\r\n",  # header too long
        b"",  # closed before the response
    ]

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(answers[peer.index])
        peer.close()

    errors: list[BaseException] = []
    async with serve(kind, handler) as upstream:
        for _ in answers:
            try:
                response = await upstream.client.request(upstream.origin, "POST", target, headers, b"{}")
                await read_all(response)
            except UpstreamError as exc:
                errors.append(exc)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(kind)
    await client.open()
    try:
        await client.request(Origin("http", "127.0.0.1", port), "GET", target, headers)
    except UpstreamError as exc:
        errors.append(exc)
    finally:
        await client.close()
    assert len(errors) == len(answers) + 1
    for error in errors:
        told = "".join(traceback.format_exception(error)) + repr(error)
        assert secret_query not in told
        assert secret_header not in told


# 9. Memory stays bounded.


async def test_a_fast_upstream_is_held_back_while_the_reader_does_not_read(kind: str) -> None:
    size = 16 * 1024 * 1024
    payload = random.Random(6).randbytes(size)
    unsent: list[int] = []

    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + payload)
        await asyncio.sleep(0.25)
        unsent.append(peer.writer.transport.get_write_buffer_size())
        await peer.writer.drain()
        await answer_each(peer)

    async with serve(kind, handler) as upstream:
        response = await upstream.client.request(upstream.origin, "GET", b"/", [])
        await eventually(lambda: bool(unsent))  # nothing read meanwhile
        # The upstream could not send most of it: the client took in a few
        # socket buffers' worth, not the body.
        assert unsent[0] > size // 2
        digest = hashlib.sha256()
        received = 0
        while piece := await response.read():
            received += len(piece)
            digest.update(piece)
        assert received == size
        assert digest.digest() == hashlib.sha256(payload).digest()
        _, again = await upstream.get(b"/again")
        assert again == b"/again"
        assert upstream.connections == 1


async def test_a_streamed_upload_waits_for_the_socket(kind: str) -> None:
    piece_size, count = 64 * 1024, 512  # 32 MiB offered
    produced = 0
    sent = hashlib.sha256()
    stalled: list[int] = []
    received: list[bytes] = []

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
        await asyncio.sleep(0.2)  # not reading: the client must stop producing
        stalled.append(produced)
        await asyncio.sleep(0.1)
        stalled.append(produced)
        request = await peer.read_body(head)
        received.append(request.body)
        await peer.send(ok())

    async with serve(kind, handler) as upstream:
        response = await upstream.client.request(upstream.origin, "POST", b"/up", [], body())
        assert await read_all(response) == b"ok"
    assert stalled[0] == stalled[1]  # the producer was waiting...
    assert stalled[0] < count * piece_size // 2  # ...long before the end of the body
    assert len(received[0]) == count * piece_size
    assert hashlib.sha256(received[0]).digest() == sent.digest()


async def test_an_answer_that_starts_before_the_upload_ends(kind: str) -> None:
    """Both clients finish the upload and read the whole answer. The fast client returns the
    response once its upload is done; aiohttp's returns it at the headers, the upload going on."""
    uploaded = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        for i in range(3):
            await asyncio.sleep(0.03)
            yield b"p%d" % i
        uploaded.set()

    async def handler(peer: Peer) -> None:
        head = await peer.read_head()
        assert head is not None
        await peer.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nearly\r\n")
        request = await peer.read_body(head)
        await peer.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(request.body), request.body))
        await answer_each(peer)

    async with serve(kind, handler) as upstream:
        response = await upstream.client.request(upstream.origin, "POST", b"/", [], body())
        assert uploaded.is_set() == (kind == "fast")
        assert await read_all(response) == b"earlyp0p1p2"
        _, again = await upstream.get(b"/again")
        assert again == b"/again"
        assert upstream.connections == 1


# 10. Cancellation: the upstream learns promptly that nobody waits.


async def _cancel_and_see_the_connection_dropped(task: asyncio.Task[Any], left: asyncio.Event) -> None:
    """Cancel ``task``; the upstream's handler sets ``left`` once the client's side is gone."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(1):
        await left.wait()


async def test_cancelling_a_request_waiting_for_its_response_drops_the_connection(kind: str) -> None:
    left = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.client_left(5)  # a slow upstream, still thinking
        left.set()

    async with serve(kind, handler) as upstream:
        task = asyncio.create_task(upstream.client.request(upstream.origin, "POST", b"/", [], b"work"))
        peer = await upstream.peer(0)
        async with asyncio.timeout(3):
            await peer.got_request.wait()
        await _cancel_and_see_the_connection_dropped(task, left)


async def test_cancelling_a_streamed_upload_drops_the_connection(kind: str) -> None:
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

    async with serve(kind, handler) as upstream:
        task = asyncio.create_task(upstream.client.request(upstream.origin, "POST", b"/", [], body()))
        async with asyncio.timeout(3):
            await stuck.wait()
        await _cancel_and_see_the_connection_dropped(task, left)


async def test_a_cancelled_read_then_close_drops_the_connection(kind: str) -> None:
    """The client left mid-stream: the relay's read is cancelled, its ``finally`` closes the response."""
    left = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await peer.client_left(5)  # still generating, as far as it knows
        left.set()

    async def relay(response: Response) -> None:
        try:
            while await response.read():
                pass
        finally:
            response.close()

    async with serve(kind, handler) as upstream:
        response = await upstream.client.request(upstream.origin, "GET", b"/", [])
        task = asyncio.create_task(relay(response))
        await asyncio.sleep(0.05)  # it read "first" and waits for more
        await _cancel_and_see_the_connection_dropped(task, left)


# 11. TLS.


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


async def test_https_to_a_trusted_upstream_with_keep_alive(kind: str, certificates: Certificates) -> None:
    client = make_client(kind)
    trust(client, certificates.ca)
    tls = server_context(certificates.chain, certificates.key)
    negotiated: list[str | None] = []

    async def handler(peer: Peer) -> None:
        negotiated.append(peer.writer.get_extra_info("ssl_object").selected_alpn_protocol())
        await answer_each(peer)

    async with serve(kind, handler, tls=tls, client=client) as upstream:
        response, first = await upstream.get(b"/1")
        post = await client.request(upstream.origin, "POST", b"/2", [], b"x" * 200000)
        assert (response.status, first, await read_all(post)) == (200, b"/1", b"/2")
        assert upstream.connections == 1
        host = b"127.0.0.1:%d" % upstream.origin.port
        assert upstream.requests[0].raw == b"GET /1 HTTP/1.1\r\nhost: " + host + b"\r\n\r\n"
        assert upstream.requests[1].body == b"x" * 200000
    assert negotiated == ["http/1.1"]  # offered h2, the client asked for HTTP/1.1 only


@pytest.mark.parametrize("certificate", ["untrusted", "for-another-name"])
async def test_https_refuses_an_untrusted_certificate_or_one_for_another_name(
    kind: str, certificates: Certificates, certificate: str
) -> None:
    client = make_client(kind)  # trusts the system's CAs only ...
    if certificate == "untrusted":
        tls = server_context(certificates.chain, certificates.key)
    else:
        trust(client, certificates.ca)  # ... and the test CA, which signed this one for another name
        tls = server_context(certificates.wrong_name_chain, certificates.wrong_name_key)
    async with serve(kind, answer_each, tls=tls, client=client) as upstream:
        with pytest.raises(ConnectFailed) as info:
            await client.request(upstream.origin, "GET", b"/", [])
        assert isinstance(info.value.cause, ssl.SSLCertVerificationError)
        assert not info.value.timed_out
        await asyncio.sleep(0.02)
        assert upstream.connections == 0  # no handshake completed
        assert upstream.requests == []
