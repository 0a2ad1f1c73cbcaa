"""Opening the upstream side of a realtime session.

The URL is the provider's configured upstream with ``ws``/``wss`` for
``http``/``https``, the fixed realtime path, and the client's query minus
any ``key=``: never a host or path from the request. The server-held
credential goes in a header (``Authorization: Bearer`` for OpenAI and
Vertex AI, ``x-goog-api-key`` for Gemini), never in the URL; the client's
credentials, its ``Origin`` and its hop's headers stay behind, and so does
the subprotocol that carried a browser's key.

Credentials are tried in the pool's order, as for HTTP (``proxy/pool.py``):
one the upstream refuses at the handshake (401/403) is failed for the
cool-down, a 429 cools it, and the next one is tried. The Vertex AI form of
Gemini Live is served only by Vertex credentials (with their OAuth token,
``proxy/vertex.py``), the Gemini API form only by API keys: a session's
messages are never rewritten, and the two forms name models differently.
"""

from __future__ import annotations

from typing import Final

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from ..asgi import Scope
from ..config import Settings
from ..headers import request_headers, upstream_request_headers
from ..pool import Credential, CredentialPool
from ..routing import Route, strip_query_credentials
from ..vertex import TokenError
from .refusal import error_message
from .routes import BROWSER_KEY_PROTOCOL, is_vertex

CLOSE_TIMEOUT: Final = 2.0  # seconds to wait for the upstream's reply to our close
# The client's handshake headers (the library writes its own), and its page's origin.
_HANDSHAKE: Final = frozenset({b"origin", b"user-agent"})


class Refused(Exception):
    """The session cannot be opened; ``status`` and ``message`` as for an HTTP refusal."""

    def __init__(self, status: int, message: str, detail: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail


def candidates(pool: CredentialPool, route: Route) -> list[Credential]:
    """The credentials that can serve ``route``: healthy ones in order, else the soonest back."""
    vertex = is_vertex(route)
    usable = [c for c in pool.credentials if (c.spec.kind == "vertex") == vertex]
    now = pool.clock()
    healthy = [c for c in usable if c.state == "ok" or now >= c.until]
    if healthy or not usable:
        return healthy
    return [min(usable, key=lambda c: c.until)]


def upstream_url(cred: Credential, route: Route, query_string: bytes) -> str:
    origin = cred.origin
    scheme = "wss" if origin.scheme == "https" else "ws"
    host = f"[{origin.host}]" if ":" in origin.host else origin.host
    query = strip_query_credentials(query_string) if query_string else b""
    target = cred.prefix.decode("latin-1") + route.upstream_path
    if query:
        target += "?" + query.decode("latin-1")
    return f"{scheme}://{host}:{origin.port}{target}"


def forwarded_headers(scope: Scope) -> list[tuple[str, str]]:
    """The client's headers that go upstream: no credentials, hop headers or handshake fields."""
    return [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in upstream_request_headers(request_headers(scope))
        if not name.startswith(b"sec-websocket-") and name not in _HANDSHAKE
    ]


def upstream_subprotocols(offered: list[str]) -> list[str] | None:
    kept = [p for p in offered if not p.startswith(BROWSER_KEY_PROTOCOL)]
    return kept or None


async def open_upstream(
    scope: Scope, route: Route, pool: CredentialPool, settings: Settings
) -> tuple[ClientConnection, Credential]:
    """Connect to the provider with the first credential it accepts; :class:`Refused` if none."""
    provider = route.provider
    creds = candidates(pool, route)
    if not creds:
        kind = "Vertex AI service account" if is_vertex(route) else f"{provider} API key"
        raise Refused(503, f"Sluice has no {kind} for this realtime endpoint.", "no_provider_key")
    headers = forwarded_headers(scope)
    subprotocols = upstream_subprotocols(list(scope.get("subprotocols", ())))
    last = Refused(502, f"The {provider} upstream refused the session.", "refused")
    for cred in creds:
        try:
            name, value = await cred.auth_header()
        except TokenError:
            pool.refused(cred, "token")
            last = Refused(502, f"Sluice could not get a token for the {provider} upstream.", "token")
            continue
        try:
            connection = await connect(
                upstream_url(cred, route, scope["query_string"]),
                additional_headers=[*headers, (name.decode("latin-1"), value.decode("latin-1"))],
                subprotocols=subprotocols,  # type: ignore[arg-type]
                user_agent_header=None,  # the client's own User-Agent went in the headers
                compression=None,  # messages pass as they are (docs/realtime.md)
                open_timeout=settings.connect_timeout,
                ping_interval=settings.realtime_ping_interval,
                ping_timeout=settings.realtime_ping_interval,
                close_timeout=CLOSE_TIMEOUT,
                max_size=settings.realtime_max_message,
                proxy=None,  # no HTTP(S)_PROXY from the environment: the upstream is configured
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                pool.refused(cred, str(status))
                last = Refused(502, f"The {provider} upstream refused Sluice's credential.", "refused")
                continue
            if status == 429:
                pool.throttled(cred, (exc.response.headers.get("retry-after") or "").encode() or None)
                last = Refused(
                    429, f"The {provider} upstream is rate limiting; try again later.", "upstream_429"
                )
                continue
            message = error_message(bytes(exc.response.body)) if exc.response.body else ""
            shown = f": {message}" if message else ""
            # The client's mistake (a bad model, a bad path) is a policy close; the upstream's is a gateway's.
            code = status if 400 <= status < 500 else 502
            raise Refused(
                code, f"The {provider} upstream answered HTTP {status}{shown}", "handshake"
            ) from None
        except TimeoutError:
            raise Refused(
                504, f"Sluice timed out connecting to the {provider} upstream.", "connect_timeout"
            ) from None
        except (OSError, websockets.exceptions.InvalidHandshake, websockets.exceptions.InvalidURI) as exc:
            name_ = exc.__class__.__name__
            raise Refused(
                502, f"Sluice could not connect to the {provider} upstream ({name_}).", "unreachable"
            ) from None
        return connection, cred
    raise last
