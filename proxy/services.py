"""The shared objects one worker process needs, built from the settings."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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

logger = logging.getLogger("sluice")


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

    @classmethod
    def build(cls, settings: Settings) -> Services:
        limiter: Limiter
        if settings.redis_url:
            from .limits.redis import RedisLimiter

            limiter = RedisLimiter(settings.redis_url)
        else:
            limiter = MemoryLimiter()
        metrics = Metrics()
        pools: dict[str, CredentialPool] = {
            name: CredentialPool(upstream, settings.failover_cooldown, metrics)
            for name, upstream in settings.upstreams.items()
        }
        return cls(
            settings=settings,
            upstream=new_client(settings.http, settings.connect_timeout),
            metrics=metrics,
            keys=KeyStore(settings.keys_file) if settings.auth_enforced and settings.keys_file else None,
            limiter=limiter,
            access_log=LogWriter(settings.access_log, settings.access_log_flush),
            drain=Drain(settings.drain_timeout),
            pools=pools,
            spend=_spend_tracker(settings, metrics),
        )

    async def start(self) -> None:
        await self.upstream.open()
        self.drain.install()
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
            logger.warning("the keys file %s holds no active key: every request will get 401", self.keys.path)

    async def stop(self) -> None:
        await self.upstream.close()
        await self.limiter.close()
        await self.spend.stop()  # after the requests: their spend is written
        self.access_log.close()

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
