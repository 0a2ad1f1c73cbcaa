"""A small client for Sluice's chat API in tests: an SSE reader over an httpx stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from typing import Any

import httpx
import jsonschema

MESSAGES = [{"role": "user", "content": "Say hello."}]
MODELS = {
    "openai": "openai/gpt-4o-mini",
    "gemini": "gemini/gemini-2.5-flash",
    "anthropic": "anthropic/claude-sonnet-4-5",
}


@dataclass
class Event:
    id: str
    event: str
    data: dict[str, Any]

    @property
    def seq(self) -> int:
        return int(self.id.rsplit(":", 1)[1])

    @property
    def generation(self) -> str:
        return self.id.rsplit(":", 1)[0]


@dataclass
class SseReader:
    """Reads the events of one response, keeping the comments and ``retry:`` it saw."""

    response: httpx.Response
    comments: list[str] = field(default_factory=list)
    retry: list[int] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    _buffer: str = ""
    _chunks: AsyncIterator[str] | None = None

    async def next(self) -> Event | None:
        """The next event, or ``None`` at the end of the body."""
        if self._chunks is None:
            self._chunks = self.response.aiter_text()
        while True:
            block, sep, rest = self._buffer.partition("\n\n")
            if sep:
                self._buffer = rest
                event = self._parse(block)
                if event is not None:
                    self.events.append(event)
                    return event
                continue
            try:
                self._buffer += await self._chunks.__anext__()
            except StopAsyncIteration:
                return None

    async def until_end(self) -> list[Event]:
        while await self.next() is not None:
            pass
        return self.events

    def _parse(self, block: str) -> Event | None:
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                self.comments.append(line)
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "retry":
                self.retry.append(int(value))
            else:
                fields[name] = value
        if "data" not in fields:
            return None
        return Event(fields.get("id", ""), fields.get("event", "message"), json.loads(fields["data"]))


@asynccontextmanager
async def chat_stream(
    client: httpx.AsyncClient,
    method: str = "POST",
    *,
    body: dict[str, Any] | None = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[SseReader]:
    """Open a chat stream (POST with a JSON body, or GET with a query / Last-Event-ID)."""
    request = client.build_request(method, "/api/chat", json=body, params=params, headers=headers)
    response = await client.send(request, stream=True)
    try:
        yield SseReader(response)
    finally:
        await response.aclose()


def text_of(events: list[Event]) -> str:
    return "".join(e.data["text"] for e in events if e.event == "token")


def kinds(events: list[Event]) -> list[str]:
    """The event types, with runs of tokens folded into one "token*"."""
    out: list[str] = []
    for event in events:
        name = "token*" if event.event == "token" else event.event
        if not out or out[-1] != name or name != "token*":
            out.append(name)
    return out


@cache
def schema_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(files("proxy").joinpath("static/chat-events.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def assert_valid(events: list[Event]) -> None:
    """Every event matches the published schema, and sequence numbers run 1, 2, 3… without gaps."""
    validator = schema_validator()
    for event in events:
        validator.validate({"id": event.id, "event": event.event, "data": event.data})
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len({e.generation for e in events}) == 1
