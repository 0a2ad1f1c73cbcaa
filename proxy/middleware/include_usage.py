"""Ask OpenAI chat streams for their usage, so every stream can be accounted.

OpenAI reports token usage on a chat stream only when the request sets
``stream_options.include_usage``. With ``SLUICE_OPENAI_INCLUDE_USAGE=true``
Sluice sets it. Off by default because it changes what the client receives:
one extra final chunk whose ``choices`` list is empty, which client code that
reads ``chunk.choices[0]`` unguarded will trip over.
"""

from __future__ import annotations

import json

from ..asgi import ASGIApp, Receive, Scope, Send
from ..body import read_body, replay
from ..context import get_context
from ..jsonread import loads


class IncludeUsage:
    def __init__(self, app: ASGIApp, max_inspect_bytes: int) -> None:
        self.app = app
        self.max_inspect_bytes = max_inspect_bytes

    def _applies(self, scope: Scope) -> bool:
        ctx = get_context(scope) if scope["type"] == "http" else None
        return (
            ctx is not None
            and ctx.route is not None
            and ctx.provider == "openai"
            and scope["method"] == "POST"
            and ctx.route.upstream_path.endswith("/chat/completions")
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._applies(scope):
            await self.app(scope, receive, send)
            return
        body, receive = await read_body(receive, self.max_inspect_bytes)
        rewritten = _with_usage(body) if body is not None else None
        if rewritten is None:
            await self.app(scope, receive, send)
            return
        headers = [(n, v) for n, v in scope["headers"] if n != b"content-length"]
        headers.append((b"content-length", str(len(rewritten)).encode()))
        message = {"type": "http.request", "body": rewritten, "more_body": False}
        await self.app({**scope, "headers": headers}, replay([message], receive), send)


def _with_usage(body: bytes) -> bytes | None:
    """The body with include_usage set, or None when it is not a stream request lacking it."""
    # A body asks for a stream only through a "stream" key, written plainly or
    # with \u escapes (JSON has no other way to spell a letter): without
    # either it is no stream, and need not be parsed.
    if body.find(b'"stream"') == -1 and body.find(b"\\u") == -1:
        return None
    try:
        document = loads(body)
    except ValueError:
        return None  # the upstream will explain what is wrong with it
    if not isinstance(document, dict) or document.get("stream") is not True:
        return None
    options = document.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        return None
    document["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
