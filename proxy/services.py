"""The shared objects one worker process needs, built from the settings."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .accesslog import LogWriter
from .config import ConfigError, Settings
from .drain import Drain
from .http import Client, new_client
from .keys import KeyStore
from .limits import Limiter
from .limits.memory import MemoryLimiter
from .metrics import Metrics
from .pool import CredentialPool
from .spend.tracker import SpendTracker

if TYPE_CHECKING:
    from .keys_redis import RedisKeyFeed
    from .tracing.worker import Tracing  # imported only when tracing is on: it brings in OpenTelemetry

logger = logging.getLogger("sluice")


def _key_store(settings: Settings) -> KeyStore | None:
    if not settings.auth_enforced:
        return None
    if settings.keys_file is not None:
        return KeyStore(settings.keys_file)
    return KeyStore(None, where="Redis (SLUICE_REDIS_URL)")


@dataclass
class Services:
    settings: Settings
    upstream: Client  # the transport's (SLUICE_HTTP): every upstream call goes through it
    metrics: Metrics
    keys: KeyStore | None
    limiter: Limiter
    access_log: LogWriter
    drain: Drain
    pools: Mapping[str, CredentialPool]
    spend: SpendTracker
    key_feed: RedisKeyFeed | None = None  # keeps `keys` in step with Redis, when keys live there
    tracing: Tracing | None = None  # OTEL_*: its layer goes in the chain, its wrapper around `upstream`

    @classmethod
    def build(cls, settings: Settings) -> Services:
        limiter: Limiter
        if settings.redis_url:
            from .limits.redis import RedisLimiter

            limiter = RedisLimiter(settings.redis_url)
        else:
            limiter = MemoryLimiter()
        metrics = Metrics(settings.metrics_dir)
        pools: dict[str, CredentialPool] = {
            name: CredentialPool(upstream, settings.failover_cooldown, metrics)
            for name, upstream in settings.upstreams.items()
        }
        upstream = new_client(settings.http, settings.connect_timeout)
        tracing = None
        if settings.tracing is not None:
            from .tracing.worker import Tracing

            tracing = Tracing(settings)
            upstream = tracing.client(upstream)
        return cls(
            settings=settings,
            upstream=upstream,
            metrics=metrics,
            keys=_key_store(settings),
            limiter=limiter,
            access_log=LogWriter(settings.access_log, settings.access_log_flush),
            drain=Drain(settings.drain_timeout),
            pools=pools,
            tracing=tracing,
            spend=_spend_tracker(settings, metrics),
        )

    async def start(self) -> None:
        await self.upstream.open()
        self.drain.install()
        if self.settings.keys_in_redis and self.keys is not None:
            from .keys_redis import RedisKeyFeed

            assert self.settings.redis_url is not None
            self.key_feed = RedisKeyFeed(self.settings.redis_url, self.keys)
            await self.key_feed.start()
        if self.tracing is not None:
            self.tracing.started()
        await self.spend.start()

        if self.keys is None:
            if self.settings.auth == "off":
                logger.warning(
                    "client authentication is OFF (SLUICE_AUTH=off): "
                    "anyone who can connect spends the provider keys"
                )
            else:
                logger.info("no SLUICE_KEYS_FILE: client authentication is off, serving loopback only")
        elif self.keys.count == 0:
            logger.warning("%s holds no active key: every request will get 401", self.keys.where)

    async def stop(self) -> None:
        if self.key_feed is not None:
            await self.key_feed.close()
        await self.upstream.close()
        await self.limiter.close()
        await self.spend.stop()  # after the requests: their spend is written
        self.access_log.close()
        if self.tracing is not None:
            await self.tracing.shutdown()  # after the upstream: its last client spans have ended

    async def ready(self) -> tuple[bool, dict[str, str]]:
        if self.drain.draining:
            # Tell load balancers first: new work should go elsewhere now.
            return False, {"draining": "shutting down"}
        checks = {"upstream_session": "ok" if self.upstream.is_open else "closed"}
        if self.settings.redis_url:
            checks["redis"] = "ok" if await self.limiter.ping() else "unreachable"
        return all(v == "ok" for v in checks.values()), checks


def _spend_tracker(settings: Settings, metrics: Metrics) -> SpendTracker:
    from .spend.prices import Pricer
    from .spend.store import MemoryStore, SpendStore, SqliteStore, StoreUnavailable

    store: SpendStore
    if settings.redis_url:
        from .spend.redis_store import RedisStore

        store = RedisStore(settings.redis_url)
    elif (path := spend_db_path(settings)) is not None:
        sqlite = SqliteStore(path)
        try:
            sqlite.open_sync()
        except StoreUnavailable as exc:
            raise ConfigError("SLUICE_SPEND_DB", str(exc)) from None
        store = sqlite
    else:
        store = MemoryStore()
    return SpendTracker(Pricer(settings.prices), store, metrics, warn_at=settings.budget_warn_at)


def spend_db_path(settings: Settings) -> Path | None:
    """SLUICE_SPEND_DB, else ``spend.db`` beside the keys file, else None (spend kept in memory)."""
    if settings.spend_db is not None:
        return settings.spend_db
    return settings.keys_file.with_name("spend.db") if settings.keys_file is not None else None
