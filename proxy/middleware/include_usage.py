"""Ask OpenAI chat streams for their usage, so every stream can be accounted.

OpenAI reports token usage on a chat stream only when the request sets
``stream_options.include_usage``. With ``SLUICE_OPENAI_INCLUDE_USAGE=true``
Sluice sets it. Off by default because it changes what the client receives:
one extra final chunk whose ``choices`` list is empty, which client code that
reads ``chunk.choices[0]`` unguarded will trip over.
"""

from __future__ import annotations

from ..asgi import ASGIApp, Receive, Scope, Send
from ..body import read_body, replay
from ..context import get_context
from ..streamusage import wants_usage, with_usage


class IncludeUsage:
    def __init__(self, app: ASGIApp, max_inspect_bytes: int) -> None:
        self.app = app
        self.max_inspect_bytes = max_inspect_bytes

    def _applies(self, scope: Scope) -> bool:
        ctx = get_context(scope) if scope["type"] == "http" else None
        return (
            ctx is not None
            and ctx.route is not None
            and wants_usage(ctx.provider, scope["method"], ctx.route.upstream_path)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._applies(scope):
            await self.app(scope, receive, send)
            return
        body, receive = await read_body(receive, self.max_inspect_bytes)
        rewritten = with_usage(body) if body is not None else None
        if rewritten is None:
            await self.app(scope, receive, send)
            return
        headers = [(n, v) for n, v in scope["headers"] if n != b"content-length"]
        headers.append((b"content-length", str(len(rewritten)).encode()))
        message = {"type": "http.request", "body": rewritten, "more_body": False}
        await self.app({**scope, "headers": headers}, replay([message], receive), send)
