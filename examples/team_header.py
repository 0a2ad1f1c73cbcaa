"""An example of your own Sluice middleware: tag every upstream request with a
team name, and refuse requests that ask for more output tokens than a ceiling.

Enable it in the config file named by SLUICE_CONFIG:

    [middleware]
    chain = ["access_log", "auth", "model_policy", "rate_limit", "examples.team_header:TeamHeader"]

    [middleware.options."examples.team_header:TeamHeader"]
    team = "research"
    max_output_tokens = 4096

The rules for a Sluice middleware are the pure-ASGI ones (never Starlette's
BaseHTTPMiddleware, which hides client disconnects and buffers streams):

* ``__init__(self, app, **options)`` gets the next layer and your options;
* ``async __call__(self, scope, receive, send)`` handles one request; pass
  non-HTTP scopes straight through;
* keep per-request state in locals, never on ``self``;
* read what earlier layers learned from ``proxy.context.get_context(scope)``
  (request id, provider, model, key name);
* reject by sending a response yourself, in the provider's error format, with
  ``proxy.errors.send_error``;
* never hold back the response body: wrap ``send`` only to look.
"""

from __future__ import annotations

import json

from proxy.asgi import ASGIApp, Receive, Scope, Send
from proxy.body import read_body
from proxy.context import get_context
from proxy.errors import send_error


class TeamHeader:
    def __init__(self, app: ASGIApp, team: str, max_output_tokens: int | None = None) -> None:
        self.app = app
        self.header = (b"x-team", team.encode())
        self.max_output_tokens = max_output_tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        if self.max_output_tokens is not None and scope["method"] == "POST":
            # Small JSON bodies only; anything bigger passes unchecked.
            body, receive = await read_body(receive, 1 << 20)
            asked = _max_tokens(body) if body is not None else None
            if asked is not None and asked > self.max_output_tokens:
                provider = ctx.provider if ctx is not None and ctx.provider else "openai"
                message = f"max_tokens {asked} is over this team's ceiling of {self.max_output_tokens}."
                await send_error(send, provider, 400, message)  # type: ignore[arg-type]
                return
        # Headers added to the scope go upstream (credentials are still stripped later).
        scope = {**scope, "headers": [*scope["headers"], self.header]}
        await self.app(scope, receive, send)


def _max_tokens(body: bytes) -> int | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    for field in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = document.get(field)
        if isinstance(value, int):
            return value
    return None
