"""One way to reach Redis, a single server or a Cluster, for every part that shares state.

``SLUICE_REDIS_URL`` names a single server (``redis://``, ``rediss://``,
``unix://``) or a Redis Cluster (``redis+cluster://host:port``, or
``rediss+cluster://`` with TLS): one reachable node is enough, the client
learns the others and follows slot moves and failovers. Everything Sluice
stores under one client key (or one chat generation) carries the same hash
tag, ``{…}``, so each Lua script and each multi-key command touches a single
slot, as a cluster requires.

No client-side retries on either kind: a retried script could count a
request twice, and a retry with backoff would blow the callers' time budgets.
A cluster client still refreshes its view of the slots after a connection
error, so a restarted or failed-over master is found again on a later call.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.cluster
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry as SyncRetry

# A Redis client of either kind: both offer the commands and scripts Sluice uses.
AnyRedis = Redis | RedisCluster
AnySyncRedis = redis.Redis | redis.cluster.RedisCluster


# Everything a broken or slow Redis can raise at us: redis-py's own errors,
# and the builtins for sockets and asyncio.timeout.
ERRORS = (RedisError, ConnectionError, TimeoutError, OSError)


def is_cluster(url: str) -> bool:
    return urlsplit(url).scheme.endswith("+cluster")


def connect(url: str, *, op_timeout: float, socket_timeout: bool = True, **options: Any) -> AnyRedis:
    """A client for ``url``; no I/O until its first command.

    ``socket_timeout=False`` leaves reads unbounded at the socket, for callers
    that block on purpose (XREAD) and bound each call with ``asyncio.timeout``.
    """
    timeouts: dict[str, Any] = {"socket_connect_timeout": op_timeout}
    if socket_timeout:
        timeouts["socket_timeout"] = op_timeout
    if is_cluster(url):
        plain = url.replace("+cluster", "", 1)
        return RedisCluster.from_url(
            plain, retry=Retry(NoBackoff(), 0), cluster_error_retry_attempts=1, **timeouts, **options
        )
    return Redis.from_url(url, retry=Retry(NoBackoff(), 0), **timeouts, **options)


def connect_sync(url: str, *, op_timeout: float = 5.0) -> AnySyncRedis:
    """A blocking client, for the command line (``sluice keys``, ``sluice usage``)."""
    timeouts = {"socket_connect_timeout": op_timeout, "socket_timeout": op_timeout}
    if is_cluster(url):
        return redis.cluster.RedisCluster.from_url(url.replace("+cluster", "", 1), **timeouts)
    return redis.Redis.from_url(url, retry=SyncRetry(NoBackoff(), 0), **timeouts)


async def ping(client: AnyRedis, within: float) -> bool:
    """Whether Redis answers within ``within`` seconds (never raises)."""
    try:
        async with asyncio.timeout(within):
            return bool(await client.ping())
    except ERRORS:
        return False
