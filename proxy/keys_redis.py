"""Client keys kept in Redis, so that every host serves the same ones.

With ``SLUICE_REDIS_URL`` set and no ``SLUICE_KEYS_FILE``, the records the
keys file would hold live in one Redis hash instead, each as the JSON of its
file entry (hashes only, never a secret)::

    sluice:{keys}:records   hash    key name -> record
    sluice:{keys}:version   string  bumped by every change
    sluice:{keys}:lock      string  held by one `sluice keys` run at a time

All three share the hash tag ``{keys}``, so a Redis Cluster keeps them in one
slot and the script that writes them runs there. ``sluice keys`` changes them
under the lock (:class:`RedisBook`); each worker polls the version twice a
second and reloads the hash when it moved (:class:`RedisKeyFeed`), so a key
created, rotated or revoked on any host takes effect everywhere within a
second. While Redis is unreachable a worker keeps serving the keys it last
loaded; a key created meanwhile is unknown to it until Redis answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Iterator, Mapping
from typing import Any

from .keys import ClientKey, KeyFileError, KeyStore, parse_entry, to_entry
from .redisconn import ERRORS as _ERRORS
from .redisconn import connect, connect_sync

logger = logging.getLogger("sluice.keys")

RECORDS = "sluice:{keys}:records"
VERSION = "sluice:{keys}:version"
LOCK = "sluice:{keys}:lock"
LOCK_TTL_MS = 10_000
POLL_INTERVAL = 0.5
_LOG_EVERY = 10.0

# Writes the changed records only while the caller still holds the lock, and
# bumps the version in the same step, so a reader never sees a change without it.
_WRITE_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local n = tonumber(ARGV[2])
local i = 3
for _ = 1, n do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HDEL', KEYS[2], ARGV[i])
  i = i + 1
end
redis.call('INCR', KEYS[3])
redis.call('DEL', KEYS[1])
return 1
"""

_UNLOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _parse_all(raw: Mapping[Any, Any]) -> dict[str, ClientKey]:
    """Every readable record; a broken one is skipped with a warning rather than locking all out."""
    keys: dict[str, ClientKey] = {}
    for name_raw, record in raw.items():
        name = name_raw.decode() if isinstance(name_raw, bytes) else str(name_raw)
        try:
            keys[name] = parse_entry(name, json.loads(record))
        except (KeyFileError, ValueError) as exc:
            logger.warning("skipping the key record %r in Redis: %s", name, exc)
    return keys


class RedisBook:
    """The key records in Redis, for ``sluice keys`` (blocking calls)."""

    def __init__(self, url: str) -> None:
        self._redis = connect_sync(url)
        self.where = "Redis (SLUICE_REDIS_URL)"

    @contextlib.contextmanager
    def locked(self) -> Iterator[dict[str, ClientKey]]:
        token = secrets.token_hex(16)
        deadline = time.monotonic() + LOCK_TTL_MS / 1000
        while not self._redis.set(LOCK, token, nx=True, px=LOCK_TTL_MS):
            if time.monotonic() > deadline:
                raise KeyFileError("another `sluice keys` run holds the Redis lock; try again")
            time.sleep(0.05)
        try:
            before = _parse_all(self._redis.hgetall(RECORDS))
            keys = dict(before)
            yield keys
            changed = [(name, key) for name, key in keys.items() if before.get(name) != key]
            gone = [name for name in before if name not in keys]
            args: list[str | int] = [token, len(changed)]
            for name, key in changed:
                args += [name, json.dumps(to_entry(key), separators=(",", ":"))]
            args += gone
            if not self._redis.eval(_WRITE_LUA, 3, LOCK, RECORDS, VERSION, *args):
                raise KeyFileError("the Redis lock expired before the change was written; try again")
        finally:
            self._redis.eval(_UNLOCK_LUA, 1, LOCK, token)

    def read(self) -> dict[str, ClientKey]:
        return _parse_all(self._redis.hgetall(RECORDS))


class RedisKeyFeed:
    """Keeps a worker's :class:`KeyStore` in step with the records in Redis."""

    def __init__(self, url: str, store: KeyStore, *, op_timeout: float = 1.0) -> None:
        self.store = store
        self._redis = connect(url, op_timeout=op_timeout)
        self._op_timeout = op_timeout
        self._version: Any = None  # the version last loaded (bytes from Redis)
        self._task: asyncio.Task[None] | None = None
        self._last_warning = -_LOG_EVERY
        self.errors = 0

    async def start(self) -> None:
        """Load the keys once (a failure is logged: the worker starts with none) and keep polling."""
        await self._poll_once()
        self._task = asyncio.create_task(self._poll_forever())

    async def refresh(self) -> None:
        """Reload the records if their version moved. Raises on Redis errors."""
        async with asyncio.timeout(self._op_timeout):
            version = await self._redis.get(VERSION)
            if version == self._version and self._version is not None:
                return
            raw = await self._redis.hgetall(RECORDS)
        self.store.replace(_parse_all(raw))
        self._version = version if version is not None else b"0"

    async def _poll_once(self) -> None:
        try:
            await self.refresh()
        except _ERRORS as exc:
            self.errors += 1
            now = time.monotonic()
            if now - self._last_warning >= _LOG_EVERY:
                self._last_warning = now
                logger.warning(
                    "cannot read client keys from Redis (%s): serving the %d keys loaded before",
                    type(exc).__name__,
                    self.store.count,
                )

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            await self._poll_once()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._redis.aclose()
