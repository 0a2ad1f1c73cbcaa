"""Mock LLM provider: a real aiohttp HTTP server speaking the OpenAI, Gemini
and Anthropic wire formats, with per-request fault injection driven by
``x-mock-*`` request headers (the proxy passes them through untouched).

Every request is recorded in :class:`MockState` so tests can assert what the
upstream saw (headers, body hash) and how the exchange ended (completed,
client_closed, dropped, error_injected) and when.

Credentials can be steered too (see ``proxy.mock.auth``): per-key error rules,
a Google OAuth2 token endpoint (``…/token``) that verifies service-account
JWTs, and Vertex AI routes that demand the access tokens it issued.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import re
import signal
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

from . import auth, code_assist, realtime
from . import formats as fmt
from .formats import mock_tokens

_SENT_CAP = 8 * 1024 * 1024
_PARSE_CAP = 4 * 1024 * 1024  # keep at most this much body for JSON parsing
_READ_CHUNK = 64 * 1024


@dataclass
class MockRecord:
    """One request the mock received, and how it ended."""

    id: int
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body_bytes: int = 0
    body_sha256: str = ""
    started: float = field(default_factory=time.monotonic)
    first_byte_at: float | None = None
    ended: float | None = None
    outcome: str | None = None
    status: int | None = None
    # WebSocket sessions (proxy.mock.realtime): the close code and reason the
    # session ended with, whoever sent them (1006: the connection just vanished).
    close_code: int | None = None
    close_reason: str | None = None
    # A growable buffer: appending to bytes would be quadratic on big bodies.
    _sent: bytearray = field(default_factory=bytearray, repr=False)
    # WebSocket messages in each direction (text as str, binary as bytes), first 8 MiB.
    _frames_in: list[str | bytes] = field(default_factory=list, repr=False)
    _frames_out: list[str | bytes] = field(default_factory=list, repr=False)
    _frame_bytes: int = field(default=0, repr=False)

    @property
    def sent(self) -> bytes:
        """Exact body bytes written for this request (first 8 MiB)."""
        return bytes(self._sent)

    def add_sent(self, data: bytes) -> None:
        room = _SENT_CAP - len(self._sent)
        if room > 0:
            self._sent += data[:room]

    @property
    def frames_in(self) -> list[str | bytes]:
        """WebSocket messages the client sent, in order (first 8 MiB)."""
        return list(self._frames_in)

    @property
    def frames_out(self) -> list[str | bytes]:
        """WebSocket messages the mock sent, in order (first 8 MiB)."""
        return list(self._frames_out)

    def add_frame(self, data: str | bytes, *, sent: bool) -> None:
        """Record one WebSocket message: bytes counted, and kept while under the cap."""
        if sent:
            self.add_sent(data.encode() if isinstance(data, str) else data)
        else:
            self.body_bytes += len(data)
        if self._frame_bytes + len(data) <= _SENT_CAP:
            self._frame_bytes += len(data)
            (self._frames_out if sent else self._frames_in).append(data)

    def close(self, outcome: str) -> None:
        """Record how the exchange ended. The first cause wins (a deliberate
        drop stays "dropped" when the disconnect then cancels the handler),
        except "completed", which is set provisionally just before the final
        flush and is overridden if that flush fails."""
        if self.outcome in (None, "completed"):
            if self.outcome != outcome:
                self.ended = None
            self.outcome = outcome
        if self.ended is None:
            self.ended = time.monotonic()

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


class MockState(code_assist.CodeAssistState, auth.AuthState):
    """All mutable mock state; shared between the server loop and tests.
    Key rules, service accounts and OAuth2 tokens come from ``AuthState``,
    Google accounts and Code Assist from ``CodeAssistState``."""

    def __init__(self, default_tokens: int = 12, default_delay_ms: float = 0.0) -> None:
        auth.AuthState.__init__(self)
        code_assist.CodeAssistState.__init__(self)
        self.default_tokens = default_tokens
        self.default_delay_ms = default_delay_ms
        self.records: list[MockRecord] = []
        self._next_id = 0

    def reset(self) -> None:
        self.records.clear()
        self.reset_auth()
        self.reset_code_assist()

    def attempts_by_key(self, path_suffix: str | None = None) -> Counter[str]:
        """How many recorded requests presented each credential."""
        return Counter(
            cred
            for rec in list(self.records)
            if path_suffix is None or rec.path.endswith(path_suffix)
            for cred in auth.presented_credentials(rec.headers, rec.query)
        )

    def new_record(self, request: web.BaseRequest) -> MockRecord:
        self._next_id += 1
        path, _, query = request.raw_path.partition("?")
        headers = {k.lower(): v for k, v in request.headers.items()}
        rec = MockRecord(self._next_id, request.method, path, query, headers)
        self.records.append(rec)
        return rec

    def last(self, path_suffix: str | None = None) -> MockRecord:
        for rec in reversed(list(self.records)):
            if path_suffix is None or rec.path.endswith(path_suffix):
                return rec
        raise AssertionError(f"mock saw no request matching {path_suffix!r}")

    # The timeout parameter is the public API tests rely on, hence the noqa.
    async def wait_for_end(self, record_id: int, timeout: float) -> MockRecord:  # noqa: ASYNC109
        # Polling, not an Event: callers run on a different loop/thread.
        deadline = time.monotonic() + timeout
        while True:
            rec = next((r for r in list(self.records) if r.id == record_id), None)
            if rec is not None and rec.ended is not None:
                return rec
            if time.monotonic() >= deadline:
                raise TimeoutError(f"mock record {record_id} did not end in {timeout}s")
            await asyncio.sleep(0.005)


def _num(headers: Mapping[str, str], name: str, default: float) -> float:
    raw = headers.get(name)
    return float(raw) if raw not in (None, "") else default


def _opt_int(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    return int(raw) if raw not in (None, "") else None


@dataclass(frozen=True)
class _Control:
    """The ``x-mock-*`` behaviour knobs of one request."""

    tokens: int
    delay_s: float
    status: int | None
    retry_after: str | None
    headers_delay_s: float
    silence_after: int | None
    silence_s: float
    drop_after: int | None
    gzip: bool

    @classmethod
    def parse(cls, h: Mapping[str, str], state: MockState) -> _Control:
        status = _opt_int(h, "x-mock-status")
        retry = h.get("x-mock-retry-after") or ("7" if status == 429 else None)
        return cls(
            tokens=int(_num(h, "x-mock-tokens", state.default_tokens)),
            delay_s=_num(h, "x-mock-delay-ms", state.default_delay_ms) / 1000,
            status=status,
            retry_after=retry,
            headers_delay_s=_num(h, "x-mock-headers-delay-ms", 0) / 1000,
            silence_after=_opt_int(h, "x-mock-silence-after"),
            silence_s=_num(h, "x-mock-silence-ms", 0) / 1000,
            drop_after=_opt_int(h, "x-mock-drop-after"),
            gzip=h.get("x-mock-gzip", "") not in ("", "0"),
        )


class _Dropped(Exception):
    """The mock aborted the connection on purpose (x-mock-drop-after)."""


class _Exchange:
    """One request/response: body reading, writing, pacing and fault injection."""

    def __init__(self, request: web.Request, rec: MockRecord, state: MockState) -> None:
        self.request, self.rec, self.state = request, rec, state
        self.ctl = _Control.parse(rec.headers, state)
        self.query = dict(request.query)
        self.provider = fmt.provider_for(rec.path, rec.headers, self.query)
        self.resp: web.StreamResponse | None = None
        self.body: dict[str, Any] = {}
        self.raw = b""  # the body as sent, when it fits in _PARSE_CAP (form posts)
        self.written = 0

    async def read_body(self) -> None:
        # Streamed hashing: a 50 MB upload must never sit in memory whole.
        digest, keep = hashlib.sha256(), bytearray()
        async for chunk in self.request.content.iter_chunked(_READ_CHUNK):
            digest.update(chunk)
            self.rec.body_bytes += len(chunk)
            if len(keep) < _PARSE_CAP:
                keep += chunk[: _PARSE_CAP - len(keep)]
        self.rec.body_sha256 = digest.hexdigest()
        if keep and self.rec.body_bytes <= _PARSE_CAP:
            self.raw = bytes(keep)
            try:
                parsed = json.loads(keep)
            except ValueError:  # multipart / binary bodies are fine too
                parsed = None
            self.body = parsed if isinstance(parsed, dict) else {}

    def reply(self, model: str | None = None) -> fmt.Reply:
        opts = self.body.get("stream_options")
        return fmt.Reply(
            model=model or str(self.body.get("model") or "mock-model"),
            tokens=mock_tokens(self.ctl.tokens),
            input_tokens=max(1, self.rec.body_bytes // 4),
            rid=f"mock{self.rec.id}",
            created=int(time.time()),
            include_usage=isinstance(opts, dict) and bool(opts.get("include_usage")),
        )

    def base_headers(self, status: int = 200) -> dict[str, str]:
        remaining = 0 if status == 429 else 999
        return fmt.provider_headers(self.provider, f"mock{self.rec.id}", remaining)

    async def _start(self, resp: web.StreamResponse) -> None:
        self.resp = resp
        self.rec.status = resp.status
        await resp.prepare(self.request)
        self.rec.first_byte_at = time.monotonic()

    async def write(self, data: bytes) -> None:
        assert self.resp is not None
        self.rec.add_sent(data)
        self.written += len(data)
        length = self.resp.content_length
        if length is not None and self.written >= length:
            self.rec.close("completed")  # this write completes the body: see _finish
        await self.resp.write(data)  # drains past 64 KiB: honours backpressure

    async def send_json(
        self, obj: object, status: int = 200, extra: Mapping[str, str] | None = None
    ) -> web.StreamResponse:
        body = fmt.dumps(obj)
        headers = {
            **self.base_headers(status),
            **(extra or {}),
            "Content-Type": "application/json; charset=utf-8",
        }
        if self.ctl.gzip:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        resp = web.Response(body=body, status=status, headers=headers)
        await self._start(resp)
        self.rec.add_sent(body)
        await self._finish(resp)
        return resp

    async def _finish(self, resp: web.StreamResponse) -> None:
        # Mark completion before the last bytes leave: a client that has the
        # whole body may check the record before this handler gets to run again.
        self.rec.close("completed")
        await resp.write_eof()

    async def send_error(self, status: int, message: str) -> web.StreamResponse:
        extra = {"retry-after": self.ctl.retry_after} if self.ctl.retry_after else {}
        return await self.send_json(fmt.error_body(self.provider, status, message), status, extra)

    async def send_stream(self, plan: fmt.StreamPlan) -> web.StreamResponse:
        headers = {
            **self.base_headers(),
            **plan.headers,
            "Content-Type": plan.content_type,
            "Cache-Control": "no-cache",
        }
        resp = web.StreamResponse(status=200, headers=headers)
        await self._start(resp)
        for frame in plan.head:
            await self.write(frame)
        sent = 0
        for frame in plan.tokens:
            await self._between_tokens(sent)
            await self.write(frame)  # one write per token: its own TCP chunk
            sent += 1
        # No pacing delay after the last token: with Content-Length bodies the
        # client already has everything and may hang up, which is not a cancel.
        await self._between_tokens(sent, pace=False)
        for frame in plan.tail:
            await self.write(frame)
        await self._finish(resp)
        return resp

    async def _between_tokens(self, sent: int, pace: bool = True) -> None:
        if pace and sent and self.ctl.delay_s:
            await asyncio.sleep(self.ctl.delay_s)
        if sent == self.ctl.silence_after and self.ctl.silence_s:
            await asyncio.sleep(self.ctl.silence_s)
        if sent == self.ctl.drop_after:
            await self._drop()

    async def _drop(self) -> None:
        transport = self.request.transport
        self.rec.close("dropped")
        # abort() discards unsent bytes, so first let the kernel take them.
        for _ in range(200):
            if transport is None or transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.005)
        if transport is not None:
            transport.abort()  # RST, no chunked terminator: a truncated stream
        raise _Dropped


Route = Callable[[_Exchange, "re.Match[str]"], Awaitable[web.StreamResponse]]


async def _chat(ex: _Exchange, _: re.Match[str]) -> web.StreamResponse:
    if ex.body.get("stream"):
        return await ex.send_stream(fmt.chat_stream(ex.reply()))
    return await ex.send_json(fmt.chat_completion(ex.reply()))


async def _responses(ex: _Exchange, _: re.Match[str]) -> web.StreamResponse:
    if ex.body.get("stream"):
        return await ex.send_stream(fmt.responses_stream(ex.reply()))
    return await ex.send_json(fmt.response_object(ex.reply()))


async def _embeddings(ex: _Exchange, _: re.Match[str]) -> web.StreamResponse:
    return await ex.send_json(fmt.openai_embeddings(ex.body, ex.reply()))


async def _models(ex: _Exchange, m: re.Match[str]) -> web.StreamResponse:
    return await ex.send_json(fmt.models_body(ex.provider, m.group("id")))


async def _gemini(ex: _Exchange, m: re.Match[str]) -> web.StreamResponse:
    reply, method = ex.reply(m.group("model")), m.group("method")
    if method == "streamGenerateContent":
        use_sse = ex.query.get("alt") == "sse"
        return await ex.send_stream(fmt.gemini_stream(reply, use_sse))
    if method == "generateContent":
        return await ex.send_json(fmt.gemini_response(reply))
    if method == "countTokens":
        return await ex.send_json({"totalTokens": reply.input_tokens})
    if method == "embedContent":
        return await ex.send_json(fmt.gemini_embedding(ex.body))
    if method == "batchEmbedContents":
        return await ex.send_json(fmt.gemini_batch_embeddings(ex.body))
    return await ex.send_error(404, f"Method {method} not found")


async def _vertex(ex: _Exchange, m: re.Match[str]) -> web.StreamResponse:
    # Vertex wants an OAuth2 token (here: one our token endpoint issued and
    # that is still live), then answers in the Gemini wire format.
    if not ex.state.token_valid(auth.bearer_token(ex.rec.headers)):
        body = fmt.error_body("gemini", 401, auth.UNAUTHENTICATED_MESSAGE)
        return await ex.send_json(body, 401, auth.UNAUTHENTICATED_HEADERS)
    return await _gemini(ex, m)


async def _token(ex: _Exchange, _: re.Match[str]) -> web.StreamResponse:
    if ex.state.token_endpoint_status is not None:
        ex.rec.close("error_injected")
    # The audience a client may sign for is the URL it used to reach us.
    url = f"{ex.request.scheme}://{ex.request.host}{ex.rec.path}"
    status, body = ex.state.exchange_token(ex.raw, url)
    return await ex.send_json(body, status)


async def _messages(ex: _Exchange, _: re.Match[str]) -> web.StreamResponse:
    if ex.body.get("stream"):
        return await ex.send_stream(fmt.anthropic_stream(ex.reply()))
    return await ex.send_json(fmt.anthropic_message(ex.reply()))


async def _files(ex: _Exchange, _: re.Match[str]) -> web.StreamResponse:
    return await ex.send_json(
        {
            "object": "file",
            "id": f"file-mock{ex.rec.id}",
            "bytes": ex.rec.body_bytes,
            "sha256": ex.rec.body_sha256,
        }
    )


async def _bytes(ex: _Exchange, _: re.Match[str]) -> web.StreamResponse:
    size = int(ex.query.get("size", "0"))
    chunk = max(1, int(ex.query.get("chunk", str(_READ_CHUNK))))
    if "delay_ms" in ex.query:  # query wins over x-mock-delay-ms for this route
        ex.ctl = replace(ex.ctl, delay_s=float(ex.query["delay_ms"]) / 1000)
    plan = fmt.StreamPlan(
        "application/octet-stream", [], fmt.pattern_chunks(size, chunk), [], {"Content-Length": str(size)}
    )
    return await ex.send_stream(plan)


_GEMINI_PATH = r"/models/(?P<model>[^/:]+):(?P<method>\w+)$"
# (method, path-end regex, handler); matched on the END of the path so any
# upstream base-URL prefix (e.g. /openai/v1/...) works.
_ROUTES: list[tuple[str, re.Pattern[str], Route]] = [
    ("POST", re.compile(r"/chat/completions$"), _chat),
    ("POST", re.compile(r"/responses$"), _responses),
    ("POST", re.compile(r"/embeddings$"), _embeddings),
    ("GET", re.compile(r"/models(?:/(?P<id>[^/:]+))?$"), _models),
    # Vertex before Gemini: the Gemini pattern matches the end of Vertex paths
    # too. Express mode (…/publishers/google/models/m:x, no project) is Gemini.
    ("POST", re.compile(r"/projects/[^/]+/locations/[^/]+/publishers/google" + _GEMINI_PATH), _vertex),
    ("POST", re.compile(_GEMINI_PATH), _gemini),
    ("POST", re.compile(r"/token$"), _token),
    ("POST", re.compile(r"/messages$"), _messages),
    ("POST", re.compile(r"/files$"), _files),
    ("GET", re.compile(r"/_mock/bytes$"), _bytes),
]


async def _serve(ex: _Exchange) -> web.StreamResponse:
    await ex.read_body()
    if ex.ctl.headers_delay_s:  # a stalled upstream: nothing at all is sent meanwhile
        await asyncio.sleep(ex.ctl.headers_delay_s)
    if ex.ctl.status is not None and ex.ctl.status >= 400:
        ex.rec.close("error_injected")
        return await ex.send_error(ex.ctl.status, _injected_message(ex.ctl.status, ex.request.headers))
    rule = ex.state.key_rule_for(auth.presented_credentials(ex.rec.headers, ex.rec.query))
    if rule is not None:  # the upstream's verdict on this key, whatever was asked
        ex.rec.close("error_injected")
        ex.ctl = replace(ex.ctl, retry_after=rule.retry_after_header)
        return await ex.send_error(rule.status, _injected_message(rule.status, ex.request.headers))
    answered = await code_assist.serve(ex, ex.request.method, ex.rec.path)
    if answered is not None:
        return answered
    for method, pattern, route in _ROUTES:
        match = pattern.search(ex.rec.path)
        if match and ex.request.method == method:
            return await route(ex, match)
    return await ex.send_error(404, f"Unknown mock route {ex.request.method} {ex.rec.path}")


def _make_handler(state: MockState) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        path = request.raw_path.partition("?")[0]
        if path.endswith("/_mock/records"):
            return web.json_response([r.summary() for r in list(state.records)])
        if path.endswith("/_mock/reset") and request.method == "POST":
            state.reset()
            return web.json_response({"ok": True})
        if path.endswith("/_mock/keys") and request.method in ("POST", "DELETE"):
            return await _keys_control(state, request)
        if path.endswith("/_mock/code-assist") and request.method == "POST":
            try:
                state.code_assist_control(await request.json())
            except (ValueError, TypeError, KeyError) as exc:
                return web.json_response({"ok": False, "error": repr(exc)}, status=400)
            return web.json_response({"ok": True})
        if realtime.is_realtime(request, path):  # OpenAI Realtime, Gemini Live
            rec = state.new_record(request)
            try:
                return await realtime.serve(request, rec, state)
            except Exception:
                rec.close("mock_error")
                raise
        ex = _Exchange(request, state.new_record(request), state)
        try:
            resp = await _serve(ex)
            ex.rec.close("completed")
            return resp
        except asyncio.CancelledError:  # handler_cancellation: the peer left
            ex.rec.close("client_closed")
            raise
        except (_Dropped, ConnectionResetError):  # incl. ClientConnectionResetError
            ex.rec.close("client_closed")  # no-op after a deliberate drop
            # aiohttp's write_eof on the dead transport raises ConnectionError,
            # which it swallows quietly; raising here would log a traceback.
            return ex.resp or web.Response(status=499)
        except Exception:
            ex.rec.close("mock_error")  # a bug in the mock itself; aiohttp answers 500
            raise

    return handler


async def _keys_control(state: MockState, request: web.Request) -> web.Response:
    """POST {"key", "status", "retry_after"?} adds a key rule; DELETE clears all."""
    try:
        state.key_rule_control(await request.json() if request.method == "POST" else None)
    except (ValueError, TypeError, KeyError) as exc:
        return web.json_response({"ok": False, "error": repr(exc)}, status=400)
    return web.json_response({"ok": True})


def _injected_message(status: int, headers: Mapping[str, str]) -> str:
    """The message of an injected error. A 401/403 quotes the credential it was
    given, as a careless upstream might: the proxy must never pass that on."""
    if status not in (401, 403):
        return f"Mock injected error {status}"
    presented = next(
        (headers[h] for h in ("authorization", "x-api-key", "x-goog-api-key") if h in headers), ""
    )
    return f"Mock injected error {status}: incorrect API key provided: {presented!r}"


def build_mock_app(state: MockState) -> web.Application:
    app = web.Application()  # bodies are streamed, so client_max_size never applies
    app.router.add_route("*", "/{tail:.*}", _make_handler(state))
    return app


async def _run(
    state: MockState,
    sock: socket.socket,
    stop: asyncio.Event,
    on_ready: Callable[[], None],
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    # handler_cancellation: aiohttp ≥3.9 otherwise keeps running handlers of
    # disconnected clients, and tests measure how fast the proxy cancels us.
    runner = web.AppRunner(
        build_mock_app(state), handler_cancellation=True, access_log=None, shutdown_timeout=0.5
    )
    await runner.setup()
    try:
        await web.SockSite(runner, sock, ssl_context=ssl_context).start()
        on_ready()
        await stop.wait()
    finally:
        await runner.cleanup()


def _bind(host: str, port: int, scheme: str = "http") -> tuple[socket.socket, str, int]:
    sock = socket.create_server((host, port), reuse_port=False)
    real_port = int(sock.getsockname()[1])
    return sock, f"{scheme}://{host}:{real_port}", real_port


@dataclass
class MockHandle:
    url: str
    port: int
    state: MockState
    _loop: asyncio.AbstractEventLoop = field(repr=False)
    _stop: asyncio.Event = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    def stop(self) -> None:
        """Stop server and thread; idempotent."""
        if self._thread.is_alive() and not self._loop.is_closed():
            # The loop may close between the check and the call.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=5)


def start_mock_in_thread(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    default_tokens: int = 12,
    default_delay_ms: float = 0.0,
    ssl_context: ssl.SSLContext | None = None,
) -> MockHandle:
    """Run the mock on its own event loop in a daemon thread; over TLS (an
    https:// url) with ``ssl_context``, as SDKs that dial only wss:// need."""
    state = MockState(default_tokens, default_delay_ms)
    sock, url, real_port = _bind(host, port, "https" if ssl_context else "http")
    loop, stop, ready = asyncio.new_event_loop(), asyncio.Event(), threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(_run(state, sock, stop, ready.set, ssl_context))
        except BaseException as exc:  # surface startup failures to the caller
            errors.append(exc)
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name=f"sluice-mock-{real_port}", daemon=True)
    thread.start()
    ready.wait(10)
    if errors:
        raise RuntimeError("mock failed to start") from errors[0]
    return MockHandle(url, real_port, state, loop, stop, thread)


def serve_mock(
    host: str,
    port: int,
    *,
    default_tokens: int,
    default_delay_ms: float,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Blocking server for ``sluice mock``; runs until SIGINT/SIGTERM."""
    state = MockState(default_tokens, default_delay_ms)
    sock, url, _ = _bind(host, port)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await _run(state, sock, stop, lambda: ready(url) if ready else None)

    asyncio.run(main())
