"""Rate-limit response headers from a :class:`Decision`.

``RateLimit-Limit``/``-Remaining``/``-Reset`` follow the IETF
``draft-ietf-httpapi-ratelimit-headers`` field names (as many gateways send
them); ``Retry-After`` (RFC 9110) is what the official SDKs read on a 429 to
time their retries. Seconds are rounded up: saying "retry in 0 s" when
0.3 s remain would only earn the client another refusal.
"""

from __future__ import annotations

import math

from .base import Decision


def _seconds(value: float) -> bytes:
    return b"%d" % max(0, math.ceil(value))


def rate_limit_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    """ASGI header pairs (lower-case names) describing ``decision``.

    The ``ratelimit-*`` trio is present when the decision has a limit;
    ``retry-after`` (at least 1) when the request was refused.
    """
    if decision.limit is None:
        headers: list[tuple[bytes, bytes]] = []
    else:
        headers = [
            (b"ratelimit-limit", b"%d" % decision.limit),
            (b"ratelimit-remaining", b"%d" % max(0, decision.remaining or 0)),
            (b"ratelimit-reset", _seconds(decision.reset)),
        ]
    if not decision.allowed:
        headers.append((b"retry-after", _seconds(max(1.0, decision.retry_after))))
    return headers
