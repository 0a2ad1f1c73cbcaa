"""The neutral chat request: parsed from a JSON body or a query string, validated.

Anything wrong is a :class:`BadChatRequest` whose message says what and where,
answered as a 400 before any generation starts. Validation is strict (unknown
fields are refused) so that a misspelt ``max_token`` fails loudly instead of
being silently ignored.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, unquote

from ..asgi import Scope
from ..config import MODEL_NAME, PROVIDERS, ProviderName

__all__ = [
    "BadChatRequest",
    "ChatRequest",
    "Message",
    "from_json",
    "from_query",
    "last_event_id",
    "mock_headers",
    "resolve_model",
]

Role = Literal["user", "assistant"]

MAX_MESSAGES = 10_000
MAX_OUTPUT_TOKENS = 1_000_000
_FIELDS = frozenset({"model", "messages", "system", "max_tokens", "temperature"})
# Query-string fields: `prompt` is a shortcut for one user message; `key` is
# the client key (read by auth); `last_event_id` stands in for the header.
_QUERY_FIELDS = _FIELDS | {"prompt", "key", "last_event_id"}
# Model names end up in a URL path (Gemini) or a JSON body: a conservative
# alphabet keeps them from ever changing where a request goes.
_MODEL = re.compile(MODEL_NAME)


class BadChatRequest(ValueError):
    """The request cannot be served as given; the message tells the client why."""


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    provider: ProviderName
    model: str
    messages: tuple[Message, ...]
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None


def from_json(body: bytes, aliases: Mapping[str, str]) -> ChatRequest:
    try:
        document = json.loads(body)
    except ValueError:
        raise BadChatRequest("The body must be a JSON object.") from None
    if not isinstance(document, dict):
        raise BadChatRequest("The body must be a JSON object.")
    unknown = set(document) - _FIELDS
    if unknown:
        raise BadChatRequest(f"Unknown field(s): {_names(unknown)}; allowed: {_names(_FIELDS)}.")
    return _build(document, aliases)


def from_query(query_string: bytes, aliases: Mapping[str, str]) -> ChatRequest:
    """The GET form, for ``EventSource``: ``messages`` JSON-encoded, or ``prompt`` for one user message."""
    try:
        pairs = parse_qsl(query_string.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        raise BadChatRequest("The query string is not valid UTF-8.") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in _QUERY_FIELDS:
            raise BadChatRequest(f"Unknown query parameter {name!r}; allowed: {_names(_QUERY_FIELDS)}.")
        if name in params:
            raise BadChatRequest(f"Query parameter {name!r} is given twice.")
        params[name] = value
    document: dict[str, Any] = {k: params[k] for k in ("model", "system") if k in params}
    if "prompt" in params and "messages" in params:
        raise BadChatRequest("Give either prompt or messages, not both.")
    if "prompt" in params:
        document["messages"] = [{"role": "user", "content": params["prompt"]}]
    elif "messages" in params:
        try:
            document["messages"] = json.loads(params["messages"])
        except ValueError:
            raise BadChatRequest("messages must be a JSON-encoded list of messages.") from None
    for name, convert in (("max_tokens", int), ("temperature", float)):
        if name in params:
            try:
                document[name] = convert(params[name])
            except ValueError:
                raise BadChatRequest(f"{name} must be a number.") from None
    return _build(document, aliases)


def resolve_model(raw: object, aliases: Mapping[str, str]) -> tuple[ProviderName, str]:
    """``provider/model``, or a configured alias for one."""
    if not isinstance(raw, str) or not raw:
        raise BadChatRequest("model is required: provider/model (e.g. openai/gpt-4o-mini) or an alias.")
    target = aliases.get(raw, raw)
    provider, slash, model = target.partition("/")
    if not slash or provider not in PROVIDERS:
        known = f" Configured aliases: {_names(aliases)}." if aliases else ""
        raise BadChatRequest(
            f"Unknown model {raw!r}: use provider/model with provider openai, gemini or anthropic "
            f"(e.g. anthropic/claude-sonnet-4-5), or an alias.{known}"
        )
    if not _MODEL.fullmatch(model) or (provider == "gemini" and ":" in model):
        raise BadChatRequest(f"Model name {model!r} has characters Sluice does not accept.")
    return provider, model


def _build(doc: Mapping[str, Any], aliases: Mapping[str, str]) -> ChatRequest:
    provider, model = resolve_model(doc.get("model"), aliases)
    system = doc.get("system")
    if system is not None and not isinstance(system, str):
        raise BadChatRequest("system must be a string.")
    systems, messages = _messages(doc.get("messages"))
    # System messages inside the list join the system prompt: only OpenAI
    # takes them in place; Gemini and Anthropic want one system instruction.
    joined = "\n\n".join(s for s in (system, *systems) if s)
    return ChatRequest(
        provider=provider,
        model=model,
        messages=messages,
        system=joined or None,
        max_tokens=_max_tokens(doc.get("max_tokens")),
        temperature=_temperature(doc.get("temperature")),
    )


def _messages(raw: object) -> tuple[list[str], tuple[Message, ...]]:
    if not isinstance(raw, list) or not raw:
        raise BadChatRequest("messages must be a non-empty list of {role, content} objects.")
    if len(raw) > MAX_MESSAGES:
        raise BadChatRequest(f"At most {MAX_MESSAGES} messages.")
    systems: list[str] = []
    messages: list[Message] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) - {"role", "content"}:
            raise BadChatRequest(f"messages[{i}] must be an object with role and content only.")
        role, content = item.get("role"), item.get("content")
        if not isinstance(content, str):
            raise BadChatRequest(f"messages[{i}].content must be a string.")
        if role == "system":
            systems.append(content)
        elif role in ("user", "assistant"):
            messages.append(Message(cast(Role, role), content))
        else:
            raise BadChatRequest(f"messages[{i}].role must be user, assistant or system.")
    if not messages:
        raise BadChatRequest("messages must hold at least one user or assistant message.")
    return systems, tuple(messages)


def _max_tokens(raw: object) -> int | None:
    if raw is None:
        return None
    if not isinstance(raw, int) or isinstance(raw, bool) or not 1 <= raw <= MAX_OUTPUT_TOKENS:
        raise BadChatRequest(f"max_tokens must be an integer from 1 to {MAX_OUTPUT_TOKENS}.")
    return raw


def _temperature(raw: object) -> float | None:
    if raw is None:
        return None
    if not isinstance(raw, int | float) or isinstance(raw, bool) or not math.isfinite(raw):
        raise BadChatRequest("temperature must be a number from 0 to 2.")
    if not 0 <= raw <= 2:
        raise BadChatRequest("temperature must be a number from 0 to 2.")
    return float(raw)


def _names(names: Mapping[str, object] | set[str] | frozenset[str]) -> str:
    return ", ".join(sorted(names))


def last_event_id(scope: Scope) -> str | None:
    """The event to resume after: the ``Last-Event-ID`` header, else ``?last_event_id=``."""
    for name, value in scope["headers"]:
        if name == b"last-event-id" and value.strip():
            return str(value.decode("latin-1"))
    for part in scope["query_string"].split(b"&"):
        name, _, value = part.partition(b"=")
        if name == b"last_event_id" and value:
            return unquote(value.decode("latin-1"))
    return None


def mock_headers(scope: Scope) -> dict[str, str]:
    """``x-mock-*`` request headers go upstream, as the passthrough would send them: the
    mock provider's behaviour switches. Nothing else of the client's request does."""
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope["headers"]
        if name.startswith(b"x-mock-")
    }
