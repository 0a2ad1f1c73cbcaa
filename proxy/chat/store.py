"""Where a generation's events live, so any client connection can replay and follow them.

Two stores share one interface, :class:`EventStore`: :class:`MemoryStore`
(this process only) and :class:`~proxy.chat.redis_store.RedisStore` (every
worker and instance sharing one Redis). The generation writes; each client
connection reads ``after`` the last sequence number it has and waits for more.

Retention is bounded both ways: at most ``max_events`` per generation (the
oldest are dropped first; a reader that needs a dropped event gets
:class:`EventsExpired`), and a finished generation is forgotten
``retention`` seconds after its end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .events import ChatEvent

__all__ = [
    "EventStore",
    "EventsExpired",
    "GenerationGone",
    "GenerationMeta",
    "MemoryStore",
    "StoreUnavailable",
]

CancelCallback = Callable[[str], None]


class StoreUnavailable(Exception):
    """The store (Redis) cannot be reached; the operation did not happen."""


class GenerationGone(Exception):
    """No such generation: never started, expired, or its runner died."""


class EventsExpired(Exception):
    """The events after the requested one are no longer all kept."""


@dataclass(frozen=True, slots=True)
class GenerationMeta:
    id: str
    provider: str
    model: str
    key_name: str | None  # who may resume and cancel it (None: auth is off)
    created: float = field(default_factory=time.time)
    finished: bool = False  # its terminal event is stored


class EventStore(Protocol):
    async def start(self, on_cancel: CancelCallback) -> None:
        """Begin listening for cancels addressed to this process's generations."""

    async def close(self) -> None: ...

    async def ping(self) -> bool: ...

    async def create(self, meta: GenerationMeta) -> None: ...

    async def meta(self, generation: str) -> GenerationMeta | None: ...

    async def append(self, generation: str, event: ChatEvent) -> None:
        """Add the next event; sequence numbers are given by the one writer, in order."""

    async def read(self, generation: str, after: int, wait: float) -> list[ChatEvent]:
        """The events after ``after``, waiting up to ``wait`` seconds for one if there is none.

        Raises :class:`GenerationGone` or :class:`EventsExpired`."""

    async def finish(self, generation: str) -> None:
        """The last event is in: keep it all for ``retention`` seconds, then forget it."""

    async def watch(self, generation: str, watcher: str) -> None:
        """A client is attached (call again now and then: a watcher lapses if not renewed)."""

    async def unwatch(self, generation: str, watcher: str) -> None: ...

    async def tick(self, generation: str) -> tuple[int, bool]:
        """For the running generation: ``(clients attached, cancel requested)``; keeps it alive."""

    async def request_cancel(self, generation: str) -> None:
        """Mark it cancelled and tell the process running it, wherever that is."""

    async def claim_usage(self, generation: str) -> bool:
        """True exactly once per generation: whoever wins accounts for its tokens."""

    async def expire(self) -> None:
        """Forget what is past its retention (the memory store; Redis expires keys itself)."""


class _Log:
    __slots__ = ("cancel", "changed", "done_at", "events", "first", "meta", "usage_claimed", "watchers")

    def __init__(self, meta: GenerationMeta) -> None:
        self.meta = meta
        self.events: list[ChatEvent] = []
        self.first = 1  # sequence number of events[0]
        self.changed = asyncio.Event()  # replaced on every append: readers wait on the one they saw
        self.done_at: float | None = None
        self.watchers: dict[str, float] = {}  # watcher -> lapses at (monotonic)
        self.cancel = False
        self.usage_claimed = False


class MemoryStore:
    """Events in this process's memory: resumable only on this process (one worker, no Redis)."""

    def __init__(self, *, max_events: int, retention: float, watcher_ttl: float = 30.0) -> None:
        self.max_events = max_events
        self.retention = retention
        self.watcher_ttl = watcher_ttl
        self._logs: dict[str, _Log] = {}

    async def start(self, on_cancel: CancelCallback) -> None:
        return None  # one process: the API cancels its own runners directly

    async def close(self) -> None:
        for log in self._logs.values():
            log.changed.set()  # wake readers; they find the generation gone
        self._logs.clear()

    async def ping(self) -> bool:
        return True

    async def create(self, meta: GenerationMeta) -> None:
        self._logs[meta.id] = _Log(meta)

    async def meta(self, generation: str) -> GenerationMeta | None:
        log = self._logs.get(generation)
        if log is None:
            return None
        return dataclasses.replace(log.meta, finished=log.done_at is not None)

    async def append(self, generation: str, event: ChatEvent) -> None:
        log = self._log(generation)
        log.events.append(event)
        # Trim in steps, so appending stays O(1) amortised on a long generation.
        excess = len(log.events) - self.max_events
        if excess > max(1, self.max_events // 8):
            del log.events[:excess]
            log.first = log.events[0].seq
        changed, log.changed = log.changed, asyncio.Event()
        changed.set()

    async def read(self, generation: str, after: int, wait: float) -> list[ChatEvent]:
        log = self._log(generation)
        if after + 1 < log.first:
            raise EventsExpired(generation)
        start = after + 1 - log.first
        if start >= len(log.events) and wait > 0 and log.done_at is None:
            changed = log.changed
            try:
                async with asyncio.timeout(wait):
                    await changed.wait()
            except TimeoutError:
                return []
            log = self._log(generation)
            if after + 1 < log.first:
                raise EventsExpired(generation)
            start = after + 1 - log.first
        events = log.events[max(start, 0) :]
        if not events and log.done_at is not None:
            raise GenerationGone(generation)  # finished, and nothing after `after`: nothing will come
        return events

    async def finish(self, generation: str) -> None:
        log = self._logs.get(generation)
        if log is not None:
            log.done_at = time.monotonic()
            log.changed.set()

    async def watch(self, generation: str, watcher: str) -> None:
        log = self._logs.get(generation)
        if log is not None:
            log.watchers[watcher] = time.monotonic() + self.watcher_ttl

    async def unwatch(self, generation: str, watcher: str) -> None:
        log = self._logs.get(generation)
        if log is not None:
            log.watchers.pop(watcher, None)

    async def tick(self, generation: str) -> tuple[int, bool]:
        log = self._log(generation)
        now = time.monotonic()
        log.watchers = {w: until for w, until in log.watchers.items() if until > now}
        return len(log.watchers), log.cancel

    async def request_cancel(self, generation: str) -> None:
        log = self._logs.get(generation)
        if log is not None:
            log.cancel = True

    async def claim_usage(self, generation: str) -> bool:
        log = self._logs.get(generation)
        if log is None or log.usage_claimed:
            return False
        log.usage_claimed = True
        return True

    async def expire(self) -> None:
        cutoff = time.monotonic() - self.retention
        for generation, log in list(self._logs.items()):
            if log.done_at is not None and log.done_at < cutoff:
                del self._logs[generation]

    def _log(self, generation: str) -> _Log:
        log = self._logs.get(generation)
        if log is None:
            raise GenerationGone(generation)
        return log
