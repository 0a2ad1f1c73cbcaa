"""HTTP/1.1 wire details that the clients and the fast server share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, cast

from .interface import Body, Headers

_BODYLESS_METHODS: Final = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})

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


# An app's response header pairs may be lists (ASGI allows any two-item
# sequence). Compiled, unpacking a pair typed as a tuple raises on a list,
# and unpacking a Sequence is a generic iteration: these index a tuple in C
# and anything else generically.


def name_of(pair: Sequence[bytes]) -> bytes:
    if isinstance(pair, tuple):
        return cast(bytes, pair[0])
    return pair[0]


def value_of(pair: Sequence[bytes]) -> bytes:
    if isinstance(pair, tuple):
        return cast(bytes, pair[1])
    return pair[1]


def framing(method: str, body: Body, length: int | None) -> tuple[bytes, bytes] | None:
    """The header that frames a request's body, or None for a bodiless request that needs none.

    Bytes go with their length (``content-length: 0`` for an empty body on a
    method that has one), a streamed body with ``length`` as its
    ``Content-Length``, or chunked when its length is unknown.
    """
    if isinstance(body, bytes) or body is None:
        if body or method not in _BODYLESS_METHODS:
            return b"content-length", b"%d" % len(body or b"")
        return None
    if length is not None:
        return b"content-length", b"%d" % length
    return b"transfer-encoding", b"chunked"


def body_framed(headers: Headers) -> bool:
    """Whether a response's headers give its body's length (else the body runs to the close)."""
    for name, value in headers:
        if name == b"content-length":
            return True
        if name == b"transfer-encoding" and value.lower().find(b"chunked") != -1:
            return True
    return False
