"""Client authentication with Sluice's own keys, where each SDK puts its API key.

The OpenAI SDK sends ``Authorization: Bearer``, google-genai
``x-goog-api-key`` (REST clients may use ``?key=``), the Anthropic SDK
``x-api-key``. Whichever arrives is checked; the passthrough later strips them
all, so a client key never travels upstream.

Missing or unknown key: 401. A provider or model the key may not use: 403.
Both in the provider's own error format, so the SDK raises
``AuthenticationError`` / ``PermissionDeniedError`` as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from ..asgi import ASGIApp, Receive, Scope, Send
from ..body import read_body
from ..context import RequestContext, http_context
from ..errors import send_error
from ..headers import request_headers
from ..jsonread import loads
from ..keys import ClientKey, KeyStore
from ..metrics import Metrics
from ..modelpolicy import PolicyError, effective_model
from ..realtime.routes import BROWSER_KEY_PROTOCOL
from ..routing import query_key

logger = logging.getLogger("sluice.auth")


def presented_key(scope: Scope) -> str | None:
    """The client's credential, from the first place an SDK would put it.

    Preferred in this order: ``x-goog-api-key``, ``x-api-key``, ``api-key``
    (each the last one sent, if not empty), a ``Bearer`` authorization,
    Gemini's ``?key=``, and on a WebSocket the browser's subprotocol form
    ``openai-insecure-api-key.<key>`` (a browser cannot set headers).
    """
    goog = x_api = api = bearer = b""
    for name, value in request_headers(scope):
        if name == b"authorization":
            scheme = value[:7]
            if scheme == b"Bearer " or scheme.lower() == b"bearer ":  # as SDKs send it, or not
                bearer = value[7:].strip()
        elif name == b"x-goog-api-key":
            goog = value.strip()
        elif name == b"x-api-key":
            x_api = value.strip()
        elif name == b"api-key":
            api = value.strip()
    found = goog or x_api or api or bearer
    if found:
        return found.decode("latin-1")
    key = query_key(scope["query_string"])
    if key is not None:
        return key.decode("latin-1")
    if scope["type"] == "websocket":
        for protocol in scope.get("subprotocols", ()):
            if protocol.startswith(BROWSER_KEY_PROTOCOL):
                return protocol[len(BROWSER_KEY_PROTOCOL) :] or None
    return None


def model_from_json(body: bytes) -> str | None:
    try:
        document = loads(body)
    except ValueError:
        return None
    model: object = document.get("model") if isinstance(document, dict) else None
    return model if isinstance(model, str) else None


def _effective(
    requested: str | None, provider: str, key: ClientKey, aliases: Mapping[str, str]
) -> str | None:
    """The model the key's list is checked against: the one the upstream will get (aliases resolved).

    A request the model policy refuses outright is left to that layer to
    refuse, with its own message.
    """
    try:
        return effective_model(requested, provider, key, aliases)
    except PolicyError:
        return requested


class Auth:
    """Pure ASGI middleware: only requests with a valid, permitted Sluice key get through."""

    def __init__(
        self,
        app: ASGIApp,
        keys: KeyStore | None,
        metrics: Metrics,
        max_inspect_bytes: int,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.metrics = metrics
        self.max_inspect_bytes = max_inspect_bytes
        self.aliases: Mapping[str, str] = aliases or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = http_context(scope)
        # No keys configured (auth off), or a path nobody serves: the
        # passthrough answers 400/404 without touching an upstream.
        if ctx is None or self.keys is None or ctx.path_error is not None:
            await self.app(scope, receive, send)
            return
        presented = presented_key(scope)
        key = self.keys.lookup(presented) if presented else None
        if key is None:
            reason, message = (
                ("missing", "Missing API key: set api_key to a Sluice key (sk-sluice-…).")
                if presented is None
                else self.keys.refusal(presented)
            )
            await self._reject(ctx, send, 401, reason, message)
            return
        ctx.key, ctx.key_name = key, key.name
        if ctx.kind == "api":
            # Sluice's own API names provider and model in its body: the
            # endpoint checks them against ctx.key once it has parsed it.
            await self.app(scope, receive, send)
            return
        provider = ctx.provider or ""
        if not key.allows_provider(provider):
            await self._reject(ctx, send, 403, "provider", f"This key may not use the {provider} API.")
            return
        if key.models is not None and not (ctx.kind == "realtime" and ctx.provider == "gemini"):
            # (Gemini Live names its model in its first message: the realtime
            # endpoint checks it against ctx.key once it has read it.)
            if ctx.model is None and ctx.route is not None and scope.get("method") == "POST":
                body, receive = await read_body(receive, self.max_inspect_bytes)
                if body is None:
                    await self._reject(
                        ctx, send, 413, "too_large",
                        f"Request body over {self.max_inspect_bytes} bytes: the model cannot be checked.",
                    )  # fmt: skip
                    return
                ctx.model = model_from_json(body)
            model = _effective(ctx.model, provider, key, self.aliases)
            if not key.allows_model(model):
                await self._reject(ctx, send, 403, "model", f"This key may not use the model {model!r}.")
                return
        await self.app(scope, receive, send)

    async def _reject(self, ctx: RequestContext, send: Send, status: int, reason: str, message: str) -> None:
        ctx.outcome = "rejected_auth" if status in (401, 403) else "bad_request"
        ctx.detail = reason
        self.metrics.auth_rejections.inc((reason,))
        await send_error(send, ctx.provider or "openai", status, message)  # type: ignore[arg-type]
