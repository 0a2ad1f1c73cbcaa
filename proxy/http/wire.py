"""HTTP/1.1 wire details shared by the fast server and client."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, cast

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
