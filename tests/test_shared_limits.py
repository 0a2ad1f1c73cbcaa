"""Two Sluice processes, one Redis: one limit. And what happens when Redis goes away."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from proxy.keybook import create_key
from proxy.limits import Limits
from proxy.mock import MockHandle
from tests.conftest import SluiceFactory, SluiceProcess, upstream_env
from tests.redis_cluster import RedisCluster
from tests.redis_server import start_redis

pytestmark = pytest.mark.timeout(60)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _pair(
    tmp_path: Path,
    mock: MockHandle,
    sluice_factory: SluiceFactory,
    redis_url: str,
    limits: Limits,
    **env: str,
) -> tuple[SluiceProcess, SluiceProcess, str]:
    keys_file = tmp_path / "keys.toml"
    secret = create_key(keys_file, "shared", limits)
    settings = {
        **upstream_env(mock),
        "SLUICE_KEYS_FILE": str(keys_file),
        "SLUICE_REDIS_URL": redis_url,
        **env,
    }
    return sluice_factory(**settings), sluice_factory(**settings), secret


async def _post(client: httpx.AsyncClient, base: str, secret: str, **headers: str) -> int:
    response = await client.post(
        f"{base}/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {secret}", **headers}
    )
    return response.status_code


async def test_two_instances_enforce_one_requests_per_minute_limit(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    redis = start_redis(tmp_path / "redis")
    try:
        a, b, secret = _pair(tmp_path, mock, sluice_factory, redis.url, Limits(rpm=5))
        async with httpx.AsyncClient(timeout=10) as client:
            statuses = [await _post(client, (a, b)[i % 2].url, secret) for i in range(9)]
        assert statuses.count(200) == 5, statuses
        assert statuses.count(429) == 4
        assert len(mock.state.records) == 5
    finally:
        redis.stop()


async def test_two_instances_share_one_limit_through_a_redis_cluster(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory, redis_cluster: RedisCluster
) -> None:
    redis_cluster.flush()  # other tests' counts for a key of the same name
    a, b, secret = _pair(tmp_path, mock, sluice_factory, redis_cluster.url, Limits(rpm=5, concurrency=3))
    async with httpx.AsyncClient(timeout=10) as client:
        statuses = [await _post(client, (a, b)[i % 2].url, secret) for i in range(9)]
    assert statuses.count(200) == 5, statuses
    assert statuses.count(429) == 4
    assert len(mock.state.records) == 5


async def test_two_instances_share_one_concurrency_limit_and_release_it(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    redis = start_redis(tmp_path / "redis")
    try:
        a, b, secret = _pair(tmp_path, mock, sluice_factory, redis.url, Limits(concurrency=2))
        slow = {"x-mock-headers-delay-ms": "800"}  # each holds its slot for 0.8 s
        async with httpx.AsyncClient(timeout=10) as client:
            held = [asyncio.create_task(_post(client, base.url, secret, **slow)) for base in (a, b)]
            await asyncio.sleep(0.3)  # both slots taken, one on each instance
            assert await _post(client, a.url, secret) == 429
            assert await _post(client, b.url, secret) == 429
            assert await asyncio.gather(*held) == [200, 200]
            # Released at the end of each stream: both instances admit again.
            assert await _post(client, a.url, secret) == 200
            assert await _post(client, b.url, secret) == 200
    finally:
        redis.stop()


@pytest.mark.parametrize(("policy", "expected"), [("open", 200), ("closed", 503)])
async def test_redis_dying_mid_run_follows_the_failure_policy(
    policy: str, expected: int, tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    redis = start_redis(tmp_path / "redis")
    a, _b, secret = _pair(
        tmp_path, mock, sluice_factory, redis.url, Limits(rpm=100), SLUICE_REDIS_FAILURE=policy
    )
    async with httpx.AsyncClient(timeout=10) as client:
        assert await _post(client, a.url, secret) == 200
        assert (await client.get(f"{a.url}/readyz")).json()["checks"]["redis"] == "ok"
        redis.kill()
        response = await client.post(
            f"{a.url}/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {secret}"}
        )
        assert response.status_code == expected
        if policy == "closed":
            assert response.headers["retry-after"] == "1"
            assert "Rate limiting is unavailable" in response.json()["error"]["message"]
        ready = await client.get(f"{a.url}/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"] == "unreachable"
        metrics = (await client.get(f"{a.url}/metrics")).text
        assert f'sluice_limiter_errors_total{{policy="{policy}"}} 1' in metrics
    assert "rate-limit backend unavailable" in a.log()
    assert "failing " + policy in a.log()
