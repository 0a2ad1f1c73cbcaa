"""Where a request goes: the app's two ends.

:class:`SluiceApp` is the top of the app: Starlette for lifespan and the
plain routes, the middleware chain for the rest. :class:`Dispatch` is the
end of that chain: provider passthrough, realtime sessions (WebSockets), or
Sluice's own API. Both sit behind
the same chain (access log, auth, rate limits), so a request to ``/api/…``
is authenticated, limited and logged like any other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .asgi import ASGIApp, Receive, Scope, Send
from .context import http_context
from .errors import send_error


class SluiceApp:
    """The top-level ASGI app: Starlette for lifespan and the plain routes, the chain for the rest.

    Provider traffic goes straight to the middleware chain instead of through
    Starlette's error and exception middleware, router, mount and two ``send``
    wrappers per message: layers with nothing to do for it.
    """

    def __init__(
        self, plain: Callable[..., Awaitable[None]], chain: ASGIApp, plain_paths: frozenset[str], state: Any
    ) -> None:
        self.plain = plain
        self.chain = chain
        self.plain_paths = plain_paths
        self.state = state  # Starlette's: for introspection in tests and embedding

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if (kind == "http" and scope["path"] not in self.plain_paths) or kind == "websocket":
            await self.chain(scope, receive, send)
        else:
            await self.plain(scope, receive, send)


class Dispatch:
    def __init__(
        self, passthrough: ASGIApp, api: ASGIApp | None = None, realtime: ASGIApp | None = None
    ) -> None:
        self.passthrough = passthrough
        self.api = api
        self.realtime = realtime  # WebSocket sessions (proxy/realtime)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = http_context(scope)
        if ctx is not None and ctx.kind == "realtime" and self.realtime is not None:
            await self.realtime(scope, receive, send)
            return
        if ctx is not None and ctx.kind == "api":
            if self.api is None:
                await send_error(send, "openai", 404, "No such Sluice API endpoint.")
                return
            await self.api(scope, receive, send)
            return
        await self.passthrough(scope, receive, send)
