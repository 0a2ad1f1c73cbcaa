"""The realtime endpoint: the end of the middleware chain for a WebSocket.

By the time a session gets here the gate has taken the client's
``websocket.connect`` and given the chain a ``send`` that turns refusals
into closes (``refusal.py``); auth has checked the key (and for OpenAI the
model in ``?model=``), the rate limiter has admitted it (one request against
rpm, one concurrency slot held until the session ends). Here:

1. the route and a credential for it (no credential: close 1011);
2. accept (answering ``realtime`` to a browser that offered it);
3. Gemini Live: the first client message is read, its ``setup.model``
   checked against the key's model list (close 1008 if refused), and then
   forwarded unchanged;
4. the upstream connection (``upstream.py``; a failure: close 1014 with
   the reason), then :class:`~proxy.realtime.relay.Relay` until either side
   closes, registered with the drain.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from ..asgi import Message, Receive, Scope, Send
from ..config import Settings
from ..context import RequestContext, get_context
from ..drain import Drain
from ..errors import send_error
from ..jsonread import loads
from ..keys import ClientKey
from ..pool import CredentialPool
from .refusal import SessionSend
from .relay import Relay
from .routes import is_vertex
from .stats import STATS_KEY, SessionStats
from .upstream import Refused, candidates, open_upstream
from .usage import SessionUsage

logger = logging.getLogger("sluice.realtime")


def setup_model(message: Message) -> str | None:
    """The model a Gemini Live ``setup`` message names, without ``models/`` or a Vertex resource path."""
    data = message.get("text")
    if data is None:
        data = message.get("bytes")
    if not data:
        return None
    try:
        document = loads(data)
    except ValueError:
        return None
    setup = document.get("setup") if isinstance(document, dict) else None
    model = setup.get("model") if isinstance(setup, dict) else None
    if not isinstance(model, str):
        return None
    return model.rpartition("models/")[2] or None


class Realtime:
    def __init__(self, settings: Settings, drain: Drain, pools: Mapping[str, CredentialPool]) -> None:
        self.settings = settings
        self.drain = drain
        self.pools = pools
        self.active = 0  # sessions open in this process

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = get_context(scope)
        if ctx is None:
            return
        provider = ctx.provider or "openai"
        if ctx.path_error is not None or ctx.route is None:
            status, message = ctx.path_error or (404, "No realtime route.")
            ctx.outcome, ctx.detail = "bad_request", "bad_path" if status == 400 else "no_route"
            await send_error(send, provider, status, message)  # type: ignore[arg-type]
            return
        route = ctx.route
        pool = self.pools[route.provider]
        if not candidates(pool, route):
            upstream = self.settings.upstreams[route.provider]
            ctx.outcome, ctx.detail = "unavailable", "no_provider_key"
            what = "Vertex AI service account" if is_vertex(route) else "API key"
            message = f"Sluice has no {route.provider} {what} configured; set {upstream.key_setting}."
            await send_error(send, route.provider, 503, message)
            return
        if self.active >= self.settings.pool_size:
            ctx.outcome, ctx.detail = "unavailable", "overloaded"
            message = f"Sluice is at its limit of {self.settings.pool_size} concurrent upstream requests."
            await send_error(send, route.provider, 503, message, [(b"retry-after", b"1")])
            return
        self.active += 1
        try:
            await self._session(scope, receive, send, ctx)
        finally:
            self.active -= 1

    async def _session(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext) -> None:
        route = ctx.route
        assert route is not None
        await send({"type": "websocket.accept"})
        first: Message | None = None
        if route.provider == "gemini":
            try:
                first = await asyncio.wait_for(receive(), self.settings.realtime_idle_timeout)
            except TimeoutError:
                await self._refuse(send, ctx, 1000, "no setup message in time", 408, "ok", "idle_timeout")
                return
            if first["type"] != "websocket.receive":
                ctx.outcome = "client_disconnected"
                return
            ctx.model = setup_model(first)
            key = ctx.key
            if isinstance(key, ClientKey) and key.models is not None and not key.allows_model(ctx.model):
                reason = (
                    f"This key may not use the model {ctx.model!r}."
                    if ctx.model is not None
                    else "The first message must be a setup naming the model."
                )
                await self._refuse(send, ctx, 1008, reason, 403, "rejected_auth", "model")
                return
        try:
            upstream, cred = await open_upstream(scope, route, self.pools[route.provider], self.settings)
        except Refused as refused:
            outcome = "rate_limited" if refused.status == 429 else "upstream_error"
            if refused.detail == "no_provider_key":
                outcome = "unavailable"
            ctx.outcome, ctx.detail = outcome, refused.detail  # type: ignore[assignment]
            await send_error(send, route.provider, refused.status, refused.message)
            return
        ctx.credential = cred.label
        stats = scope.get(STATS_KEY)
        if not isinstance(stats, SessionStats):
            stats = scope[STATS_KEY] = SessionStats()
        relay = Relay(
            ctx,
            stats,
            receive,
            send,
            upstream,
            SessionUsage(route.provider),
            self.settings.realtime_idle_timeout,
        )
        self.drain.in_flight.add(relay)
        try:
            await relay.run(first)
        finally:
            self.drain.in_flight.discard(relay)
            await upstream.close()  # a no-op once the relay closed it

    async def _refuse(
        self, send: Send, ctx: RequestContext, code: int, reason: str, status: int, outcome: str, detail: str
    ) -> None:
        ctx.outcome, ctx.detail = outcome, detail  # type: ignore[assignment]
        if isinstance(send, SessionSend):
            await send.refuse(code, reason, status)
        else:
            await send({"type": "websocket.close", "code": code, "reason": reason})
