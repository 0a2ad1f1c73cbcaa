"""The two transports agree on the bytes a client receives.

A fast Sluice and a stock one (``SLUICE_HTTP``) stand in front of the same
scripted upstream, which answers a given path with the same bytes, in the
same pieces, at the same pace, whoever asks. Each exchange goes through both,
from a raw socket, and what the client received must be the same: status,
headers in order (but ``date`` and Sluice's ``x-request-id``), the body's
bytes, its chunks where the upstream paced them, and whether it ended
complete or was cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import CANARY_KEYS, SluiceFactory, SluiceProcess
from tests.helpers import closed_port
from tests.rawhttp import RawConnection, RawResponse, request

pytestmark = pytest.mark.timeout(30)

PAUSE = 0.05  # seconds between paced pieces: long enough that no transport may merge them
SSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def event(n: int) -> bytes:
    return b'data: {"choices":[{"delta":{"content":"tok%d"}}]}\n\n' % n


Step = bytes | float | None  # bytes to write, seconds to pause, None: close the connection
GZIPPED = gzip.compress(json.dumps({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}).encode())
LARGE = bytes(range(256)) * 4096  # 1 MiB
THROTTLED = b'{"error": {"message": "slow down", "type": "requests"}}'

# What the upstream answers, by path: the same steps for every request.
SCRIPTS: dict[str, list[Step]] = {
    "/json": [
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-request-id: up-1\r\n"
        b'openai-processing-ms: 12\r\ncontent-length: 17\r\n\r\n{"answer": "ok"}\n'
    ],
    "/gzip": [
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
        b"content-length: %d\r\n\r\n%b" % (len(GZIPPED), GZIPPED)
    ],
    "/stream": [
        SSE,
        *(s for n in range(5) for s in (chunk(event(n)), PAUSE)),
        chunk(b"data: [DONE]\n\n"),
        b"0\r\n\r\n",
    ],
    "/cut": [SSE, chunk(event(0)), PAUSE, chunk(event(1)), PAUSE, b'1a\r\ndata: {"half', None],
    "/silent": [SSE, chunk(event(0)), 0.45, chunk(event(1)), b"0\r\n\r\n"],  # one heartbeat (interval 0.3 s)
    "/close-delimited": [
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil",
        PAUSE,
        b" the close",
        None,
    ],
    "/large": [
        b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: %d\r\n\r\n%b"
        % (len(LARGE), LARGE)
    ],
    "/throttled": [
        b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 7\r\n"
        b"content-length: %d\r\n\r\n%b" % (len(THROTTLED), THROTTLED)
    ],
    "/broken": [
        b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\ncontent-length: 4\r\n\r\noops"
    ],
    "/empty": [b"HTTP/1.1 204 No Content\r\nx-note: nothing\r\n\r\n"],
    "/head": [b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 99\r\n\r\n"],
    "/reset-before-headers": [None],
}


@dataclass
class Scripted:
    port: int
    received: list[bytes]  # each request's body, as the upstream received it (de-chunked)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {
        n.strip().lower(): v.strip() for n, _, v in (line.partition(":") for line in lines[1:] if line)
    }
    body = b""
    if headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += data[:-2]
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    path = target.split("?", 1)[0].removeprefix("/v1")
    return (path if method != "HEAD" else "/head"), body


@pytest.fixture(scope="module")
def upstream() -> Iterator[Scripted]:
    """The scripted upstream, on its own loop in a thread (the Sluices are processes)."""
    loop = asyncio.new_event_loop()
    received: list[bytes] = []
    ready = threading.Event()
    holder: dict[str, asyncio.Server] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                path, body = await _read_request(reader)
                received.append(body)
                if path == "/echo":
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                                 b"content-length: %d\r\n\r\n%b" % (len(body), body))  # fmt: skip
                    continue
                for step in SCRIPTS[path]:
                    if step is None:
                        writer.transport.abort()
                        return
                    if isinstance(step, float):
                        await writer.drain()
                        await asyncio.sleep(step)
                    else:
                        writer.write(step)
                await writer.drain()
        writer.close()

    async def start() -> None:
        holder["server"] = await asyncio.start_server(handle, "127.0.0.1", 0)
        ready.set()

    thread = threading.Thread(
        target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True
    )
    thread.start()
    ready.wait(5)
    yield Scripted(holder["server"].sockets[0].getsockname()[1], received)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.fixture(scope="module")
def both(upstream: Scripted, sluice_factory: SluiceFactory) -> dict[str, SluiceProcess]:
    env = {
        **CANARY_KEYS,
        "SLUICE_OPENAI_UPSTREAM": f"http://127.0.0.1:{upstream.port}",
        "SLUICE_HEARTBEAT_INTERVAL": "0.3",
        "SLUICE_CONNECT_RETRIES": "0",
    }
    return {mode: sluice_factory(SLUICE_HTTP=mode, **env) for mode in ("fast", "stock")}


def seen(response: RawResponse, paced: bool) -> dict[str, object]:
    """What a client can observe, less what differs on every request (the date, the request id)."""
    return {
        "status": response.status,
        "headers": [(n, v) for n, v in response.headers if n not in ("date", "x-request-id")],
        "body": response.body,
        "chunks": [data for _, data in response.chunks] if paced else None,
        "complete": response.complete,
    }


Exchange = Callable[[SluiceProcess], Awaitable[RawResponse]]


def plain(method: str, target: str, body: bytes = b"", **headers: str) -> Exchange:
    async def run(sluice: SluiceProcess) -> RawResponse:
        return await request(sluice.url, method, target, {"authorization": "Bearer client", **headers}, body)

    return run


def chunked_upload(pieces: list[bytes]) -> Exchange:
    async def run(sluice: SluiceProcess) -> RawResponse:
        conn = await RawConnection.open(sluice.url)
        try:
            head = b"POST /openai/v1/echo HTTP/1.1\r\nhost: sluice.test\r\ntransfer-encoding: chunked\r\n"
            conn.writer.write(head + b"authorization: Bearer client\r\n\r\n")
            for piece in pieces:
                conn.writer.write(chunk(piece))
                await conn.writer.drain()
                await asyncio.sleep(PAUSE)
            conn.writer.write(b"0\r\n\r\n")
            response = await conn.read_head()
            return await conn.read_body(response)
        finally:
            conn.close()

    return run


EXCHANGES: dict[str, tuple[Exchange, bool, int]] = {
    # name: (the exchange, whether the upstream paces its pieces so that chunks
    # can be compared, the status both must answer: no vacuous agreement)
    "json": (plain("POST", "/openai/v1/json", b'{"q": 1}'), False, 200),
    "gzip, untouched": (plain("POST", "/openai/v1/gzip", b"{}", **{"accept-encoding": "gzip"}), False, 200),
    "event stream": (plain("POST", "/openai/v1/stream", b"{}"), True, 200),
    "stream cut mid-event": (plain("POST", "/openai/v1/cut", b"{}"), True, 200),
    "heartbeat in a silence": (plain("POST", "/openai/v1/silent", b"{}"), True, 200),
    "body delimited by the close": (plain("GET", "/openai/v1/close-delimited"), True, 200),
    "1 MiB body": (plain("GET", "/openai/v1/large"), False, 200),
    "429 passed on": (plain("POST", "/openai/v1/throttled", b"{}"), False, 429),
    "500 passed on": (plain("POST", "/openai/v1/broken", b"{}"), False, 500),
    "204": (plain("DELETE", "/openai/v1/empty"), False, 204),
    "HEAD": (plain("HEAD", "/openai/v1/head"), False, 200),
    "upstream resets before headers": (plain("POST", "/openai/v1/reset-before-headers", b"{}"), False, 502),
    "chunked upload": (chunked_upload([b"one,", b"two,", b"three"]), False, 200),
    "bad path": (plain("GET", "/openai/v1/%2e%2e/admin"), False, 400),
    "no route": (plain("GET", "/nowhere"), False, 404),
}


@pytest.mark.parametrize("name", EXCHANGES)
async def test_both_transports_give_the_client_the_same_bytes(
    name: str, both: dict[str, SluiceProcess], upstream: Scripted
) -> None:
    exchange, paced, status = EXCHANGES[name]
    fast = seen(await exchange(both["fast"]), paced)
    stock = seen(await exchange(both["stock"]), paced)
    assert fast == stock
    assert fast["status"] == status


async def test_an_unreachable_upstream_is_the_same_error_in_both(sluice_factory: SluiceFactory) -> None:
    env = {**CANARY_KEYS, "SLUICE_OPENAI_UPSTREAM": f"http://127.0.0.1:{closed_port()}"}
    responses = []
    for mode in ("fast", "stock"):
        sluice = sluice_factory(SLUICE_HTTP=mode, SLUICE_CONNECT_RETRIES="0", **env)
        responses.append(seen(await plain("POST", "/openai/v1/json", b"{}")(sluice), False))
    assert responses[0] == responses[1]
    assert responses[0]["status"] == 502


async def test_the_exchanges_reach_the_upstream_and_the_upload_arrives_whole(
    both: dict[str, SluiceProcess], upstream: Scripted
) -> None:
    # The comparison above means something only if the exchanges really ran.
    upstream.received.clear()
    for mode in ("fast", "stock"):
        response = await chunked_upload([b"a" * 10, b"b" * 20])(both[mode])
        assert (response.status, response.body, response.complete) == (200, b"a" * 10 + b"b" * 20, True)
        stream = await plain("POST", "/openai/v1/silent", b"{}")(both[mode])
        assert stream.complete and b"tok0" in stream.body and b"tok1" in stream.body
        cut = await plain("POST", "/openai/v1/cut", b"{}")(both[mode])
        assert cut.status == 200 and not cut.complete and b"tok1" in cut.body
    assert upstream.received.count(b"a" * 10 + b"b" * 20) == 2


async def test_a_cut_stream_is_logged_as_sluice_warns_not_as_a_server_error(
    both: dict[str, SluiceProcess],
) -> None:
    for mode in ("fast", "stock"):
        cut = await plain("POST", "/openai/v1/cut", b"{}")(both[mode])
        assert not cut.complete
    for mode in ("fast", "stock"):
        log = both[mode].log()
        assert "aborting the client response" in log  # Sluice's own warning, with the reason
        assert "ERROR" not in log, f"{mode}: {log}"  # uvicorn's "without completing response" is DEBUG


def test_each_sluice_says_which_transport_it_runs(both: dict[str, SluiceProcess]) -> None:
    # The comparisons above mean something only if the two really run different transports.
    for mode in ("fast", "stock"):
        assert f"(1 worker, {mode}, " in both[mode].log()
