"""The gate's part for a WebSocket: its context, its refusals, its metrics.

Called by :class:`proxy.gate.Gate` for every ``websocket`` scope. It takes
the client's ``websocket.connect`` (so nothing inside the chain receives it),
makes the request context (routed by ``proxy.realtime.routes``), gives the
chain a :class:`~proxy.realtime.refusal.SessionSend`, and counts the session
open while it runs and in the session metrics when it ends.
"""

from __future__ import annotations

from ..asgi import ASGIApp, Receive, Scope, Send
from ..context import get_or_create_context
from ..forwarded import TrustedProxies
from ..headers import request_headers
from ..metrics import Metrics
from .refusal import SessionSend
from .stats import STATS_KEY, SessionStats


async def gate_session(
    app: ASGIApp, metrics: Metrics, proxies: TrustedProxies, scope: Scope, receive: Receive, send: Send
) -> None:
    if (await receive())["type"] != "websocket.connect":
        return  # gone before the handshake was ours to answer
    ctx = get_or_create_context(scope)
    if proxies.networks:
        ctx.client = proxies.client(ctx.client, request_headers(scope))
    stats = scope[STATS_KEY] = SessionStats()
    session_send = SessionSend(send, ctx, stats, list(scope.get("subprotocols", ())), receive)
    provider = ctx.provider or "none"
    metrics.session_started(provider)
    try:
        await app(scope, receive, session_send)
        if not session_send.closed and not session_send.accepted:
            # Nothing in the chain answered: never leave a handshake hanging.
            await session_send.refuse(1011, "Sluice did not handle this session.", 500)
    finally:
        metrics.session_ended(ctx, stats.frames_in, stats.frames_out, stats.close_code, provider)
