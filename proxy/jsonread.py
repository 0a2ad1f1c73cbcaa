"""JSON read on the request path: orjson first, the standard library behind it.

orjson reads a small chat completion in about a quarter of the time
``json.loads`` takes, which matters once per request (the usage tap reads
every JSON response; the auth layer reads the request's model). It is
stricter than ``json``: UTF-8 only, and none of NaN, Infinity, lone surrogate
escapes or integers past 64 bits. What it refuses goes to ``json.loads``, so
a document reads exactly as it would with ``json`` alone.
"""

from __future__ import annotations

import json

import orjson

__all__ = ["loads"]


def loads(data: bytes | bytearray | str) -> object:
    """The document in ``data``; ``ValueError`` if ``json`` cannot read it either."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
