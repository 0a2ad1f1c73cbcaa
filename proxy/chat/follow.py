"""One client connection following a generation: replay from the store, then live.

The connection never talks to the upstream. It reads the generation's events
after the last one its client has, sends each as it is stored, writes a
heartbeat comment when nothing has been sent for the heartbeat interval, and
tells the store it is watching (so the generation knows a client is there).
It ends after the terminal event. If the client goes away, it stops at once;
the generation goes on for the grace period, waiting for a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from ..asgi import Receive, Send
from ..context import RequestContext, Usage
from ..headers import SSE_EXTRA
from .events import HEARTBEAT, ChatEvent, retry_hint
from .store import EventStore, GenerationGone, StoreUnavailable

__all__ = ["RETRY_MS", "SSE_HEADERS", "Follower"]

logger = logging.getLogger("sluice.chat")

RETRY_MS = 1000  # the reconnection delay suggested to clients: well inside the grace period
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    *SSE_EXTRA,  # the same as on the providers' event streams: nginx must not buffer it
]


class Follower:
    def __init__(
        self,
        store: EventStore,
        generation: str,
        ctx: RequestContext,
        *,
        heartbeat: float,
        watcher_renew: float,
    ) -> None:
        self.store = store
        self.generation = generation
        self.ctx = ctx
        self.heartbeat = heartbeat  # 0: none
        self.watcher_renew = watcher_renew
        self.watcher = uuid.uuid4().hex
        self.terminal: ChatEvent | None = None

    async def run(self, receive: Receive, send: Send, after: int, first: list[ChatEvent]) -> None:
        """Send the response: the events after ``after`` (``first`` already read), then live."""
        headers = [*SSE_HEADERS, (b"x-sluice-generation", self.generation.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": retry_hint(RETRY_MS), "more_body": True})
        with contextlib.suppress(StoreUnavailable, GenerationGone):
            await self.store.watch(self.generation, self.watcher)
        pump = asyncio.create_task(self._pump(send, after, first))
        gone = asyncio.create_task(_disconnected(receive))
        try:
            await asyncio.wait([pump, gone], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, gone):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, StoreUnavailable, GenerationGone):
                await self.store.unwatch(self.generation, self.watcher)
        failure = pump.exception() if pump.done() and not pump.cancelled() else None
        client_left = gone.done() and not gone.cancelled()
        if self.terminal is None and (client_left or isinstance(failure, OSError)):
            # The generation goes on (for the grace period): a reconnect resumes it.
            self.ctx.outcome, self.ctx.detail = "client_disconnected", "resumable"
            return
        if failure is not None:
            # The store failed or dropped what this client still needed: cut
            # the response, so the client reconnects (and learns which).
            logger.warning("chat stream %s cut: %s", self.generation, type(failure).__name__)
            self.ctx.outcome, self.ctx.detail = "unavailable", type(failure).__name__
            return
        self._note_outcome()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _note_outcome(self) -> None:
        terminal = self.terminal
        if terminal is not None and terminal.type == "error":
            self.ctx.outcome, self.ctx.detail = "upstream_error", str(terminal.data.get("code"))
        elif terminal is not None and terminal.data.get("reason") == "cancelled":
            self.ctx.outcome, self.ctx.detail = "ok", "cancelled"

    async def _pump(self, send: Send, after: int, events: list[ChatEvent]) -> None:
        loop = asyncio.get_running_loop()
        last_write = renewed = loop.time()
        while True:
            for event in events:
                await send(
                    {"type": "http.response.body", "body": event.sse(self.generation), "more_body": True}
                )
                last_write = loop.time()
                after = event.seq
                if event.type == "usage":
                    await self._claim_usage(event)
                if event.terminal:
                    self.terminal = event
                    return
            now = loop.time()
            if now - renewed >= self.watcher_renew:
                renewed = now
                with contextlib.suppress(StoreUnavailable):
                    await self.store.watch(self.generation, self.watcher)
            wake = renewed + self.watcher_renew
            if self.heartbeat:
                if now - last_write >= self.heartbeat:
                    await send({"type": "http.response.body", "body": HEARTBEAT, "more_body": True})
                    last_write = now
                wake = min(wake, last_write + self.heartbeat)
            events = await self.store.read(self.generation, after, max(wake - loop.time(), 0.01))

    async def _claim_usage(self, event: ChatEvent) -> None:
        """The request that delivers the usage accounts for it (access log, TPM), once per generation."""
        try:
            won = await self.store.claim_usage(self.generation)
        except StoreUnavailable:
            return
        if won:
            data = event.data
            self.ctx.usage = Usage(
                data.get("input_tokens"), data.get("output_tokens"), data.get("total_tokens")
            )


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
