"""Token usage read from a realtime session's server→client messages.

Only the messages that can carry usage are parsed, found with one substring
search each: OpenAI's ``response.done`` event (``response.usage``) and any
Gemini Live message with ``usageMetadata``. Every other message (audio
deltas, transcripts) costs that search and nothing more; none is changed.
A session's usage is the sum over its responses (each turn is billed).
"""

from __future__ import annotations

from typing import Any, Final

from ..context import Usage
from ..jsonread import loads

_OPENAI_TEXT: Final = '"response.done"'
_GEMINI_TEXT: Final = '"usageMetadata"'
_GEMINI_BYTES: Final = b'"usageMetadata"'


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class SessionUsage:
    """Adds up the usage a provider reports over one session."""

    def __init__(self, provider: str) -> None:
        self.openai = provider == "openai"
        self.usage: Usage | None = None

    def feed(self, message: str | bytes) -> None:
        if isinstance(message, str):
            marker = _OPENAI_TEXT if self.openai else _GEMINI_TEXT
            if message.find(marker) != -1:
                self._parse(message)
        elif not self.openai and message.find(_GEMINI_BYTES) != -1:
            self._parse(message)  # Gemini Live sends its JSON in binary frames

    def _parse(self, message: str | bytes) -> None:
        try:
            document: Any = loads(message)
        except ValueError:
            return
        if not isinstance(document, dict):
            return
        if self.openai:
            response = document.get("response") if document.get("type") == "response.done" else None
            found = response.get("usage") if isinstance(response, dict) else None
            if isinstance(found, dict):
                self._add(found.get("input_tokens"), found.get("output_tokens"), found.get("total_tokens"))
            return
        found = document.get("usageMetadata")
        if isinstance(found, dict):
            output = found.get("responseTokenCount", found.get("candidatesTokenCount"))
            self._add(found.get("promptTokenCount"), output, found.get("totalTokenCount"))

    def _add(self, input_tokens: object, output_tokens: object, total_tokens: object) -> None:
        usage = self.usage
        if usage is None:
            usage = self.usage = Usage(0, 0, 0)
        usage.input_tokens = (usage.input_tokens or 0) + _int(input_tokens)
        usage.output_tokens = (usage.output_tokens or 0) + _int(output_tokens)
        total = _int(total_tokens) or _int(input_tokens) + _int(output_tokens)
        usage.total_tokens = (usage.total_tokens or 0) + total
