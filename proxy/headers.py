"""Header filtering in both directions.

Headers are handled as ASGI-style ``(name, value)`` byte pairs with lower-case
names, so filtering is a set lookup per header and nothing is decoded that
does not need to be.
"""

from __future__ import annotations

from typing import Final

from .asgi import Scope
from .http import Headers, connection_tokens


def request_headers(scope: Scope) -> Headers:
    """The request's header pairs, each a tuple.

    ASGI lets a pair be any two-item sequence, and a layer may have put lists
    there; Sluice reads tuples. A scope holding anything else gets a
    converted copy in its place, so the next reader finds tuples.
    """
    headers = scope["headers"]
    if type(headers) is list:
        for pair in headers:
            if type(pair) is not tuple:
                break
        else:
            return headers
    converted: Headers = [(bytes(name), bytes(value)) for name, value in headers]
    scope["headers"] = converted
    return converted


# RFC 9110 §7.6.1 connection-specific fields, plus the legacy ones proxies meet.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)

# Everything a client may authenticate with. None of it goes upstream: the
# upstream sees only the key Sluice holds.
CLIENT_CREDENTIALS = frozenset({b"authorization", b"x-api-key", b"x-goog-api-key", b"api-key", b"cookie"})

# Facts about the client's hop, not the upstream's: the provider has no need
# for internal addresses. Host and the body's framing (Content-Length) are
# written by the upstream client, which knows the body it actually sends.
CLIENT_HOP = frozenset(
    {
        b"host",
        b"content-length",
        b"expect",
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-forwarded-port",
        b"x-real-ip",
        b"via",
    }
)

# Response headers that describe the upstream's hop. uvicorn writes its own
# Date; Set-Cookie belongs to Sluice's session with the provider, not to the
# client (and would leak between users); Alt-Svc advertises the provider's
# HTTP/3 endpoint, which is not where the client is talking.
UPSTREAM_HOP = frozenset({b"server", b"date", b"set-cookie", b"alt-svc"})

_REQUEST_DROP: Final = HOP_BY_HOP | CLIENT_CREDENTIALS | CLIENT_HOP
_RESPONSE_DROP: Final = HOP_BY_HOP | UPSTREAM_HOP

SSE_EXTRA: Headers = [(b"x-accel-buffering", b"no")]


def _without(headers: Headers, drop: frozenset[bytes]) -> Headers:
    """``headers`` minus the names in ``drop`` and those ``Connection`` lists.

    Both directions: a Connection header names more hop-by-hop fields (RFC
    9110 §7.6.1). Most messages carry no Connection header, so the names it
    lists are filtered out afterwards, only when there is one.
    """
    out: Headers = []
    named: list[bytes] = []
    for name, value in headers:
        if name not in drop:
            out.append((name, value))
        elif name == b"connection":
            named.extend(connection_tokens(value))
    if named:
        return [(n, v) for n, v in out if n not in named]
    return out


def upstream_request_headers(headers: Headers) -> Headers:
    """Client headers (ASGI: lower-case names) minus hop-by-hop, credentials and client-hop facts."""
    return _without(headers, _REQUEST_DROP)


def client_response_headers(headers: Headers) -> tuple[Headers, bool]:
    """Upstream headers (lower-case names) as the client should see them, and
    whether the body is an event stream."""
    out = _without(headers, _RESPONSE_DROP)
    is_sse = False
    has_cache_control = False
    for name, value in out:
        if name == b"content-type" and value.lower().startswith(b"text/event-stream"):
            is_sse = True
        elif name == b"cache-control":
            has_cache_control = True
    if is_sse:
        # nginx buffers proxied responses unless told otherwise, and an
        # intermediary cache must never replay one generation to someone else.
        out.extend(SSE_EXTRA)
        if not has_cache_control:
            out.append((b"cache-control", b"no-cache"))
    return out, is_sse
