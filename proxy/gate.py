"""The fixed outer layer: one context per request, its id on the response, and metrics.

It also adds the layers' ``ctx.response_headers`` to the response's start.

A WebSocket takes ``proxy.realtime.gate`` instead: its context, its
refusals as closes, its session metrics.

It runs for every HTTP request whatever the configured chain, because the
request id, the status, the bytes sent and the time to first byte are facts
every other layer (access log, rate limiter, metrics) builds on.
"""

from __future__ import annotations

import time

from .asgi import ASGIApp, Message, Receive, Scope, Send
from .context import get_or_create_context
from .forwarded import TrustedProxies
from .headers import request_headers
from .metrics import Metrics
from .realtime.gate import gate_session


class Gate:
    def __init__(self, app: ASGIApp, metrics: Metrics, proxies: TrustedProxies) -> None:
        self.app = app
        self.metrics = metrics
        self.proxies = proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":  # a realtime session (proxy/realtime)
                await gate_session(self.app, self.metrics, self.proxies, scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        ctx = get_or_create_context(scope)
        if self.proxies.networks:
            ctx.client = self.proxies.client(ctx.client, request_headers(scope))
        id_header = (b"x-request-id", ctx.request_id.encode())

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                body = message.get("body")
                if body:
                    ctx.bytes_out += len(body)
                    if ctx.ttfb is None:
                        ctx.ttfb = time.monotonic() - ctx.started
            elif message["type"] == "http.response.start":
                ctx.status = message["status"]
                headers = [*message.get("headers", ()), id_header]
                if ctx.response_headers:
                    headers += ctx.response_headers
                message = {**message, "headers": headers}
            await send(message)

        label = self.metrics.request_started(ctx)
        try:
            await self.app(scope, receive, tracked_send)
        finally:
            self.metrics.request_ended(ctx, time.monotonic(), label)
