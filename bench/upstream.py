"""The benchmark's upstream: a fast, paced stand-in for an LLM provider.

``proxy/mock/`` speaks every provider's format faithfully but is far too slow
to sit behind a proxy under load: the upstream must never be what limits a
measurement. This one is a raw ``asyncio.Protocol`` on uvloop with HTTP/1.1
keep-alive and every response byte precomputed, and it only knows the three
shapes the benchmark needs, chosen by the query string (which Sluice and nginx
pass through untouched):

* ``?mode=json``: a small non-streamed chat completion (``Content-Length``);
* ``?mode=stream&chunks=N&interval_ms=I``: an SSE stream in chunked transfer
  encoding, headers and the first event at once, then one event per chunk
  every ``I`` ms on an absolute schedule (so pacing never drifts); the last of
  the ``N`` events is ``data: [DONE]``;
* ``?mode=idle``: headers and one event, then nothing until the client leaves.

Bodies are deterministic so a client can hash what it received through any
path and compare. Run it as ``python -m bench.upstream --port 0``; it prints
``upstream listening on PORT`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import sys
from typing import cast
from urllib.parse import parse_qs

import uvloop

JSON_PATH = b"/v1/chat/completions"

JSON_BODY = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Rivers run to the sea, and the sea '
    b"is never full; unto the place from whence the rivers come, thither they return again. "
    b'A benchmark reply of fixed size, so every path can be hashed and compared."},'
    b'"logprobs":null,"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":30,"completion_tokens":42,"total_tokens":72},'
    b'"system_fingerprint":"fp_bench"}'
)

_JSON_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-request-id: req_bench\r\n"
    b"Content-Length: %d\r\n\r\n" % len(JSON_BODY)
)
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    b"x-request-id: req_bench\r\nTransfer-Encoding: chunked\r\n\r\n"
)
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nnot found"
_LAST_CHUNK = b"0\r\n\r\n"


def stream_event(i: int) -> bytes:
    """Event ``i`` of a stream: an OpenAI chat chunk about the size providers send."""
    return (
        b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
        b'"model":"gpt-4o-mini","system_fingerprint":"fp_bench","choices":[{"index":0,'
        b'"delta":{"content":"token%05d "},"logprobs":null,"finish_reason":null}]}\n\n' % i
    )


DONE_EVENT = b"data: [DONE]\n\n"


def stream_body(chunks: int) -> bytes:
    """The whole body of a ``chunks``-event stream, as a client should reassemble it."""
    return b"".join(stream_event(i) for i in range(chunks - 1)) + DONE_EVENT


def _frame(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class _Plan:
    """What one request target asks for, parsed once per distinct target and cached."""

    __slots__ = ("first", "frames", "interval", "mode")

    def __init__(self, mode: str, chunks: int = 0, interval_ms: float = 0.0) -> None:
        self.mode = mode
        self.interval = interval_ms / 1000.0
        events = [stream_event(i) for i in range(max(chunks - 1, 0))] + [DONE_EVENT]
        if mode == "idle":
            events = [stream_event(0)]
        self.frames = [_frame(e) for e in events]
        self.frames[-1] += _LAST_CHUNK if mode == "stream" else b""
        self.first = _SSE_HEAD + self.frames[0]


def _plan_for(target: bytes) -> _Plan | None:
    path, _, query = target.partition(b"?")
    if path != JSON_PATH:
        return None
    q = {k: v[-1] for k, v in parse_qs(query.decode("latin-1")).items()}
    mode = q.get("mode", "json")
    if mode == "stream":
        return _Plan("stream", max(int(q.get("chunks", "64")), 1), float(q.get("interval_ms", "20")))
    if mode in ("json", "idle"):
        return _Plan(mode)
    return None


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: requests one after another (no pipelining needed)."""

    plans: dict[bytes, _Plan | None] = {}

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.timer: asyncio.TimerHandle | None = None
        self.streaming: _Plan | None = None
        self.next_i = 0
        self.t0 = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = None
        self.streaming = None
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.streaming is None and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            body_len = _body_length(head, self.buf, end + 4)
            if body_len is None:
                return  # the body is not all here yet
            del self.buf[: end + 4 + body_len]
            target = head[head.find(b" ") + 1 : head.find(b" HTTP/")]
            if target not in self.plans:
                self.plans[target] = _plan_for(target)
            self._respond(self.plans[target])

    def _respond(self, plan: _Plan | None) -> None:
        assert self.transport is not None
        if plan is None:
            self.transport.write(_NOT_FOUND)
        elif plan.mode == "json":
            self.transport.write(_JSON_HEAD + JSON_BODY)
        else:
            self.transport.write(plan.first)
            if plan.mode == "stream" and len(plan.frames) > 1:
                self.streaming, self.next_i, self.t0 = plan, 1, self.loop.time()
                self.timer = self.loop.call_at(self.t0 + plan.interval, self._tick)
            elif plan.mode == "idle":
                self.streaming = plan  # hold: no more requests on this connection

    def _tick(self) -> None:
        plan = self.streaming
        if plan is None or self.transport is None:
            return
        self.transport.write(plan.frames[self.next_i])
        self.next_i += 1
        if self.next_i < len(plan.frames):
            # Absolute schedule: a late tick does not push the later ones back.
            self.timer = self.loop.call_at(self.t0 + self.next_i * plan.interval, self._tick)
            return
        self.timer, self.streaming = None, None
        if self.buf:
            self.data_received(b"")


def _body_length(head: bytes, buf: bytearray, start: int) -> int | None:
    """Bytes of request body after the head, or None while it is incomplete."""
    lower = head.lower()
    i = lower.find(b"\r\ncontent-length:")
    if i >= 0:
        j = lower.find(b"\r\n", i + 2)
        n = int(lower[i + 17 : j if j >= 0 else len(lower)])
        return n if len(buf) - start >= n else None
    if b"\r\ntransfer-encoding: chunked" in lower:
        # Small JSON bodies only: the first last-chunk marker ends the body.
        k = buf.find(b"0\r\n\r\n", start)
        if k < 0:
            return None
        return k + 5 - start
    return 0


def raise_nofile() -> None:
    """Thousands of streams each hold a socket here."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(port: int) -> None:
    raise_nofile()
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = await loop.create_server(UpstreamProtocol, sock=sock, backlog=4096)
    print(f"upstream listening on {sock.getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        uvloop.run(serve(args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
