"""Which provider a WebSocket is for: the providers' own realtime paths, prefixed or not.

* OpenAI Realtime: ``/v1/realtime?model=…`` (or ``?call_id=…``), and
  ``/openai/v1/realtime``.
* Gemini Live: ``/ws/google.ai.generativelanguage.{v1alpha,v1beta,v1}.GenerativeService.BidiGenerateContent``
  (and ``…BidiGenerateContentConstrained``), also under ``/gemini/``.
* Gemini Live on Vertex AI: ``/ws/google.cloud.aiplatform.{v1,v1beta1}.LlmBidiService/BidiGenerateContent``,
  also under ``/gemini/`` or ``/vertex/``; served by a Vertex credential.

The path was validated (``proxy.routing.validate_path``) before it gets
here; the upstream path is one of the fixed forms above, never the client's
bytes beyond them.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote_to_bytes

from ..routing import Route

_GEMINI: Final = re.compile(
    r"/ws/google\.ai\.generativelanguage\.(v1alpha|v1beta|v1)\.GenerativeService\."
    r"(BidiGenerateContent|BidiGenerateContentConstrained)"
)
_VERTEX: Final = re.compile(
    r"/ws/google\.cloud\.aiplatform\.(v1|v1beta1)\.LlmBidiService/BidiGenerateContent"
)
VERTEX_PREFIX: Final = "/ws/google.cloud.aiplatform."

# A browser cannot set headers on a WebSocket: it offers its key as this subprotocol.
BROWSER_KEY_PROTOCOL: Final = "openai-insecure-api-key."

# The prefixes a realtime path may carry, and the provider each one forces.
_PREFIXES: Final = {"/openai": "openai", "/gemini": "gemini", "/vertex": "gemini"}


def no_route_message(path: str) -> str:
    """Short enough for a close reason (123 bytes), naming the path asked for."""
    shown = path if len(path) <= 40 else path[:37] + "..."
    return f"No realtime route at {shown}: use /v1/realtime?model=... or /ws/...BidiGenerateContent."


def realtime_route(path: str) -> Route | None:
    """The route of a WebSocket request's (validated) path, or ``None``."""
    forced = None
    for prefix, provider in _PREFIXES.items():
        if path.startswith(prefix + "/"):
            forced, path = provider, path[len(prefix) :]
            break
    if path.rstrip("/") == "/v1/realtime" and forced in (None, "openai"):
        return Route("openai", "/v1/realtime")
    if forced in (None, "gemini") and (_GEMINI.fullmatch(path) or _VERTEX.fullmatch(path)):
        return Route("gemini", path)
    return None


def is_vertex(route: Route) -> bool:
    return route.upstream_path.startswith(VERTEX_PREFIX)


def query_value(query_string: bytes, name: bytes) -> str | None:
    """The decoded value of the first ``name=`` query parameter (the OpenAI model)."""
    for part in query_string.split(b"&"):
        key, _, value = part.partition(b"=")
        if unquote_to_bytes(key) == name and value:
            return unquote_to_bytes(value.replace(b"+", b" ")).decode("utf-8", "replace")
    return None
