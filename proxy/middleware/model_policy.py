"""The model policy layer: aliases, a key's forced or default model, its cap on output tokens.

The rules are :mod:`proxy.modelpolicy`'s; this layer applies them to the
request on its way upstream. It sits after ``auth`` (it needs the key) and
reads a JSON body only when a rule may need it (aliases are configured, or
the key has a policy), up to ``SLUICE_MAX_INSPECT_BYTES``. A larger body
passes untouched under aliases alone, and is refused with 413 when the key's
own policy must be checked. Gemini names its model in the path, which is
rewritten instead; its body is read only for a cap.

The access log and the spend count the model the upstream was asked for.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..asgi import ASGIApp, Message, Receive, Scope, Send
from ..body import read_body, replay
from ..context import RequestContext, get_context
from ..errors import send_error
from ..keys import ClientKey
from ..modelpolicy import PolicyError, effective_model, gemini_path, needs_body, rewrite_body
from ..routing import Route


class ModelPolicy:
    def __init__(self, app: ASGIApp, aliases: Mapping[str, str], max_inspect_bytes: int) -> None:
        self.app = app
        self.aliases = aliases
        self.max_inspect_bytes = max_inspect_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = get_context(scope) if scope["type"] == "http" else None
        if ctx is None or ctx.route is None or ctx.kind != "proxy":
            await self.app(scope, receive, send)
            return
        key = ctx.key if isinstance(ctx.key, ClientKey) else None
        route = ctx.route
        try:
            if route.provider == "gemini":
                self._gemini_path(ctx, route, key)
            if scope["method"] == "POST" and needs_body(route.provider, key, self.aliases):
                scope, receive = await self._body(ctx, key, scope, receive)
        except PolicyError as exc:
            ctx.outcome, ctx.detail = ("rejected_auth" if exc.status == 403 else "bad_request"), exc.rule
            await send_error(send, route.provider, exc.status, exc.message)
            return
        await self.app(scope, receive, send)

    def _gemini_path(self, ctx: RequestContext, route: Route, key: ClientKey | None) -> None:
        if ctx.model is None:
            return  # not a model's method (e.g. the list of models)
        model = effective_model(ctx.model, "gemini", key, self.aliases)
        if model is not None and model != ctx.model:
            ctx.route = Route("gemini", gemini_path(route.upstream_path, model))
            ctx.model = model

    async def _body(
        self, ctx: RequestContext, key: ClientKey | None, scope: Scope, receive: Receive
    ) -> tuple[Scope, Receive]:
        route = ctx.route
        assert route is not None
        body, receive = await read_body(receive, self.max_inspect_bytes)
        if body is None:
            if key is not None and needs_body(route.provider, key, {}):
                limit = self.max_inspect_bytes
                refusal = f"Request body over {limit} bytes: this key's model policy cannot be checked."
                raise PolicyError(413, "too_large", refusal)
            return scope, receive  # aliases alone: a large body passes as it came
        rewritten, model = rewrite_body(body, route.provider, route.upstream_path, key, self.aliases)
        if model is not None:
            ctx.model = model
        if rewritten is body:
            return scope, receive
        # The new length replaces the client's framing (a chunked upload included).
        headers = [(n, v) for n, v in scope["headers"] if n not in (b"content-length", b"transfer-encoding")]
        headers.append((b"content-length", str(len(rewritten)).encode()))
        whole: Message = {"type": "http.request", "body": rewritten, "more_body": False}
        return {**scope, "headers": headers}, replay([whole], receive)
