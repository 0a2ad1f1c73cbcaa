"""Header filtering in both directions.

Headers are handled as ASGI-style ``(name, value)`` byte pairs with lower-case
names, so filtering is a set lookup per header and nothing is decoded that
does not need to be.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final, cast

Headers = list[tuple[bytes, bytes]]

# Header pairs as a request scope may hold them after other layers: ASGI
# allows a pair to be a list. Code compiled by mypyc must read such pairs by
# index; unpacking one typed as a tuple raises TypeError on a list.
ScopeHeaders = Iterable[Sequence[bytes]]


def name_of(pair: Sequence[bytes]) -> bytes:
    """``pair[0]``: a C index on a tuple, what servers give (~20 instructions
    compiled, where the generic index a list needs costs ~100)."""
    if isinstance(pair, tuple):
        return cast(bytes, pair[0])  # narrowed to tuple[Any, ...]
    return pair[0]


def value_of(pair: Sequence[bytes]) -> bytes:
    """``pair[1]``, as :func:`name_of`."""
    if isinstance(pair, tuple):
        return cast(bytes, pair[1])
    return pair[1]


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

# The request path tests for a substring of bytes with ``find``, not ``in``:
# on CPython 3.11 ``needle in data`` first tries the needle as an integer
# (``65 in b"A"`` is allowed), raising and clearing a TypeError before it
# searches. That costs about 2 k instructions; ``find`` about 150.

# CR, LF and every other control character except HTAB, as LF; the rest as "a".
_BREAKS: Final = bytes(10 if (byte < 32 and byte != 9) or byte == 127 else 97 for byte in range(256))


def line_breaks(head: bytes) -> int:
    """How many CR, LF and other control bytes (HTAB aside) ``head`` holds.

    A well-formed head built line by line holds exactly two per line, its CRLF.
    A name or value carrying one more would add a line (request or response
    splitting) or smuggle a control character. Counting over the whole joined
    head is two C-level passes, instead of a check per value.
    """
    return head.translate(_BREAKS).count(b"\n")


def connection_tokens(value: bytes) -> list[bytes]:
    """The options of one ``Connection`` header value, lowercased: ``close``, ``upgrade``, header names."""
    return [token.strip().lower() for token in value.split(b",")]


def _without(headers: ScopeHeaders, drop: frozenset[bytes]) -> Headers:
    """``headers`` as tuples, minus the names in ``drop`` and those ``Connection`` lists.

    Both directions: a Connection header names more hop-by-hop fields (RFC
    9110 §7.6.1). One pass, each pair read with ``name_of``/``value_of`` (a
    scope's may be lists); most messages carry no Connection header, so the
    names it lists are filtered out afterwards, only when there is one.
    """
    out: Headers = []
    named: list[bytes] = []
    for pair in headers:
        name = name_of(pair)
        if name not in drop:
            out.append((name, value_of(pair)))
        elif name == b"connection":
            named.extend(connection_tokens(value_of(pair)))
    if named:
        return [(n, v) for n, v in out if n not in named]
    return out


def upstream_request_headers(headers: ScopeHeaders) -> Headers:
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


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of ``name`` in headers Sluice built itself (tuples)."""
    for n, v in headers:
        if n == name:
            return v
    return None
