"""The neutral chat events and their Server-Sent-Events encoding.

Every event a generation emits has a sequence number (1, 2, 3…, no gaps) and
goes on the wire as::

    id: <generation id>:<seq>
    event: <type>
    data: <one line of JSON>

The id names the generation, so a client reconnecting with ``Last-Event-ID``
(as ``EventSource`` does by itself) tells any Sluice instance which
generation to resume and from where. ``data`` is always a single line:
``json.dumps`` escapes CR and LF inside strings, so text the model writes can
never end an event early.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "HEARTBEAT",
    "TERMINAL",
    "ChatEvent",
    "EventType",
    "new_generation_id",
    "parse_event_id",
    "retry_hint",
]

EventType = Literal["start", "token", "usage", "done", "error"]
TERMINAL: frozenset[str] = frozenset({"done", "error"})  # one of them ends every generation

# An SSE comment: browsers and SSE parsers skip it, proxies see bytes flowing.
HEARTBEAT = b": keepalive\n\n"

_GENERATION_ID = re.compile(r"[0-9a-f]{32}")
_EVENT_ID = re.compile(r"([0-9a-f]{32}):(0|[1-9][0-9]{0,9})")


def new_generation_id() -> str:
    """128 random bits: unguessable, so an id alone reveals nothing of other generations."""
    return secrets.token_hex(16)


def is_generation_id(value: str) -> bool:
    return _GENERATION_ID.fullmatch(value) is not None


def parse_event_id(raw: str) -> tuple[str, int] | None:
    """``(generation id, seq)`` from a ``Last-Event-ID``, or ``None`` when it is not one of ours."""
    found = _EVENT_ID.fullmatch(raw.strip())
    return (found.group(1), int(found.group(2))) if found else None


def retry_hint(milliseconds: int) -> bytes:
    """The ``retry:`` field alone: sets the client's reconnection delay, dispatches nothing."""
    return b"retry: %d\n\n" % milliseconds


@dataclass(frozen=True, slots=True)
class ChatEvent:
    seq: int
    type: EventType
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL

    def sse(self, generation: str) -> bytes:
        payload = json.dumps(self.data, ensure_ascii=False, separators=(",", ":"))
        return f"id: {generation}:{self.seq}\nevent: {self.type}\ndata: {payload}\n\n".encode()

    def dumps(self) -> bytes:
        """The stored form (the sequence number is kept by the store, beside it)."""
        return json.dumps(
            {"t": self.type, "d": self.data}, ensure_ascii=False, separators=(",", ":")
        ).encode()

    @classmethod
    def loads(cls, seq: int, raw: bytes | str) -> ChatEvent:
        obj = json.loads(raw)
        return cls(seq, obj["t"], obj["d"])
