"""One realtime session's two directions, from accept to close.

* Each message passes as it arrived: text as text, binary as binary, one
  message as one message, in order; nothing is decoded beyond the UTF-8
  the server already checked, nothing re-encoded, nothing added.
* Backpressure, not buffering: each direction reads its next message only
  once the other side has taken the last one (the client's ``send`` waits
  for its socket, the upstream's ``send`` for its write buffer), so a slow
  reader on either side holds at most a message in flight here, plus the
  small queues of the two protocols, each bounded by the message size limit.
* A close on one side closes the other, at once, with the same code and
  reason where the protocol lets it be sent again (1005 becomes 1000; an
  abnormal end, 1006, becomes 1014 toward the client and 1001 upstream).
* No message either way for ``SLUICE_REALTIME_IDLE_TIMEOUT``: both sides
  are closed with 1000. The drain's end: both sides closed with 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Final

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from ..asgi import Message, Receive, Send
from ..context import RequestContext
from .refusal import reason_text
from .stats import SessionStats, Side
from .usage import SessionUsage

NORMAL: Final = 1000
GOING_AWAY: Final = 1001
NO_STATUS: Final = 1005
ABNORMAL: Final = 1006
BAD_GATEWAY: Final = 1014
# Codes that are facts about a connection, never sent in a close frame.
_UNSENDABLE: Final = frozenset({NO_STATUS, ABNORMAL, 1015})


@dataclass(slots=True)
class _End:
    side: Side
    code: int
    reason: str


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def _closed(exc: ConnectionClosed) -> _End:
    """How the upstream ended: the close it sent, else the one we sent it (too big, no pong), else 1006."""
    frame = exc.rcvd or exc.sent
    return _End("upstream", frame.code, frame.reason) if frame is not None else _End("upstream", ABNORMAL, "")


class Relay:
    def __init__(
        self,
        ctx: RequestContext,
        stats: SessionStats,
        receive: Receive,
        send: Send,
        upstream: ClientConnection,
        usage: SessionUsage,
        idle_timeout: float,
    ) -> None:
        self.ctx = ctx
        self.stats = stats
        self.receive = receive
        self.send = send
        self.upstream = upstream
        self.usage = usage
        self.idle_timeout = idle_timeout
        self.last = 0.0  # loop time of the last message either way
        self.aborted = False
        self.tasks: list[asyncio.Task[_End]] = []

    def abort(self) -> None:
        """The drain window is over: end the session (both sides get 1001)."""
        self.aborted = True
        for task in self.tasks:
            task.cancel()

    async def run(self, first: Message | None = None) -> None:
        """Relay until either side closes; ``first`` is a client message already received (Gemini's setup)."""
        loop = asyncio.get_running_loop()
        self.last = loop.time()
        inbound = loop.create_task(self._client_to_upstream(loop, first))
        outbound = loop.create_task(self._upstream_to_client(loop))
        self.tasks = [inbound, outbound]
        end: _End | None = None
        try:
            while end is None:
                timeout = self.last + self.idle_timeout - loop.time()
                done, _ = await asyncio.wait(
                    self.tasks, timeout=max(timeout, 0.0), return_when="FIRST_COMPLETED"
                )
                if self.aborted:
                    end = _End("sluice", GOING_AWAY, "Sluice is shutting down")
                elif outbound in done:
                    end = outbound.result()
                elif done:
                    end = inbound.result()
                    if end.side == "upstream":
                        # The client's message met the upstream's close: what the upstream
                        # sent before closing still goes to the client, in order, then its close.
                        await asyncio.wait([outbound], timeout=self.idle_timeout)
                        if outbound.done() and not outbound.cancelled():
                            end = outbound.result()
                elif loop.time() - self.last >= self.idle_timeout:
                    end = _End("sluice", NORMAL, f"idle for {self.idle_timeout:g} s")
        finally:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await self._close(end or _End("sluice", GOING_AWAY, ""))

    async def _client_to_upstream(self, loop: asyncio.AbstractEventLoop, first: Message | None) -> _End:
        receive, upstream, stats, ctx = self.receive, self.upstream, self.stats, self.ctx
        while True:
            if first is not None:
                message, first = first, None
            else:
                message = await receive()
            if message["type"] != "websocket.receive":
                # websocket.disconnect: the client closed (or vanished: 1006).
                return _End("client", message.get("code", NO_STATUS), message.get("reason") or "")
            text = message.get("text")
            try:
                if text is not None:
                    await upstream.send(text)
                    ctx.bytes_in += _size(text)
                else:
                    data = message.get("bytes") or b""
                    await upstream.send(data)
                    ctx.bytes_in += len(data)
            except ConnectionClosed as exc:
                return _closed(exc)
            stats.frames_in += 1
            self.last = loop.time()

    async def _upstream_to_client(self, loop: asyncio.AbstractEventLoop) -> _End:
        send, upstream, stats, ctx, usage = self.send, self.upstream, self.stats, self.ctx, self.usage
        while True:
            try:
                data = await upstream.recv()
            except ConnectionClosed as exc:
                return _closed(exc)
            usage.feed(data)
            try:
                if isinstance(data, str):
                    await send({"type": "websocket.send", "text": data})
                    ctx.bytes_out += _size(data)
                else:
                    await send({"type": "websocket.send", "bytes": data})
                    ctx.bytes_out += len(data)
            except OSError:  # uvicorn's ClientDisconnected: the client has gone
                return _End("client", ABNORMAL, "")
            stats.frames_out += 1
            self.last = loop.time()
            if ctx.ttfb is None:
                ctx.ttfb = loop.time() - ctx.started

    async def _close(self, end: _End) -> None:
        """Close the side(s) that did not end the session, passing the code on."""
        self.stats.close_code, self.stats.closed_by = end.code, end.side
        self.ctx.usage = self.usage.usage
        reason = reason_text(end.reason)
        if end.side != "upstream":
            code = GOING_AWAY if end.code in _UNSENDABLE else end.code
            await self.upstream.close(code, reason)  # sends at once; waits briefly for the reply
        if end.side != "client":
            if end.code == NO_STATUS:
                code = NORMAL
            elif end.code in _UNSENDABLE:
                code, reason = BAD_GATEWAY, "the upstream connection was lost"
            else:
                code = end.code
            with contextlib.suppress(OSError):  # the client may have gone too
                await self.send({"type": "websocket.close", "code": code, "reason": reason})
        self._outcome(end)

    def _outcome(self, end: _End) -> None:
        ctx = self.ctx
        if end.side == "sluice":
            ctx.outcome, ctx.detail = ("aborted", "drain") if self.aborted else ("ok", "idle_timeout")
        elif end.side == "client":
            if end.code == ABNORMAL:
                ctx.outcome, ctx.detail = "client_disconnected", None
        elif end.code not in (NORMAL, GOING_AWAY, NO_STATUS):
            ctx.outcome, ctx.detail = "upstream_error", f"closed_{end.code}"
