"""From the neutral request to each provider's streaming call, and back to neutral events.

Requests: OpenAI chat completions with ``stream`` and
``stream_options.include_usage`` (otherwise a stream carries no usage);
Gemini ``streamGenerateContent?alt=sse``; Anthropic messages with ``stream``.

Responses are read with the same pieces the passthrough uses:
:class:`~proxy.sse.SseScanner` finds the events, :class:`~proxy.usage.UsageTap`
reads the usage exactly as the access log would. What remains here is text
and finish reasons, per provider.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..config import ProviderName
from ..context import Usage
from ..routing import Route
from ..sse import SseEvent, SseScanner
from ..usage import UsageTap
from .request import ChatRequest

__all__ = ["Failure", "Finish", "NativeRequest", "StreamDecoder", "Text", "http_failure", "native_request"]

ANTHROPIC_VERSION = "2023-06-01"
# Anthropic requires max_tokens; this is what a request without one gets.
ANTHROPIC_DEFAULT_MAX_TOKENS = 4096
_MESSAGE_CAP = 500  # characters of a provider's error message passed on


@dataclass(frozen=True, slots=True)
class NativeRequest:
    """The provider's request without a credential: the pool picks one and its URL."""

    route: Route  # the provider and the path the Gemini-API form would use
    query: bytes
    headers: dict[str, str]
    body: bytes


def native_request(req: ChatRequest, extra: dict[str, str]) -> NativeRequest:
    """The provider's own streaming request for ``req``; ``extra`` headers go along (``x-mock-*``).

    The credential and the base URL come from the provider's pool, which also
    maps a Gemini call onto Vertex AI when a Vertex credential serves it.
    """
    headers = {**extra, "content-type": "application/json", "accept": "text/event-stream"}
    target, body = _BUILDERS[req.provider](req)
    if req.provider == "anthropic":
        headers["anthropic-version"] = ANTHROPIC_VERSION
    raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    path, _, query = target.partition("?")
    return NativeRequest(Route(req.provider, path), query.encode(), headers, raw)


def _openai(req: ChatRequest) -> tuple[str, dict[str, Any]]:
    messages = [{"role": "system", "content": req.system}] if req.system else []
    messages += [{"role": m.role, "content": m.content} for m in req.messages]
    body: dict[str, Any] = {
        "model": req.model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if req.max_tokens is not None:
        body["max_completion_tokens"] = req.max_tokens  # max_tokens is refused by reasoning models
    if req.temperature is not None:
        body["temperature"] = req.temperature
    return "/v1/chat/completions", body


def _gemini(req: ChatRequest) -> tuple[str, dict[str, Any]]:
    contents = [
        {"role": "model" if m.role == "assistant" else "user", "parts": [{"text": m.content}]}
        for m in req.messages
    ]
    body: dict[str, Any] = {"contents": contents}
    if req.system:
        body["systemInstruction"] = {"parts": [{"text": req.system}]}
    config: dict[str, Any] = {}
    if req.max_tokens is not None:
        config["maxOutputTokens"] = req.max_tokens
    if req.temperature is not None:
        config["temperature"] = req.temperature
    if config:
        body["generationConfig"] = config
    return f"/v1beta/models/{req.model}:streamGenerateContent?alt=sse", body


def _anthropic(req: ChatRequest) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any] = {
        "model": req.model,
        "max_tokens": req.max_tokens or ANTHROPIC_DEFAULT_MAX_TOKENS,
        "messages": [{"role": m.role, "content": m.content} for m in req.messages],
        "stream": True,
    }
    if req.system:
        body["system"] = req.system
    if req.temperature is not None:
        body["temperature"] = req.temperature
    return "/v1/messages", body


_BUILDERS = {"openai": _openai, "gemini": _gemini, "anthropic": _anthropic}


# ------------------------------------------------------------- what comes back
@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Finish:
    reason: str  # neutral: stop, length, content_filter, tool_use, other
    provider_reason: str


@dataclass(frozen=True, slots=True)
class Failure:
    code: str
    message: str
    retryable: bool
    status: int | None = None


Item = Text | Finish | Failure

_REASONS: dict[str, str] = {
    # OpenAI
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    # Gemini
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    # Anthropic
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_use",
    "refusal": "content_filter",
}


# The tap's own bound on an event (a usage-bearing event can carry the whole answer).
_MAX_EVENT = 4 << 20


def _finish(provider_reason: str) -> Finish:
    return Finish(_REASONS.get(provider_reason, "other"), provider_reason)


class StreamDecoder:
    """Feed it the provider's body chunks; it returns neutral items as events complete."""

    def __init__(self, provider: ProviderName, content_type: str) -> None:
        self.provider = provider
        self.finish: Finish | None = None
        self.complete = False  # the provider's own end marker arrived
        self._tap = UsageTap(provider, content_type.encode("latin-1"), None, max_body_bytes=_MAX_EVENT)
        # One scan serves both: the tap reads the usage from the events decoded here.
        self._scanner = SseScanner(max_event_bytes=_MAX_EVENT)
        self._decode = getattr(self, f"_{provider}")

    def feed(self, chunk: bytes) -> list[Item]:
        items: list[Item] = []
        for event in self._scanner.feed(chunk):
            self._tap.observe(event)
            items.extend(self._decode(event))
        for item in items:
            if isinstance(item, Finish):
                self.finish = item
        return items

    def usage(self) -> Usage | None:
        return self._tap.finish()

    @property
    def model(self) -> str | None:
        return self._tap.model

    def _openai(self, event: SseEvent) -> list[Item]:
        if event.data == b"[DONE]":
            self.complete = True
            return []
        obj = _object(event.data)
        if "error" in obj:
            return [_stream_error(obj)]
        items: list[Item] = []
        for choice in obj.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                delta = choice.get("delta")
                text = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(text, str) and text:
                    items.append(Text(text))
                if isinstance(choice.get("finish_reason"), str):
                    items.append(_finish(choice["finish_reason"]))
        return items

    def _gemini(self, event: SseEvent) -> list[Item]:
        obj = _object(event.data)
        if "error" in obj:
            return [_stream_error(obj)]
        items: list[Item] = []
        candidates = obj.get("candidates")
        first = candidates[0] if isinstance(candidates, list) and candidates else None
        if isinstance(first, dict):
            content = first.get("content")
            parts = content.get("parts") if isinstance(content, dict) else None
            for part in parts if isinstance(parts, list) else ():
                # Thought summaries are not the answer.
                text = part.get("text") if isinstance(part, dict) and not part.get("thought") else None
                if isinstance(text, str) and text:
                    items.append(Text(text))
            reason = first.get("finishReason")
            if isinstance(reason, str) and reason != "FINISH_REASON_UNSPECIFIED":
                items.append(_finish(reason))
                self.complete = True  # Gemini has no end marker: the finish reason is it
        feedback = obj.get("promptFeedback")
        if isinstance(feedback, dict) and isinstance(feedback.get("blockReason"), str):
            items.append(Finish("content_filter", feedback["blockReason"]))
            self.complete = True
        return items

    def _anthropic(self, event: SseEvent) -> list[Item]:
        kind = event.event
        if kind == b"message_stop":
            self.complete = True
            return []
        if kind not in (b"content_block_delta", b"message_delta", b"error"):
            return []  # message_start, content_block_start/stop, ping
        obj = _object(event.data)
        if kind == b"error":
            return [_stream_error(obj)]
        delta = obj.get("delta")
        if not isinstance(delta, dict):
            return []
        if kind == b"content_block_delta":
            text = delta.get("text") if delta.get("type") == "text_delta" else None
            return [Text(text)] if isinstance(text, str) and text else []
        reason = delta.get("stop_reason")
        return [_finish(reason)] if isinstance(reason, str) else []


def _object(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _stream_error(obj: dict[str, Any]) -> Failure:
    """An error the provider reported inside a stream that had begun (overloaded, mostly)."""
    error = obj.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    kind = str(error.get("type") or error.get("status") or "") if isinstance(error, dict) else ""
    overloaded = kind in ("overloaded_error", "UNAVAILABLE", "RESOURCE_EXHAUSTED", "rate_limit_error")
    text = message if isinstance(message, str) and message else "The provider reported an error mid-stream."
    return Failure("overloaded" if overloaded else "upstream_error", text[:_MESSAGE_CAP], True)


_RETRYABLE = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


def http_failure(provider: ProviderName, status: int, body: bytes) -> Failure:
    """The provider answered with an error status before any event."""
    if status in (401, 403):
        # The provider refused the key Sluice holds. Its message can quote a
        # fragment of that key, so it is never passed on.
        message = f"The {provider} upstream refused Sluice's credential (HTTP {status})."
        return Failure("upstream_auth", message, False, status)
    error = _object(body).get("error")
    found = error.get("message") if isinstance(error, dict) else None
    message = found[:_MESSAGE_CAP] if isinstance(found, str) and found else f"HTTP {status}"
    message = f"The {provider} upstream answered {status}: {message}"
    if status == 429:
        code = "rate_limited"
    elif status in (503, 529):
        code = "overloaded"
    elif 400 <= status < 500 and status not in _RETRYABLE:
        code = "bad_request"
    else:
        code = "upstream_error"
    return Failure(code, message, status in _RETRYABLE, status)
