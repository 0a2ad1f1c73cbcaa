"""The mock provider's realtime WebSocket endpoints: OpenAI Realtime and Gemini Live.

A WebSocket upgrade to a path ending in ``/realtime`` (OpenAI, under any
prefix: ``/v1/realtime?model=…``), in
``/ws/google.ai.generativelanguage.{v1,v1alpha,v1beta}.GenerativeService.BidiGenerateContent``
(and ``…Constrained``: Gemini Live) or in Vertex AI's
``/ws/google.cloud.aiplatform.{v1,v1beta1}.LlmBidiService/BidiGenerateContent``
(Gemini Live behind an access token the mock's ``/token`` issued) opens a
session that speaks that provider's protocol well enough for the official
SDKs (the dialects live in :mod:`.realtime_openai` and
:mod:`.realtime_gemini`): scripted replies made of
:func:`~proxy.mock.formats.mock_tokens`, audio made of :func:`mock_audio`,
and usage.

Each session is one :class:`~proxy.mock.server.MockRecord`: its handshake
headers and query (the credential the upstream saw), every message in each
direction (``frames_in`` / ``frames_out``), the close code and reason, and
an outcome: ``completed`` (the client closed with a close frame),
``client_closed`` (the connection vanished, code 1006), ``error_injected``
(refused or closed on purpose) or ``dropped``.

Controls, as ``x-mock-*`` handshake headers or, for clients that cannot set
headers, query parameters of the same name (a header wins):

* ``x-mock-tokens``: tokens per reply; ``x-mock-audio-bytes``: audio bytes per
  audio message (default 960: 20 ms of 24 kHz PCM16). A large value makes one
  large frame;
* ``x-mock-delay-ms``: a pause between the messages of a reply (pacing);
* ``x-mock-close-after`` N: after N messages of replies, close the session with
  ``x-mock-close-code`` (default 1011) and ``x-mock-close-reason``;
  ``x-mock-drop-after`` N: abort the TCP connection instead (no close frame);
* ``x-mock-status``: refuse the upgrade with this HTTP status and the
  provider's error body (as do the per-key rules of :mod:`.auth`);
  ``x-mock-headers-delay-ms``: wait before answering the upgrade;
* ``x-mock-echo``: send every message back unchanged (text as text, binary as
  binary) instead of speaking a protocol: round trips for benchmarks;
* ``x-mock-compress``: accept permessage-deflate when the client offers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from aiohttp import WSMsgType, web

from . import auth
from . import formats as fmt

if TYPE_CHECKING:
    from .server import MockRecord, MockState

OPENAI_PATH = re.compile(r"/realtime$")
GEMINI_PATH = re.compile(
    r"/ws/google\.ai\.generativelanguage\.v1(?:alpha|beta)?\.GenerativeService\.BidiGenerateContent(?:Constrained)?$"
)
VERTEX_PATH = re.compile(r"/ws/google\.cloud\.aiplatform\.v1(?:beta1)?\.LlmBidiService/BidiGenerateContent$")
_AUDIO_PATTERN = bytes(range(251))


def mock_audio(size: int) -> bytes:
    """The audio bytes of one audio message: the deterministic pattern i % 251."""
    return (_AUDIO_PATTERN * (size // 251 + 1))[:size]


def is_realtime(request: web.BaseRequest, path: str) -> bool:
    """A WebSocket upgrade to one of the realtime paths."""
    upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
    return upgrade and any(p.search(path) for p in (OPENAI_PATH, GEMINI_PATH, VERTEX_PATH))


def _controls(headers: Mapping[str, str], query: Mapping[str, str]) -> dict[str, str]:
    merged = {k.lower(): v for k, v in query.items() if k.lower().startswith("x-mock-")}
    merged.update({k: v for k, v in headers.items() if k.startswith("x-mock-")})
    return merged


def _int(c: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = c.get(name)
    return int(raw) if raw not in (None, "") else default


@dataclass(frozen=True)
class RealtimeControl:
    """The ``x-mock-*`` knobs of one session (see the module docstring)."""

    tokens: int
    audio_bytes: int
    delay_s: float
    close_after: int | None
    close_code: int
    close_reason: str
    drop_after: int | None
    status: int | None
    headers_delay_s: float
    echo: bool
    compress: bool

    @classmethod
    def parse(cls, c: Mapping[str, str], state: MockState) -> RealtimeControl:
        return cls(
            tokens=_int(c, "x-mock-tokens", state.default_tokens) or 0,
            audio_bytes=_int(c, "x-mock-audio-bytes", 960) or 0,
            delay_s=float(c.get("x-mock-delay-ms") or state.default_delay_ms) / 1000,
            close_after=_int(c, "x-mock-close-after", None),
            close_code=_int(c, "x-mock-close-code", 1011) or 1011,
            close_reason=c.get("x-mock-close-reason", "mock: session closed on purpose"),
            drop_after=_int(c, "x-mock-drop-after", None),
            status=_int(c, "x-mock-status", None),
            headers_delay_s=float(c.get("x-mock-headers-delay-ms") or 0) / 1000,
            echo=c.get("x-mock-echo", "") not in ("", "0"),
            compress=c.get("x-mock-compress", "") not in ("", "0"),
        )


class SessionEnded(Exception):
    """The mock ended the session on purpose (close or drop): stop replying."""


class Session:
    """One upgraded connection: sending (recorded, paced, faulted) and replies."""

    def __init__(
        self, ws: web.WebSocketResponse, request: web.BaseRequest, rec: MockRecord, ctl: RealtimeControl
    ):
        self.ws, self.request, self.rec, self.ctl = ws, request, rec, ctl
        self.reply_frames = 0  # messages sent as parts of replies, for close/drop-after
        self.closing = False
        self._reply: asyncio.Task[None] | None = None

    async def send(self, data: str | bytes) -> None:
        """One message outside any reply (session.created, setupComplete, …)."""
        self.rec.add_frame(data, sent=True)
        if isinstance(data, str):
            await self.ws.send_str(data)
        else:
            await self.ws.send_bytes(data)

    async def send_reply_frame(self, data: str | bytes, first: bool) -> None:
        """One message of a reply: paced, and where the close/drop controls act."""
        if self.ctl.delay_s and not first:
            await asyncio.sleep(self.ctl.delay_s)
        if self.reply_frames == self.ctl.close_after:
            await self.close(self.ctl.close_code, self.ctl.close_reason, "error_injected")
        if self.reply_frames == self.ctl.drop_after:
            await self._drop()
        self.reply_frames += 1
        await self.send(data)

    async def close(self, code: int, reason: str, outcome: str) -> None:
        """Close the session from the mock's side, then stop the caller."""
        self.rec.close_code, self.rec.close_reason = code, reason
        self.rec.close(outcome)
        self.closing = True
        await self.ws.close(code=code, message=reason.encode())
        raise SessionEnded

    async def _drop(self) -> None:
        transport = self.request.transport
        self.rec.close_code = 1006
        self.rec.close("dropped")
        for _ in range(200):  # abort() discards unsent bytes: let the kernel take them first
            if transport is None or transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.005)
        if transport is not None:
            transport.abort()
        raise SessionEnded

    # ---------------------------------------------------------------- replies
    @property
    def replying(self) -> bool:
        return self._reply is not None and not self._reply.done()

    def start_reply(self, reply: Callable[[], Awaitable[None]]) -> None:
        """Run a reply beside the reading loop, so the client can cancel it."""
        self._reply = asyncio.get_running_loop().create_task(self._guard(reply))

    async def _guard(self, reply: Callable[[], Awaitable[None]]) -> None:
        with contextlib.suppress(SessionEnded, ConnectionError):
            await reply()

    async def cancel_reply(self) -> bool:
        """Stop the reply in progress; whether there was one."""
        task, self._reply = self._reply, None
        if task is None or task.done():
            return False
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return True

    async def wait_reply(self) -> None:
        if self._reply is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reply


class Dialect(Protocol):
    """One provider's protocol over a :class:`Session`."""

    async def opened(self) -> None: ...

    async def received(self, data: str | bytes) -> None: ...


class _Echo:
    def __init__(self, session: Session) -> None:
        self.session = session

    async def opened(self) -> None:
        return None

    async def received(self, data: str | bytes) -> None:
        await self.session.send(data)


def _dialect(path: str, session: Session, state: MockState) -> Dialect:
    from .realtime_gemini import GeminiLive
    from .realtime_openai import OpenAIRealtime

    if session.ctl.echo:
        return _Echo(session)
    if GEMINI_PATH.search(path) or VERTEX_PATH.search(path):
        return GeminiLive(session, vertex=bool(VERTEX_PATH.search(path)))
    return OpenAIRealtime(session, session.request.query.get("model", "gpt-realtime"))


async def _refuse(rec: MockRecord, provider: str, status: int, message: str) -> web.Response:
    rec.status = status
    rec.close("error_injected")
    body = fmt.dumps(fmt.error_body(provider, status, message))
    rec.add_sent(body)
    return web.Response(body=body, status=status, content_type="application/json", charset="utf-8")


async def serve(request: web.Request, rec: MockRecord, state: MockState) -> web.StreamResponse:
    """Answer one realtime upgrade and run the session until either side ends it."""
    ctl = RealtimeControl.parse(_controls(rec.headers, request.query), state)
    from .server import _injected_message  # the HTTP routes' wording, credential quoted and all

    provider = "openai" if OPENAI_PATH.search(rec.path) else "gemini"
    if ctl.headers_delay_s:
        await asyncio.sleep(ctl.headers_delay_s)
    if ctl.status is not None and ctl.status >= 400:
        return await _refuse(rec, provider, ctl.status, _injected_message(ctl.status, rec.headers))
    rule = state.key_rule_for(auth.presented_credentials(rec.headers, rec.query))
    if rule is not None:
        return await _refuse(rec, provider, rule.status, _injected_message(rule.status, rec.headers))
    if VERTEX_PATH.search(rec.path) and not state.token_valid(auth.bearer_token(rec.headers)):
        # Vertex AI wants an access token our token endpoint issued, as its HTTP routes do.
        return await _refuse(rec, provider, 401, auth.UNAUTHENTICATED_MESSAGE)
    # No size limit (a test may send a large frame) and no pings of our own.
    ws = web.WebSocketResponse(max_msg_size=0, compress=ctl.compress, autoping=True)
    await ws.prepare(request)
    rec.status, rec.first_byte_at = 101, time.monotonic()
    session = Session(ws, request, rec, ctl)
    dialect = _dialect(rec.path, session, state)
    try:
        await dialect.opened()
        while True:
            msg = await ws.receive()
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                rec.add_frame(msg.data, sent=False)
                await dialect.received(msg.data)
                continue
            if msg.type == WSMsgType.CLOSE:  # the client's close frame (aiohttp answers it)
                # An empty close frame carries no code: RFC 6455 calls that 1005.
                rec.close_code, rec.close_reason = int(msg.data) or 1005, str(msg.extra or "")
            break  # CLOSE, CLOSING (we close), CLOSED or ERROR (the connection is gone)
    except (SessionEnded, ConnectionError):
        pass
    except asyncio.CancelledError:  # handler_cancellation: the connection went away
        rec.close_code = rec.close_code or 1006
        rec.close("client_closed")
        raise
    finally:
        if session.closing:  # our close frame is out: let close() read the client's answer
            await session.wait_reply()
        else:
            await session.cancel_reply()
    if rec.outcome is None:
        if rec.close_code is None:
            rec.close_code = 1006
        rec.close("client_closed" if rec.close_code == 1006 else "completed")
    return ws
