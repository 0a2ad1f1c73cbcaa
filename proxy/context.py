"""What one request carries through the middleware chain.

The outermost middleware puts a :class:`RequestContext` in
``scope["sluice"]``; each layer fills in what it learns (the key, the
provider, the status, the usage), and the access log writes it out when the
request ends. Plain attributes, no locking: one request is one task.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import unquote

from .asgi import Scope
from .headers import request_headers
from .http import Headers
from .realtime.routes import no_route_message, query_value, realtime_route
from .routing import BadPath, Route, guess_provider, resolve, validate_path

Outcome = Literal[
    "ok",  # the upstream's response was relayed in full (whatever its status)
    "client_disconnected",  # the client left before the end; the upstream was cancelled
    "upstream_error",  # the upstream failed: unreachable, timed out, cut mid-stream, refused our key
    "rejected_auth",  # no, unknown or revoked client key (401), or key not allowed (403)
    "rate_limited",  # over a per-key limit (429)
    "bad_request",  # refused before any upstream call: bad path, unknown route, too large
    "unavailable",  # Sluice could not serve it: missing provider key, overloaded, limiter down (fail-closed)
    "aborted",  # still running when the drain window closed at shutdown; cut short
]


# Its own __init__ (init=False): made for every request, and a hand-written
# one is much cheaper than the one @dataclass generates (proxy/http/README.md).
@dataclass(slots=True, init=False)
class Usage:
    """Token counts as the provider reported them. ``None`` where it did not say."""

    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None

    def __init__(
        self,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        total_tokens: int | None = None,
    ) -> None:
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.total_tokens = total_tokens

    @property
    def total(self) -> int:
        if self.total_tokens is not None:
            return self.total_tokens
        return (self.input_tokens or 0) + (self.output_tokens or 0)

    def as_dict(self) -> dict[str, int | None]:
        return {"input": self.input_tokens, "output": self.output_tokens, "total": self.total}


class RequestContext:
    """One request's facts, as the layers learn them."""

    request_id: str
    method: str
    path: str  # never the query string: it may hold a client key
    client: str | None
    started: float  # time.monotonic() when it was made
    started_wall: float  # time.time() then
    provider: str | None
    model: str | None
    key_name: str | None
    status: int | None
    bytes_in: int
    bytes_out: int
    ttfb: float | None  # seconds from start to the first response byte sent
    usage: Usage | None
    outcome: Outcome
    upstream_request_id: str | None
    credential: str | None  # the label of the server-held credential that served it
    detail: str | None  # a short reason for a non-ok outcome, no secrets
    route: Route | None
    path_error: tuple[int, str] | None  # (status, message) when the path cannot be served
    # "proxy": a provider API path for the passthrough. "api": Sluice's own API
    # under /api/ (provider and model come from the request body, set there).
    # "realtime": a WebSocket session (proxy/realtime).
    kind: Literal["proxy", "api", "realtime"]
    key: object | None  # the authenticated ClientKey (typed loosely to keep this module leaf-level)
    # Headers a layer wants on the response, whoever starts it: the Gate adds
    # them to the response's start. Cheaper than wrapping send (a coroutine
    # per message), and they reach error responses from inner layers too.
    response_headers: list[tuple[bytes, bytes]] | None

    def __init__(self, request_id: str, method: str, path: str, client: str | None = None) -> None:
        """What is known when a request arrives; the layers fill in the rest."""
        self.request_id = request_id
        self.method = method
        self.path = path
        self.client = client
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.provider = self.model = self.key_name = None
        self.status = None
        self.bytes_in = self.bytes_out = 0
        self.ttfb = None
        self.usage = None
        self.outcome = "ok"
        self.upstream_request_id = self.credential = self.detail = None
        self.route = None
        self.path_error = None
        self.kind = "proxy"
        self.key = None
        self.response_headers = None


def get_context(scope: Scope) -> RequestContext | None:
    ctx = scope.get("sluice")
    return ctx if isinstance(ctx, RequestContext) else None


# --- creating one ---------------------------------------------------------

_REQUEST_ID_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def _request_id(headers: Headers) -> str:
    """The client's X-Request-ID when it is a sane token, else a fresh one."""
    for name, value in headers:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if 0 < len(candidate) <= 128 and _REQUEST_ID_CHARS.issuperset(candidate):
                return candidate
            break
    return new_id()


class _Ids:
    """Ids: 16 random hex digits per process, then a counter.

    As unique as a uuid4 across workers and restarts, without its cost on
    every request.
    """

    def __init__(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.issued = 10**15  # str() of it has 16 digits, for the next 9 * 10**15 ids


_IDS: Final = _Ids()


def new_id() -> str:
    """A fresh id of 32 hex digits (the last 16 decimal): request ids, and the rate limiter's leases."""
    ids = _IDS
    ids.issued += 1
    return ids.prefix + str(ids.issued)


def new_context(scope: Scope) -> RequestContext:
    """Build the context for an HTTP request or a WebSocket and route it (validation included)."""
    headers = request_headers(scope)
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    websocket = scope["type"] == "websocket"
    if websocket and raw_path.startswith(b"//ws/"):
        # @google/genai's live client (JavaScript) joins its base URL, which always
        # ends in "/", and "/ws/…"; Google's servers accept the "//", so must we.
        raw_path = raw_path[1:]
    client = scope.get("client")
    ctx = RequestContext(
        request_id=_request_id(headers),
        method=scope.get("method", "GET"),  # a WebSocket's scope has none: its handshake is a GET
        # Logged as received (JSON-escaped by the log writer), query excluded, bounded.
        path=raw_path[:512].decode("latin-1"),
        client=client[0] if client else None,
    )
    if ctx.method in REFUSED_METHODS:
        # TRACE echoes the request (headers included) back; CONNECT asks for a
        # tunnel. Neither is a provider API call, and forwarding either would
        # send the server-held key along.
        ctx.provider = guess_provider(raw_path, headers)
        ctx.path_error = (405, f"Sluice does not forward {ctx.method} requests.")
        return ctx
    if raw_path.startswith(API_PREFIX) and not websocket:
        ctx.kind = "api"
        return ctx
    try:
        validate_path(raw_path)
    except BadPath as exc:
        ctx.provider = guess_provider(raw_path, headers)
        ctx.path_error = (400, f"Bad request path: {exc}.")
        return ctx
    if websocket:
        ctx.kind = "realtime"
        route_session(ctx, scope["query_string"])
        return ctx
    ctx.route = resolve(raw_path, headers, scope["query_string"])
    if ctx.route is None:
        ctx.provider = guess_provider(raw_path, headers)
        ctx.path_error = (404, NO_ROUTE_MESSAGE)
    else:
        ctx.provider = ctx.route.provider
        ctx.model = model_from_path(ctx.route.upstream_path)
    return ctx


API_PREFIX = b"/api/"
REFUSED_METHODS: Final = frozenset({"TRACE", "CONNECT"})

NO_ROUTE_MESSAGE = (
    "No provider serves this path. Use /openai/…, /gemini/…, /anthropic/… or an SDK's own "
    "path such as /v1/chat/completions, /v1beta/models/… or /v1/messages."
)


def model_from_path(upstream_path: str) -> str | None:
    """Gemini names the model in the path: ``…/models/{model}:{method}``."""
    marker = upstream_path.find("/models/")
    if marker == -1:
        return None
    name = upstream_path[marker + len("/models/") :]
    model, colon, _method = name.partition(":")
    return unquote(model) if colon and model and "/" not in model else None


def route_session(ctx: RequestContext, query_string: bytes) -> None:
    """Route a WebSocket (its path already validated): a realtime endpoint, or a 404."""
    ctx.route = realtime_route(ctx.path)
    if ctx.route is None:
        ctx.provider = "openai"
        ctx.path_error = (404, no_route_message(ctx.path))
        return
    ctx.provider = ctx.route.provider
    if ctx.provider == "openai":
        ctx.model = query_value(query_string, b"model")
    # Gemini Live names its model in the first message: proxy/realtime reads it there.


def http_context(scope: Scope) -> RequestContext | None:
    """The context of an HTTP request or a WebSocket, made if need be; None for any other scope."""
    ctx = get_context(scope)
    if ctx is None and (scope["type"] == "http" or scope["type"] == "websocket"):
        ctx = scope["sluice"] = new_context(scope)
    return ctx


def get_or_create_context(scope: Scope) -> RequestContext:
    ctx = get_context(scope)
    if ctx is None:
        ctx = scope["sluice"] = new_context(scope)
    return ctx
