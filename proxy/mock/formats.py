"""Wire-format builders for the mock LLM provider (``proxy.mock``).

Pure functions only: they turn a :class:`Reply` (what the mock "generated")
into the exact JSON objects / SSE frames each provider puts on the wire, so
the HTTP server in ``proxy.mock.server`` stays about transport behaviour.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]

# Multi-byte words on purpose: proxies must not split UTF-8 sequences when
# re-chunking. U+2028/U+2029/U+0085 are excluded because some line splitters
# (str.splitlines) treat them as newlines and would corrupt SSE parsing.
_WORDS: tuple[str, ...] = (
    "Hello",
    ",",
    " world",
    " café",
    " naïve",
    " —",
    " 🚀",
    " streaming",
    " über",
    " 日本語",
    " tokens",
    ".",
)
_SSE_JSON = "text/event-stream; charset=utf-8"


def mock_tokens(n: int) -> list[str]:
    """Deterministic token texts; their concatenation is the full reply."""
    return [_WORDS[i % len(_WORDS)] for i in range(n)]


def dumps(obj: object) -> bytes:
    """Compact UTF-8 JSON with raw multi-byte chars, like the real APIs."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def sse(data: object, event: str | None = None, sep: str = "\n") -> bytes:
    head = f"event: {event}{sep}" if event else ""
    return head.encode() + b"data: " + dumps(data) + (sep * 2).encode()


@dataclass(frozen=True)
class Reply:
    """What the mock answers to one request."""

    model: str
    tokens: list[str]
    input_tokens: int
    rid: str  # unique per request, e.g. "mock7"
    created: int
    include_usage: bool = False

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def output_tokens(self) -> int:
        return len(self.tokens)


@dataclass
class StreamPlan:
    """A streamed body: ``tokens`` frames are written one per write, with the
    per-token pacing / silence / drop controls applied between them."""

    content_type: str
    head: list[bytes]
    tokens: Iterable[bytes]
    tail: list[bytes]
    headers: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------- OpenAI chat
def chat_completion(r: Reply) -> JSON:
    return {
        "id": f"chatcmpl-{r.rid}",
        "object": "chat.completion",
        "created": r.created,
        "model": r.model,
        "system_fingerprint": "fp_mock",
        "choices": [
            {
                "index": 0,
                "logprobs": None,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": r.text, "refusal": None},
            }
        ],
        "usage": _openai_usage(r),
    }


def _openai_usage(r: Reply) -> JSON:
    return {
        "prompt_tokens": r.input_tokens,
        "completion_tokens": r.output_tokens,
        "total_tokens": r.input_tokens + r.output_tokens,
    }


def chat_stream(r: Reply) -> StreamPlan:
    def chunk(delta: JSON, finish: str | None = None) -> bytes:
        obj: JSON = {
            "id": f"chatcmpl-{r.rid}",
            "object": "chat.completion.chunk",
            "created": r.created,
            "model": r.model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if r.include_usage:  # OpenAI then sends "usage": null on every chunk
            obj["usage"] = None
        return sse(obj)

    tail = [chunk({}, "stop")]
    if r.include_usage:
        tail.append(
            sse(
                {
                    "id": f"chatcmpl-{r.rid}",
                    "object": "chat.completion.chunk",
                    "created": r.created,
                    "model": r.model,
                    "system_fingerprint": "fp_mock",
                    "choices": [],
                    "usage": _openai_usage(r),
                }
            )
        )
    tail.append(b"data: [DONE]\n\n")
    return StreamPlan(
        _SSE_JSON,
        [chunk({"role": "assistant", "content": ""})],
        [chunk({"content": t}) for t in r.tokens],
        tail,
    )


# ---------------------------------------------------------- OpenAI responses
def _message_item(r: Reply, done: bool) -> JSON:
    content = [_output_text(r.text)] if done else []
    return {
        "type": "message",
        "id": f"msg_{r.rid}",
        "role": "assistant",
        "status": "completed" if done else "in_progress",
        "content": content,
    }


def _output_text(text: str) -> JSON:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def response_object(r: Reply, done: bool = True) -> JSON:
    usage = {
        "input_tokens": r.input_tokens,
        "output_tokens": r.output_tokens,
        "total_tokens": r.input_tokens + r.output_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }
    return {
        "id": f"resp_{r.rid}",
        "object": "response",
        "created_at": r.created,
        "status": "completed" if done else "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": r.model,
        "output": [_message_item(r, True)] if done else [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage if done else None,
        "user": None,
        "metadata": {},
    }


def responses_stream(r: Reply) -> StreamPlan:
    seq = iter(range(1 << 30))
    item = f"msg_{r.rid}"
    part = {"item_id": item, "output_index": 0, "content_index": 0}

    def ev(kind: str, **body: Any) -> bytes:
        return sse({"type": kind, **body, "sequence_number": next(seq)}, event=kind)

    head = [
        ev("response.created", response=response_object(r, False)),
        ev("response.in_progress", response=response_object(r, False)),
        ev("response.output_item.added", output_index=0, item=_message_item(r, False)),
        ev("response.content_part.added", **part, part=_output_text("")),
    ]
    # Built eagerly so sequence numbers stay in wire order.
    deltas = [ev("response.output_text.delta", **part, delta=t, logprobs=[]) for t in r.tokens]
    tail = [
        ev("response.output_text.done", **part, text=r.text, logprobs=[]),
        ev("response.content_part.done", **part, part=_output_text(r.text)),
        ev("response.output_item.done", output_index=0, item=_message_item(r, True)),
        ev("response.completed", response=response_object(r, True)),
    ]
    return StreamPlan(_SSE_JSON, head, deltas, tail)


# ------------------------------------------------------------- embeddings
def _vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round((b - 128) / 128, 6) for b in digest[:8]]


def openai_embeddings(body: Mapping[str, Any], r: Reply) -> JSON:
    raw = body.get("input", "")
    inputs = raw if isinstance(raw, list) else [raw]
    data = [{"object": "embedding", "index": i, "embedding": _vector(str(x))} for i, x in enumerate(inputs)]
    return {
        "object": "list",
        "data": data,
        "model": r.model,
        "usage": {"prompt_tokens": r.input_tokens, "total_tokens": r.input_tokens},
    }


def gemini_embedding(body: Mapping[str, Any]) -> JSON:
    return {"embedding": {"values": _vector(dumps(body.get("content")).decode())}}


def gemini_batch_embeddings(body: Mapping[str, Any]) -> JSON:
    """google-genai's embed_content calls :batchEmbedContents."""
    reqs = body.get("requests")
    items = reqs if isinstance(reqs, list) else []
    return {"embeddings": [gemini_embedding(r)["embedding"] for r in items if isinstance(r, dict)]}


# ------------------------------------------------------------------ models
def models_body(provider: str, model_id: str | None) -> JSON:
    if provider == "anthropic":
        one: JSON = {
            "type": "model",
            "id": model_id or "claude-mock-1",
            "display_name": "Claude Mock",
            "created_at": "2025-01-01T00:00:00Z",
        }
        if model_id:
            return one
        return {"data": [one], "has_more": False, "first_id": one["id"], "last_id": one["id"]}
    if provider == "gemini":
        name = model_id or "gemini-mock"
        gem: JSON = {
            "name": f"models/{name}",
            "version": "001",
            "displayName": "Gemini Mock",
            "description": "Sluice mock model",
            "inputTokenLimit": 1048576,
            "outputTokenLimit": 8192,
            "supportedGenerationMethods": [
                "generateContent",
                "streamGenerateContent",
                "countTokens",
                "embedContent",
            ],
        }
        return gem if model_id else {"models": [gem]}
    oai: JSON = {"id": model_id or "gpt-mock", "object": "model", "created": 0, "owned_by": "sluice-mock"}
    return oai if model_id else {"object": "list", "data": [oai]}


# ------------------------------------------------------------------ Gemini
def _gemini_chunk(r: Reply, text: str, emitted: int, last: bool) -> JSON:
    cand: JSON = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if last:
        cand["finishReason"] = "STOP"
    return {
        "candidates": [cand],
        "usageMetadata": {
            "promptTokenCount": r.input_tokens,
            "candidatesTokenCount": emitted,
            "totalTokenCount": r.input_tokens + emitted,
        },
        "modelVersion": r.model,
        "responseId": r.rid,
    }


def gemini_response(r: Reply) -> JSON:
    return _gemini_chunk(r, r.text, r.output_tokens, True)


def _gemini_chunks(r: Reply) -> Iterator[JSON]:
    if not r.tokens:  # a stream always ends with one finishReason chunk
        yield _gemini_chunk(r, "", 0, True)
    for i, tok in enumerate(r.tokens):
        yield _gemini_chunk(r, tok, i + 1, i == len(r.tokens) - 1)


def gemini_chunks(r: Reply) -> list[JSON]:
    """The GenerateContentResponse objects a stream of ``r`` is made of."""
    return list(_gemini_chunks(r))


def gemini_stream(r: Reply, use_sse: bool) -> StreamPlan:
    if use_sse:  # Google's servers separate SSE events with CRLF
        frames = [sse(c, sep="\r\n") for c in _gemini_chunks(r)]
        return StreamPlan(_SSE_JSON, [], frames, [])
    # Without alt=sse Google streams one JSON array, element by element.
    frames = [(b"[" if i == 0 else b",\r\n") + dumps(c) for i, c in enumerate(_gemini_chunks(r))]
    return StreamPlan("application/json; charset=utf-8", [], frames, [b"]"])


# --------------------------------------------------------------- Anthropic
def anthropic_message(r: Reply) -> JSON:
    return {
        "id": f"msg_{r.rid}",
        "type": "message",
        "role": "assistant",
        "model": r.model,
        "content": [{"type": "text", "text": r.text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": r.input_tokens, "output_tokens": r.output_tokens},
    }


def anthropic_stream(r: Reply) -> StreamPlan:
    def ev(kind: str, **body: Any) -> bytes:
        return sse({"type": kind, **body}, event=kind)

    start = {
        **anthropic_message(r),
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": r.input_tokens, "output_tokens": 1},
    }
    head = [
        ev("message_start", message=start),
        ev("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        b'event: ping\ndata: {"type": "ping"}\n\n',  # byte-exact like Anthropic's
    ]
    deltas = [ev("content_block_delta", index=0, delta={"type": "text_delta", "text": t}) for t in r.tokens]
    tail = [
        ev("content_block_stop", index=0),
        ev(
            "message_delta",
            delta={"stop_reason": "end_turn", "stop_sequence": None},
            usage={"output_tokens": r.output_tokens},
        ),
        ev("message_stop"),
    ]
    return StreamPlan(_SSE_JSON, head, deltas, tail)


# ------------------------------------------------------------------ errors
_OPENAI_ERR = {
    429: ("requests", "rate_limit_exceeded"),
    401: ("invalid_request_error", "invalid_api_key"),
    400: ("invalid_request_error", "invalid_request"),
    404: ("invalid_request_error", "not_found"),
}
_GEMINI_ERR = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_ANTHROPIC_ERR = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def error_body(provider: str, status: int, message: str) -> JSON:
    if provider == "google-oauth":  # Google's token endpoint speaks RFC 6749
        return {"error": "invalid_grant", "error_description": message}
    if provider == "anthropic":
        kind = _ANTHROPIC_ERR.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    if provider == "gemini":
        return {"error": {"code": status, "message": message, "status": _GEMINI_ERR.get(status, "INTERNAL")}}
    kind, code = _OPENAI_ERR.get(status, ("server_error", "server_error"))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def provider_for(path: str, headers: Mapping[str, str], query: Mapping[str, str]) -> str:
    """Which provider's dialect to answer in (errors, /models)."""
    if path.endswith("/messages") or "anthropic-version" in headers:
        return "anthropic"
    if path.endswith("/token"):
        return "google-oauth"
    last = path.rsplit("/", 1)[-1]
    if ":" in last or "x-goog-api-key" in headers or "key" in query:
        return "gemini"
    return "openai"


def provider_headers(provider: str, rid: str, remaining: int) -> dict[str, str]:
    """Realistic per-provider response headers (request id, rate limits)."""
    if provider == "anthropic":
        return {
            "request-id": f"req_{rid}",
            "anthropic-ratelimit-requests-limit": "1000",
            "anthropic-ratelimit-requests-remaining": str(remaining),
        }
    if provider in ("gemini", "google-oauth"):
        return {}
    return {
        "x-request-id": f"req_{rid}",
        "openai-processing-ms": "1",
        "x-ratelimit-limit-requests": "1000",
        "x-ratelimit-remaining-requests": str(remaining),
    }


def pattern_chunks(size: int, chunk: int) -> Iterator[bytes]:
    """Deterministic byte pattern (i % 251) in ``chunk``-sized pieces, lazily:
    a 100 MB body must never exist in memory at once."""
    base = bytes(range(251)) * (chunk // 251 + 2)
    for off in range(0, size, chunk):
        start = off % 251
        yield base[start : start + min(chunk, size - off)]
