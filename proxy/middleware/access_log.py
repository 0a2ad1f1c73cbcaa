"""The access log's layer: one line per HTTP request, written when the request ends.

A realtime session (WebSocket) gets one line too, written at its close, with
``frames_in``, ``frames_out``, ``close_code`` and ``closed_by`` added
(``bytes_in``/``bytes_out`` count its message bytes each way).

The line's fields are listed in :mod:`proxy.accesslog.line`. Bodies are not
logged, unless ``SLUICE_LOG_BODIES`` turns on debugging: then the first
16 KiB of each way are added as ``request_body``/``response_body``.
"""

from __future__ import annotations

import time

from ..accesslog import LogWriter, log_record
from ..asgi import ASGIApp, Message, Receive, Scope, Send
from ..context import http_context
from ..realtime.stats import STATS_KEY

BODY_SAMPLE = 16 * 1024


class AccessLog:
    """Pure ASGI middleware writing :func:`log_line` for every HTTP request."""

    def __init__(self, app: ASGIApp, writer: LogWriter, log_bodies: bool = False) -> None:
        self.app = app
        self.writer = writer
        self.log_bodies = log_bodies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = http_context(scope) if self.writer.enabled else None
        if ctx is None:
            await self.app(scope, receive, send)
            return
        samples: dict[str, bytearray] | None = None
        if self.log_bodies:
            samples = {"request_body": bytearray(), "response_body": bytearray()}
            receive, send = _sampling(receive, send, samples)
        try:
            await self.app(scope, receive, send)
        finally:
            stats = scope.get(STATS_KEY) if ctx.kind == "realtime" else None
            if stats is not None:  # a realtime session: one line at its close, with its own fields
                record = log_record(ctx, time.monotonic())
                record.update(stats.log_fields())
                self.writer.write(record)
            elif samples is None:
                self.writer.log(ctx, time.monotonic())
            else:  # debugging: the generic path will do
                record = log_record(ctx, time.monotonic())
                record.update({k: v.decode("utf-8", "replace") for k, v in samples.items()})
                self.writer.write(record)


def _sampling(receive: Receive, send: Send, samples: dict[str, bytearray]) -> tuple[Receive, Send]:
    def keep(buffer: bytearray, data: bytes) -> None:
        room = BODY_SAMPLE - len(buffer)
        if room > 0:
            buffer += data[:room]

    async def sampled_receive() -> Message:
        message = await receive()
        keep(samples["request_body"], message.get("body", b""))
        return message

    async def sampled_send(message: Message) -> None:
        if message["type"] == "http.response.body":
            keep(samples["response_body"], message.get("body", b""))
        await send(message)

    return sampled_receive, sampled_send
