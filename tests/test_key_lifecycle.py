"""A client key's life: expiry, rotation with a grace period, and keys shared across hosts through Redis.

The refusals are checked with the official SDK, whose error must say why
(expired, rotated) rather than only "invalid". The Redis tests run against
one server and against a real three-master Redis Cluster.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from proxy.mock import MockHandle
from tests.conftest import SluiceFactory, clean_env, upstream_env
from tests.helpers import GUARD
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(120)

MESSAGES: list[dict[str, str]] = [{"role": "user", "content": "hi"}]


def _chat(base_url: str, secret: str) -> str:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=secret, max_retries=0, timeout=GUARD)
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    return answer.choices[0].message.content or ""


def _refusal(base_url: str, secret: str) -> str:
    with pytest.raises(openai.AuthenticationError) as refused:
        _chat(base_url, secret)
    return str(refused.value.message)


def _wait_for(check: Callable[[], bool], timeout: float = 10.0) -> float:
    """Seconds until ``check()`` held (polled every 50 ms); fails after ``timeout``."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "condition not met in time"
        time.sleep(0.05)
    return time.monotonic() - start


def _works(base_url: str, secret: str) -> bool:
    try:
        return bool(_chat(base_url, secret))
    except openai.AuthenticationError:
        return False


# --- through a running Sluice, with the SDK ---------------------------------------


def _sluice_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "keys", *args],
        capture_output=True,
        text=True,
        env=clean_env(**env),
        timeout=30,
    )


def test_rotation_and_expiry_through_sluice(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    path = tmp_path / "keys.toml"
    created = _sluice_cli("--file", str(path), "create", "--name", "app", "--expires", "6s")
    assert created.returncode == 0, created.stderr
    old = created.stdout.strip()
    log = tmp_path / "access.log"
    sluice = sluice_factory(**upstream_env(mock), SLUICE_KEYS_FILE=str(path), SLUICE_ACCESS_LOG=str(log))
    assert _chat(sluice.url, old)

    rotated = _sluice_cli("--file", str(path), "rotate", "app", "--grace", "2s")
    assert rotated.returncode == 0, rotated.stderr
    new = rotated.stdout.strip()
    assert new.startswith("sk-sluice-") and new != old
    listed = _sluice_cli("--file", str(path), "list").stdout
    assert "expires" in listed and "old secret until" in listed and new not in listed
    _wait_for(lambda: _works(sluice.url, new))  # the file is re-read within a second
    assert _chat(sluice.url, old), "the old secret works during its grace"
    _wait_for(lambda: not _works(sluice.url, old))
    assert "rotated" in _refusal(sluice.url, old)
    assert _chat(sluice.url, new)

    _wait_for(lambda: not _works(sluice.url, new))  # 6 s after creation
    assert "expired at" in _refusal(sluice.url, new)
    _wait_for(lambda: '"detail":"expired"' in log.read_text() and '"detail":"rotated"' in log.read_text())
    assert old not in sluice.log() + log.read_text() and new not in sluice.log() + log.read_text()


# --- keys in Redis, shared by every instance ----------------------------------------


@pytest.fixture(params=["server", "cluster"])
def shared_redis(request: pytest.FixtureRequest) -> RedisServer | RedisCluster:
    name = "redis_server" if request.param == "server" else "redis_cluster"
    shared: RedisServer | RedisCluster = request.getfixturevalue(name)
    _flush(shared)
    return shared


def _flush(shared: RedisServer | RedisCluster) -> None:
    if isinstance(shared, RedisCluster):
        shared.flush()
        return
    subprocess.run(
        ["redis-cli", "-p", str(shared.port), "flushall"], check=True, capture_output=True, timeout=10
    )


def test_keys_in_redis_reach_every_instance_within_a_second(
    shared_redis: RedisServer | RedisCluster, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    url = shared_redis.url
    a, b = (sluice_factory(**upstream_env(mock), SLUICE_REDIS_URL=url) for _ in range(2))
    assert "holds no active key" in a.log()

    created = _sluice_cli("create", "--name", "shared", "--rpm", "100", SLUICE_REDIS_URL=url)
    assert created.returncode == 0, created.stderr
    assert "Redis" in created.stderr
    secret = created.stdout.strip()
    for sluice in (a, b):
        assert _wait_for(lambda s=sluice: _works(s.url, secret)) < 1.5

    rotated = _sluice_cli("rotate", "shared", "--grace", "0s", SLUICE_REDIS_URL=url)
    assert rotated.returncode == 0, rotated.stderr
    new = rotated.stdout.strip()
    for sluice in (a, b):
        assert _wait_for(lambda s=sluice: _works(s.url, new) and not _works(s.url, secret)) < 1.5

    assert _sluice_cli("revoke", "shared", SLUICE_REDIS_URL=url).returncode == 0
    for sluice in (a, b):
        assert _wait_for(lambda s=sluice: not _works(s.url, new)) < 1.5
        assert "revoked at" in _refusal(sluice.url, new)
    listed = _sluice_cli("list", SLUICE_REDIS_URL=url)
    assert "shared" in listed.stdout and "revoked" in listed.stdout and new not in listed.stdout


def test_a_redis_outage_keeps_known_keys_serving(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    from tests.redis_server import start_redis

    redis = start_redis(tmp_path / "redis")
    try:
        sluice = sluice_factory(**upstream_env(mock), SLUICE_REDIS_URL=redis.url)
        created = _sluice_cli("create", "--name", "known", SLUICE_REDIS_URL=redis.url)
        secret = created.stdout.strip()
        _wait_for(lambda: _works(sluice.url, secret))
        redis.kill()
        time.sleep(1.0)  # a few failed polls
        assert _chat(sluice.url, secret), "a known key keeps working while Redis is down"
        assert "cannot read client keys from Redis" in sluice.log()
    finally:
        redis.stop()


def test_a_cluster_master_restarted_mid_run(
    redis_cluster: RedisCluster, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    """Keys and limits keep working while one of three masters restarts (empty: no persistence)."""
    _flush(redis_cluster)
    url = redis_cluster.url
    sluice = sluice_factory(**upstream_env(mock), SLUICE_REDIS_URL=url)
    secret = _sluice_cli("create", "--name", "steady", "--rpm", "1000", SLUICE_REDIS_URL=url).stdout.strip()
    _wait_for(lambda: _works(sluice.url, secret))
    # Each master in turn, the one holding {keys} among them: known keys keep
    # serving while it is down (and the limits fail open, the default policy).
    for index in range(3):
        redis_cluster.restart(index, down_for=0.5)
        assert _chat(sluice.url, secret)
    # Once the cluster is whole again, changes reach the instance as before.
    again = _sluice_cli("create", "--name", "after", SLUICE_REDIS_URL=url)
    assert again.returncode == 0, again.stderr
    assert _wait_for(lambda: _works(sluice.url, again.stdout.strip())) < 3
    assert _chat(sluice.url, secret)
