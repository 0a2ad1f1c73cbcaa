"""The end of the middleware chain: provider passthrough, or Sluice's own API.

Both sit behind the same chain (access log, auth, rate limits), so a request
to ``/api/…`` is authenticated, limited and logged like any other.
"""

from __future__ import annotations

from .asgi import ASGIApp, Receive, Scope, Send
from .context import http_context
from .errors import send_error


class Dispatch:
    def __init__(self, passthrough: ASGIApp, api: ASGIApp | None = None) -> None:
        self.passthrough = passthrough
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = http_context(scope)
        if ctx is not None and ctx.kind == "api":
            if self.api is None:
                await send_error(send, "openai", 404, "No such Sluice API endpoint.")
                return
            await self.api(scope, receive, send)
            return
        await self.passthrough(scope, receive, send)
