"""The ledger in Redis, shared by every host with ``SLUICE_REDIS_URL``.

Keys of one client key share its hash tag, as the limiters' do, so each
write is one Lua script on one slot (Redis Cluster included)::

    {prefix}:{<key>}:spend    hash  UTC day -> nanodollars, "total" -> nanodollars
    {prefix}:{<key>}:ledger   hash  "day|provider|model|field" -> sum
    {prefix}:spend:keys       set   key names with spend (to list them)

A write that fails is raised as :class:`StoreUnavailable` and retried with
the next batch. A write that times out after Redis ran it is counted again
by that retry: spend may be over-counted by one batch, never lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from ..redisconn import ERRORS as _ERRORS
from ..redisconn import connect, ping
from .ledger import TALLY_FIELDS, KeySpend, Row, Tally, by_key_spend
from .store import StoreUnavailable

# KEYS: spend hash, ledger hash. ARGV: the number of (day, nanos) pairs, the
# pairs, then (ledger field, amount) pairs. Atomic: all of a key's batch or none.
_WRITE_LUA = """
local n = tonumber(ARGV[1])
local total = 0
for i = 2, 2 * n, 2 do
  local nanos = tonumber(ARGV[i + 1])
  redis.call('HINCRBY', KEYS[1], ARGV[i], nanos)
  total = total + nanos
end
redis.call('HINCRBY', KEYS[1], 'total', total)
for i = 2 * n + 2, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
end
return 1
"""


class RedisStore:
    def __init__(self, url: str, *, prefix: str = "sluice", op_timeout: float = 2.0) -> None:
        self._prefix = prefix
        self._op_timeout = op_timeout
        self._redis = connect(url, op_timeout=op_timeout)
        self._write = self._redis.register_script(_WRITE_LUA)
        self._index = f"{prefix}:spend:keys"

    def _key(self, key: str, kind: str) -> str:
        return f"{self._prefix}:{{{key}}}:{kind}"

    async def write(self, batch: Mapping[Row, Tally]) -> None:
        per_key: dict[str, tuple[dict[str, int], list[str | int]]] = {}
        for (key, provider, model, day), tally in batch.items():
            days, fields = per_key.setdefault(key, ({}, []))
            days[day] = days.get(day, 0) + tally.cost_nanos
            for name, value in zip(TALLY_FIELDS, tally.values(), strict=True):
                if value:
                    fields += (f"{day}|{provider}|{model}|{name}", value)
        if not per_key:
            return
        # The index first (idempotent), then one script per key (one slot
        # each), all at once: a key whose script failed is written again later.
        try:
            async with asyncio.timeout(self._op_timeout):
                await self._redis.sadd(self._index, *per_key)
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis write failed: {type(exc).__name__}: {exc}") from exc
        names = list(per_key)
        results = await asyncio.gather(*(self._write_key(name, *per_key[name]) for name in names))
        failed = {name for name, error in zip(names, results, strict=True) if error is not None}
        if failed:
            error = next(e for e in results if e is not None)
            unwritten = {row: tally for row, tally in batch.items() if row[0] in failed}
            raise StoreUnavailable(f"redis write failed: {error}", unwritten)

    async def _write_key(self, key: str, days: dict[str, int], fields: list[str | int]) -> str | None:
        pairs = [item for day_nanos in days.items() for item in day_nanos]
        try:
            async with asyncio.timeout(self._op_timeout):
                keys = [self._key(key, "spend"), self._key(key, "ledger")]
                await self._write(keys=keys, args=[len(days), *pairs, *fields])
        except _ERRORS as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    async def _keys(self) -> list[str]:
        members = await self._redis.smembers(self._index)
        return [k.decode() if isinstance(k, bytes) else str(k) for k in members]

    async def read_spend(self, first_day: str) -> dict[str, KeySpend]:
        try:
            async with asyncio.timeout(self._op_timeout):
                names = await self._keys()
                hashes = await asyncio.gather(*(self._redis.hgetall(self._key(n, "spend")) for n in names))
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis read failed: {type(exc).__name__}: {exc}") from exc
        days: list[tuple[str, str, int]] = []
        totals: list[tuple[str, int]] = []
        for name, fields in zip(names, hashes, strict=True):
            for raw_field, raw_value in fields.items():
                field = raw_field.decode() if isinstance(raw_field, bytes) else raw_field
                if field == "total":
                    totals.append((name, int(raw_value)))
                elif field >= first_day:
                    days.append((name, field, int(raw_value)))
        return by_key_spend(days, totals)

    async def rows(self, first_day: str) -> list[tuple[Row, Tally]]:
        try:
            async with asyncio.timeout(self._op_timeout * 10):
                names = await self._keys()
                hashes = await asyncio.gather(*(self._redis.hgetall(self._key(n, "ledger")) for n in names))
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis read failed: {type(exc).__name__}: {exc}") from exc
        rows: dict[Row, Tally] = {}
        for name, fields in zip(names, hashes, strict=True):
            for raw_field, raw_value in fields.items():
                field = raw_field.decode() if isinstance(raw_field, bytes) else raw_field
                day, _, rest = field.partition("|")
                provider, _, rest = rest.partition("|")
                model, _, tally_field = rest.rpartition("|")
                if day < first_day or tally_field not in TALLY_FIELDS:
                    continue
                tally = rows.setdefault((name, provider, model, day), Tally())
                setattr(tally, tally_field, getattr(tally, tally_field) + int(raw_value))
        return list(rows.items())

    async def ping(self) -> bool:
        return await ping(self._redis, self._op_timeout)

    async def close(self) -> None:
        await self._redis.aclose()
