"""Asking an OpenAI chat stream for its usage: ``stream_options.include_usage``.

OpenAI reports token usage on a chat stream only when the request sets it.
Used by the ``include_usage`` layer (``SLUICE_OPENAI_INCLUDE_USAGE``, every
request) and by the passthrough for the requests of keys with a budget
(``ctx.include_usage``), which reads the body anyway: there it costs no
second read of the body, and no wrapped ``receive``.
"""

from __future__ import annotations

import json

from .jsonread import loads


def wants_usage(provider: str | None, method: str, upstream_path: str) -> bool:
    """Whether a request is one whose stream OpenAI reports usage on only when asked."""
    return provider == "openai" and method == "POST" and upstream_path.endswith("/chat/completions")


def with_usage(body: bytes) -> bytes | None:
    """The body with include_usage set, or None when it is not a stream request lacking it."""
    # A body asks for a stream only through a "stream" key, written plainly or
    # with \\u escapes (JSON has no other way to spell a letter): without
    # either it is no stream, and need not be parsed.
    if body.find(b'"stream"') == -1 and body.find(b"\\u") == -1:
        return None
    try:
        document = loads(body)
    except ValueError:
        return None  # the upstream will explain what is wrong with it
    if not isinstance(document, dict) or document.get("stream") is not True:
        return None
    options = document.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        return None
    document["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
