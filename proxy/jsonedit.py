"""Edits to one member of a JSON object that leave every other byte as it was.

The model policy rewrites a request's ``model`` (or adds a ``max_tokens``)
and must not re-encode the rest: number formats, key order, spacing and
escapes reach the provider exactly as the client wrote them. So instead of
parsing and dumping, :func:`member_spans` finds where each top-level member's
value lies in the bytes, and the edits splice there.

The scanner assumes a document that a JSON parser has already accepted
(callers check with :func:`proxy.jsonread.loads` first); on anything else it
returns ``None`` rather than guessing. A name given twice maps to its last
occurrence, the one JSON parsers keep.
"""

from __future__ import annotations

import json

_SPACE = b" \t\r\n"
_SCALAR_END = b",}] \t\r\n"


def _skip_space(body: bytes, i: int) -> int:
    while i < len(body) and body[i] in _SPACE:
        i += 1
    return i


def _string_end(body: bytes, i: int) -> int:
    """Index just past the string that starts at ``body[i] == '"'``."""
    i += 1
    while True:
        quote = body.index(b'"', i)
        backslashes = 0
        j = quote - 1
        while body[j] == 0x5C:  # an escaped quote has an odd run of backslashes before it
            backslashes += 1
            j -= 1
        if backslashes % 2 == 0:
            return quote + 1
        i = quote + 1


def _value_end(body: bytes, i: int) -> int:
    """Index just past the value that starts at ``body[i]``."""
    first = body[i]
    if first == 0x22:  # "
        return _string_end(body, i)
    if first not in b"{[":
        while i < len(body) and body[i] not in _SCALAR_END:
            i += 1
        return i
    depth = 0
    while True:
        char = body[i]
        if char == 0x22:
            i = _string_end(body, i)
            continue
        if char in b"{[":
            depth += 1
        elif char in b"}]":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1


def member_spans(body: bytes) -> dict[str, tuple[int, int]] | None:
    """Each top-level member's name → the ``(start, end)`` of its value in ``body``; None if not an object."""
    try:
        i = _skip_space(body, 0)
        if body[i : i + 1] != b"{":
            return None
        spans: dict[str, tuple[int, int]] = {}
        i = _skip_space(body, i + 1)
        if body[i : i + 1] == b"}":
            return spans
        while True:
            name_end = _string_end(body, i)
            name = json.loads(body[i:name_end])
            i = _skip_space(body, name_end)
            i = _skip_space(body, i + 1)  # past ':'
            end = _value_end(body, i)
            spans[name] = (i, end)
            i = _skip_space(body, end)
            if body[i : i + 1] != b",":
                return spans
            i = _skip_space(body, i + 1)
    except (IndexError, ValueError):
        return None


def replace_value(body: bytes, span: tuple[int, int], value: object) -> bytes:
    """``body`` with the value at ``span`` replaced by ``value`` (JSON-encoded, compact)."""
    start, end = span
    return body[:start] + _encode(value) + body[end:]


def add_member(body: bytes, name: str, value: object) -> bytes:
    """``body`` (an object) with ``"name": value`` added as its first member."""
    opening = body.index(b"{") + 1
    rest = body[_skip_space(body, opening) :]
    comma = b"" if rest.startswith(b"}") else b","
    return body[:opening] + _encode(name) + b":" + _encode(value) + comma + body[opening:]


def _encode(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
