"""Rate limits shared by every worker and instance, through Redis.

Each decision is one Lua script run with EVALSHA, on Redis's own clock
(``TIME`` inside the script), so processes on hosts with skewed clocks still
agree. The arithmetic mirrors :mod:`proxy.limits.memory`, whose
:func:`~proxy.limits.memory.compose_decision` turns the script's numbers into
the :class:`Decision`.

Keys of one client key share a Redis Cluster hash tag (the key name in
braces), so every script touches a single slot::

    {prefix}:{<key>}:rpm    hash  unix second -> requests admitted
    {prefix}:{<key>}:tpm    hash  unix second -> tokens charged
    {prefix}:{<key>}:conc   zset  lease id    -> expiry (ms, Redis clock)

Leases expire because a process can die holding them; while a request is in
flight a background task keeps its lease alive. A lease whose holder is gone
(or whose admit timed out after Redis had already run the script) lapses
within ``lease_ttl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis.asyncio.cluster import RedisCluster

from ..redisconn import ERRORS as _ERRORS
from ..redisconn import connect, ping
from ._lua import ADMIT_LUA, CHARGE_LUA, REFRESH_LUA
from .base import WINDOW_SECONDS, Decision, LimiterUnavailable, Limits
from .memory import compose_decision

logger = logging.getLogger("sluice.limits")

_LOG_EVERY = 10.0  # seconds between two warnings of the same kind


def _limit_arg(limit: int | None) -> str:
    return "" if limit is None else str(limit)


class RedisLimiter:
    """The :class:`~proxy.limits.base.Limiter` shared through one Redis.

    Every Redis call is bounded by ``op_timeout`` (socket timeouts and
    :func:`asyncio.timeout`); a failure in :meth:`admit` raises
    :class:`LimiterUnavailable`, failures in :meth:`release` and
    :meth:`charge_tokens` are logged (at most once per 10 s per kind) and
    counted in :attr:`errors`, never raised. ``window`` exists so tests can
    shorten it; the code path is the same.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "sluice",
        op_timeout: float = 0.5,
        lease_ttl: float = 60.0,
        window: int = WINDOW_SECONDS,
    ) -> None:
        self._prefix = prefix
        self._op_timeout = op_timeout
        self._lease_ttl_ms = int(lease_ttl * 1000)
        self._window = window
        # No client-side retries: a retry with backoff would blow the time
        # budget, and a retried admit could count a request twice. Stale
        # pooled connections are checked (and replaced) by the pool itself.
        self._redis = connect(url, op_timeout=op_timeout)
        # Script objects run EVALSHA and reload on NOSCRIPT (a restarted or
        # flushed Redis).
        self._admit = self._redis.register_script(ADMIT_LUA)
        self._charge = self._redis.register_script(CHARGE_LUA)
        self._refresh = self._redis.register_script(REFRESH_LUA)
        self._held: dict[str, set[str]] = {}  # key -> lease ids this process holds
        self._refresher: asyncio.Task[None] | None = None
        self._last_warning: dict[str, float] = {}
        self._closed = False
        self.errors = 0

    def _key(self, key: str, kind: str) -> str:
        return f"{self._prefix}:{{{key}}}:{kind}"

    async def connect(self) -> None:
        """Fail early (at start-up) if Redis cannot be reached; otherwise optional."""
        if not await self.ping():
            raise LimiterUnavailable("redis is not reachable")

    async def admit(self, key: str, limits: Limits, lease_id: str) -> Decision:
        if not limits.any:
            return Decision(allowed=True)  # nothing to count: no round trip
        keys = [self._key(key, "rpm"), self._key(key, "tpm"), self._key(key, "conc")]
        args: list[str | int] = [
            _limit_arg(limits.rpm),
            _limit_arg(limits.tpm),
            _limit_arg(limits.concurrency),
            lease_id,
            self._lease_ttl_ms,
            self._window,
        ]
        try:
            async with asyncio.timeout(self._op_timeout):
                raw = await self._admit(keys=keys, args=args)
        except _ERRORS as exc:
            self.errors += 1
            raise LimiterUnavailable(f"redis admit failed: {type(exc).__name__}: {exc}") from exc
        allowed, rpm_used, rpm_wait, tpm_used, tpm_wait, held = (int(v) for v in raw)
        if allowed and limits.concurrency is not None:
            self._held.setdefault(key, set()).add(lease_id)
            self._ensure_refresher()
        return compose_decision(
            limits,
            bool(allowed),
            (rpm_used, rpm_wait / 1000) if limits.rpm is not None else None,
            (tpm_used, tpm_wait / 1000) if limits.tpm is not None else None,
            held if limits.concurrency is not None else None,
        )

    async def release(self, key: str, lease_id: str) -> None:
        held = self._held.get(key)
        if held is None or lease_id not in held:
            return  # never taken here (no concurrency limit) or already released
        # Forget it first: even if the ZREM fails, it is no longer refreshed and lapses.
        held.discard(lease_id)
        if not held:
            del self._held[key]
        try:
            async with asyncio.timeout(self._op_timeout):
                await self._redis.zrem(self._key(key, "conc"), lease_id)
        except _ERRORS as exc:
            self._failed("release", exc)

    async def charge_tokens(self, key: str, tokens: int) -> None:
        if tokens <= 0:
            return
        try:
            async with asyncio.timeout(self._op_timeout):
                await self._charge(keys=[self._key(key, "tpm")], args=[tokens, self._window * 2])
        except _ERRORS as exc:
            self._failed("charge", exc)

    async def ping(self) -> bool:
        return await ping(self._redis, self._op_timeout)

    async def close(self) -> None:
        # Leases still held are not released: their requests are being torn
        # down and will release them, or they lapse within lease_ttl.
        self._closed = True
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        await self._redis.aclose()

    def _ensure_refresher(self) -> None:
        if not self._closed and (self._refresher is None or self._refresher.done()):
            self._refresher = asyncio.create_task(self._refresh_forever(), name="sluice-lease-refresher")

    async def _refresh_forever(self) -> None:
        # Three tries per ttl: one slow or failed round does not lose leases.
        interval = self._lease_ttl_ms / 3000
        while True:
            await asyncio.sleep(interval)
            await self.refresh_leases()

    async def refresh_leases(self) -> None:
        """Extend every lease this limiter holds to now + lease_ttl (one pipelined round trip)."""
        if not self._held:
            return
        snapshot = [(key, sorted(leases)) for key, leases in self._held.items()]
        try:
            async with asyncio.timeout(self._op_timeout):
                if isinstance(self._redis, RedisCluster):
                    # A cluster pipeline does not reload a script a node lacks
                    # (NOSCRIPT); one call per key does, each to its own slot.
                    await asyncio.gather(
                        *(
                            self._refresh(keys=[self._key(key, "conc")], args=[self._lease_ttl_ms, *leases])
                            for key, leases in snapshot
                        )
                    )
                    return
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key, leases in snapshot:
                        await self._refresh(
                            keys=[self._key(key, "conc")], args=[self._lease_ttl_ms, *leases], client=pipe
                        )
                    await pipe.execute()
        except _ERRORS as exc:
            self._failed("refresh", exc)

    def _failed(self, kind: str, exc: BaseException) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._last_warning.get(kind, -_LOG_EVERY) >= _LOG_EVERY:
            self._last_warning[kind] = now
            # Exception text from redis-py names host and port, never key secrets.
            name = type(exc).__name__
            logger.warning("rate-limit %s failed (redis): %s: %s [%d errors]", kind, name, exc, self.errors)
