"""The event store shared through Redis, so a reconnect resumes on any instance.

Per generation, under one Redis Cluster hash tag::

    sluice:chat:{<id>}:meta      hash    provider, model, key, created, state, cancel
    sluice:chat:{<id>}:events    stream  entry id 0-<seq>, field e = the event
    sluice:chat:{<id>}:watchers  zset    client connection -> lapses at (ms, Redis clock)
    sluice:chat:{<id>}:usage     string  set once by whoever accounts the tokens

Entry ids are ``0-<seq>``, so "events after seq N" is exactly
``XREAD … STREAMS key 0-N``. ``XADD MAXLEN ~`` bounds a stream; a reader whose
next event was trimmed away sees the gap in the ids. While a generation runs
its keys live ``RUNNING_TTL`` seconds and the runner renews them; so a
crashed instance's generations vanish by themselves. A finished one is kept
``retention`` seconds.

Cancels travel on the pub/sub channel ``sluice:chat:cancel`` (the generation
id as the message) to the instance running it, at once; the ``cancel``
field, which the runner also polls, covers a message missed during a
reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from redis.typing import EncodableT, FieldT

from ..redisconn import ERRORS as _ERRORS
from ..redisconn import connect
from .events import ChatEvent
from .store import CancelCallback, EventsExpired, GenerationGone, GenerationMeta, StoreUnavailable

logger = logging.getLogger("sluice.chat")

CHANNEL = "sluice:chat:cancel"
RUNNING_TTL = 60.0  # seconds a running generation's keys outlive the last renewal
_READ_COUNT = 1000
T = TypeVar("T")

# Renew a running generation's keys, drop lapsed watchers, report (watchers, cancel).
_TICK_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
local cancel = redis.call('HGET', KEYS[1], 'cancel')
return {redis.call('ZCARD', KEYS[3]), cancel and 1 or 0}
"""
# Attach (or renew) a watcher, on Redis's clock so instances' clocks need not agree.
_WATCH_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"""
# Flag the cancel only on a generation that exists; 1 if it does.
_CANCEL_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'cancel', '1')
return 1
"""


class RedisStore:
    def __init__(
        self,
        url: str,
        *,
        max_events: int,
        retention: float,
        watcher_ttl: float = 30.0,
        op_timeout: float = 2.0,
        prefix: str = "sluice:chat",
    ) -> None:
        self.max_events = max_events
        self.retention_ms = int(retention * 1000)
        self.watcher_ttl_ms = int(watcher_ttl * 1000)
        self.op_timeout = op_timeout
        self.prefix = prefix
        # No socket timeout: blocking reads wait longer than any op may; every
        # call is bounded by asyncio.timeout instead. No retries: a retried
        # XADD could store an event twice.
        self._redis = connect(url, op_timeout=op_timeout, socket_timeout=False, decode_responses=False)
        self._tick = self._redis.register_script(_TICK_LUA)
        self._watch = self._redis.register_script(_WATCH_LUA)
        self._cancel = self._redis.register_script(_CANCEL_LUA)
        self._listener: asyncio.Task[None] | None = None

    def _keys(self, generation: str) -> tuple[str, str, str, str]:
        base = f"{self.prefix}:{{{generation}}}"
        return f"{base}:meta", f"{base}:events", f"{base}:watchers", f"{base}:usage"

    async def _op(self, call: Awaitable[T], extra: float = 0.0) -> T:
        try:
            async with asyncio.timeout(self.op_timeout + extra):
                return await call
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    # ----------------------------------------------------------- lifecycle
    async def start(self, on_cancel: CancelCallback) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(on_cancel), name="sluice-chat-cancels")

    async def _listen(self, on_cancel: CancelCallback) -> None:
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if message is not None and message.get("type") == "message":
                        on_cancel(bytes(message["data"]).decode("ascii", "replace"))
            except _ERRORS as exc:
                logger.warning("chat cancel listener lost Redis (%s); retrying", type(exc).__name__)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(*_ERRORS):
                    # Typed in newer redis releases (8.2), untyped in older ones pyproject allows.
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        with contextlib.suppress(*_ERRORS):
            await self._redis.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self._op(self._redis.ping()))
        except StoreUnavailable:
            return False

    # ------------------------------------------------------------- writing
    async def create(self, meta: GenerationMeta) -> None:
        key_meta, *_ = self._keys(meta.id)
        fields = {
            "provider": meta.provider,
            "model": meta.model,
            "key": meta.key_name or "",
            "created": repr(meta.created),
            "state": "running",
        }
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(key_meta, mapping=fields)  # type: ignore[arg-type]
        pipe.pexpire(key_meta, int(RUNNING_TTL * 1000))
        await self._op(pipe.execute())

    async def append(self, generation: str, event: ChatEvent) -> None:
        _, key_events, _, _ = self._keys(generation)
        entry: dict[FieldT, EncodableT] = {"e": event.dumps()}
        if event.seq == 1:  # the stream is born: give it the running TTL before anything else
            pipe = self._redis.pipeline(transaction=True)
            pipe.xadd(key_events, entry, id="0-1", maxlen=self.max_events, approximate=True)
            pipe.pexpire(key_events, int(RUNNING_TTL * 1000))
            await self._op(pipe.execute())
            return
        call = self._redis.xadd(
            key_events, entry, id=f"0-{event.seq}", maxlen=self.max_events, approximate=True
        )
        await self._op(call)

    async def finish(self, generation: str) -> None:
        keys = self._keys(generation)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(keys[0], "state", "done")
        for key in keys:
            pipe.pexpire(key, self.retention_ms)
        await self._op(pipe.execute())

    # ------------------------------------------------------------- reading
    async def meta(self, generation: str) -> GenerationMeta | None:
        key_meta, *_ = self._keys(generation)
        raw = await self._op(self._redis.hgetall(key_meta))
        if not raw:
            return None
        text = {_str(k): _str(v) for k, v in raw.items()}
        return GenerationMeta(
            id=generation,
            provider=text.get("provider", ""),
            model=text.get("model", ""),
            key_name=text.get("key") or None,
            created=float(text.get("created") or 0),
            finished=text.get("state") == "done",
        )

    async def read(self, generation: str, after: int, wait: float) -> list[ChatEvent]:
        key_meta, key_events, _, _ = self._keys(generation)
        block = max(1, int(wait * 1000)) if wait > 0 else None  # BLOCK 0 would wait forever
        reply: Any = await self._op(
            self._redis.xread({key_events: f"0-{after}"}, count=_READ_COUNT, block=block), extra=wait
        )
        entries = _entries(reply)
        if not entries:
            if not await self._op(self._redis.exists(key_meta)):
                raise GenerationGone(generation)
            return []
        events = [ChatEvent.loads(seq, fields[b"e"]) for seq, fields in entries]
        if events[0].seq != after + 1:
            raise EventsExpired(generation)  # trimmed by MAXLEN
        return events

    # ------------------------------------------------------ clients, cancel
    async def watch(self, generation: str, watcher: str) -> None:
        _, _, key_watchers, _ = self._keys(generation)
        args: list[str | int] = [watcher, self.watcher_ttl_ms, int(RUNNING_TTL * 1000)]
        await self._op(self._watch(keys=[key_watchers], args=args))

    async def unwatch(self, generation: str, watcher: str) -> None:
        _, _, key_watchers, _ = self._keys(generation)
        await self._op(self._redis.zrem(key_watchers, watcher))

    async def tick(self, generation: str) -> tuple[int, bool]:
        key_meta, key_events, key_watchers, _ = self._keys(generation)
        keys = [key_meta, key_events, key_watchers]
        watchers, cancel = await self._op(self._tick(keys=keys, args=[int(RUNNING_TTL * 1000)]))
        if int(watchers) < 0:
            raise GenerationGone(generation)
        return int(watchers), bool(int(cancel))

    async def request_cancel(self, generation: str) -> None:
        key_meta, *_ = self._keys(generation)
        if await self._op(self._cancel(keys=[key_meta])):
            await self._op(self._redis.publish(CHANNEL, generation))

    async def claim_usage(self, generation: str) -> bool:
        *_, key_usage = self._keys(generation)
        return bool(await self._op(self._redis.set(key_usage, b"1", nx=True, px=self.retention_ms)))

    async def expire(self) -> None:
        return None  # Redis expires the keys itself


def _str(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _entries(reply: Any) -> list[tuple[int, dict[bytes, bytes]]]:
    """``[(seq, fields)]`` from an XREAD reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    # RESP2: [[key, [(id, fields), …]]]; RESP3: {key: [[(id, fields), …]]}.
    if isinstance(reply, dict):
        entries = [entry for stream in reply.values() for entry in stream[0]]
    else:
        entries = [entry for _key, stream in reply for entry in stream]
    return [(int(bytes(entry_id).split(b"-", 1)[1]), fields) for entry_id, fields in entries]
