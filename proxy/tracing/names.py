"""Attribute names and the values Sluice derives for them.

GenAI attributes follow the current GenAI semantic conventions: the provider
is ``gen_ai.provider.name`` (which replaced ``gen_ai.system``; the values are
the registry's: ``openai``, ``gcp.gemini`` for the Gemini API,
``gcp.vertex_ai`` when a Vertex AI credential served the request,
``anthropic``). HTTP attributes follow the stable HTTP conventions. What has
no convention is under ``sluice.``.
"""

from __future__ import annotations

from typing import Final

# GenAI (semantic-conventions-genai)
PROVIDER: Final = "gen_ai.provider.name"
OPERATION: Final = "gen_ai.operation.name"
REQUEST_MODEL: Final = "gen_ai.request.model"
RESPONSE_MODEL: Final = "gen_ai.response.model"
INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"

# HTTP, URL, network (stable)
METHOD: Final = "http.request.method"
ROUTE: Final = "http.route"
STATUS: Final = "http.response.status_code"
URL_PATH: Final = "url.path"
URL_SCHEME: Final = "url.scheme"
URL_FULL: Final = "url.full"
CLIENT_ADDRESS: Final = "client.address"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
PROTOCOL_VERSION: Final = "network.protocol.version"
ERROR_TYPE: Final = "error.type"

# Sluice's own
REQUEST_ID: Final = "sluice.request.id"
COST: Final = "sluice.cost_usd"  # the request's price (proxy/spend); no GenAI convention names one yet
KEY_NAME: Final = "sluice.key.name"  # the client key's name, never its secret
OUTCOME: Final = "sluice.outcome"
DETAIL: Final = "sluice.outcome.detail"
CREDENTIAL: Final = "sluice.credential"  # the server-held credential's label, never its secret
UPSTREAM_REQUEST_ID: Final = "sluice.upstream.request_id"
FIRST_BYTE_EVENT: Final = "sluice.first_byte"

_PROVIDERS: Final = {"openai": "openai", "gemini": "gcp.gemini", "anthropic": "anthropic"}
VERTEX: Final = "gcp.vertex_ai"


def provider_name(provider: str | None) -> str | None:
    return _PROVIDERS.get(provider) if provider is not None else None


def operation_name(path: str) -> str | None:
    """``gen_ai.operation.name`` for the provider endpoints whose operation is plain from the path."""
    if path.endswith(("/chat/completions", "/messages")):
        return "chat"
    if path.endswith((":generateContent", ":streamGenerateContent")):
        return "generate_content"
    if path.endswith(("/embeddings", ":embedContent", ":batchEmbedContents")):
        return "embeddings"
    if path.endswith("/completions"):
        return "text_completion"
    return None


def route_template(path: str) -> str:
    """``http.route``: the path, a model name in it replaced by ``{model}`` (low cardinality).

    ``/v1beta/models/gemini-2.0-flash:streamGenerateContent`` →
    ``/v1beta/models/{model}:streamGenerateContent``.
    """
    marker = path.find("/models/")
    if marker == -1:
        return path
    start = marker + len("/models/")
    end = len(path)
    for separator in (":", "/"):
        found = path.find(separator, start)
        if found != -1 and found < end:
            end = found
    return path if end == start else f"{path[:start]}{{model}}{path[end:]}"
