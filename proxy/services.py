"""The shared objects one worker process needs, built from the settings."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from .accesslog import LogWriter
from .config import Settings
from .drain import Drain
from .http import Client, new_client
from .keys import KeyStore
from .limits import Limiter
from .limits.memory import MemoryLimiter
from .metrics import Metrics
from .pool import CredentialPool

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
        return cls(
            settings=settings,
            upstream=new_client(settings.http, settings.connect_timeout),
            metrics=metrics,
            keys=KeyStore(settings.keys_file) if settings.auth_enforced and settings.keys_file else None,
            limiter=limiter,
            access_log=LogWriter(settings.access_log, settings.access_log_flush),
            drain=Drain(settings.drain_timeout),
            pools=pools,
        )

    async def start(self) -> None:
        await self.upstream.open()
        self.drain.install()

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
        self.access_log.close()

    async def ready(self) -> tuple[bool, dict[str, str]]:
        if self.drain.draining:
            # Tell load balancers first: new work should go elsewhere now.
            return False, {"draining": "shutting down"}
        checks = {"upstream_session": "ok" if self.upstream.is_open else "closed"}
        if self.settings.redis_url:
            checks["redis"] = "ok" if await self.limiter.ping() else "unreachable"
        return all(v == "ok" for v in checks.values()), checks
