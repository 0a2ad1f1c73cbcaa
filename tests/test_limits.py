"""Rate limits: one behavioural suite over both backends, then what only Redis must do.

The memory backend runs on a fake clock with the real 60 s window; the Redis
backend runs on Redis's real clock with a 2 s window (the same code path, a
shorter constant), so waiting out a window costs at most 2 s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from proxy.limits import Decision, Limiter, LimiterUnavailable, Limits
from proxy.limits.base import WINDOW_SECONDS
from proxy.limits.headers import rate_limit_headers
from proxy.limits.memory import MemoryLimiter
from proxy.limits.redis import RedisLimiter
from tests.redis_server import RedisServer, start_redis

pytestmark = pytest.mark.timeout(15)

ROOT = Path(__file__).resolve().parent.parent
REDIS_WINDOW = 2


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.25  # not on a second boundary, like real time

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    """Makes limiters of one kind and moves their time forward."""

    name: str
    window: int
    make: Callable[..., Limiter]
    clock: FakeClock | None = None
    made: list[Limiter] = field(default_factory=list)

    def limiter(self, **kw: Any) -> Limiter:
        limiter = self.make(**kw)
        self.made.append(limiter)
        return limiter

    async def advance(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock.now += seconds
        else:
            await asyncio.sleep(seconds)


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"  # each test its own keys on the shared server


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        clock = FakeClock()
        b = Backend("memory", WINDOW_SECONDS, lambda **kw: MemoryLimiter(clock=clock), clock)
    else:
        # Only the Redis variant needs (and may skip for lack of) a server.
        server: RedisServer = request.getfixturevalue("redis_server")
        prefix = _prefix()

        def make(**kw: Any) -> Limiter:
            return RedisLimiter(server.url, prefix=prefix, window=REDIS_WINDOW, **kw)

        b = Backend("redis", REDIS_WINDOW, make)
    yield b
    for limiter in b.made:
        await limiter.close()


@pytest.fixture
async def redis_limiters(redis_server: RedisServer) -> AsyncIterator[Callable[..., RedisLimiter]]:
    """RedisLimiters on the shared server, sharing one fresh prefix, each with its own connections."""
    made: list[RedisLimiter] = []
    prefix = _prefix()

    def make(**kw: Any) -> RedisLimiter:
        kw.setdefault("prefix", prefix)
        limiter = RedisLimiter(redis_server.url, **kw)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.close()


# --- the behaviour every backend shares ----------------------------------------------------


async def test_rpm_admits_exactly_n_then_refuses(backend: Backend) -> None:
    lim = backend.limiter()
    limits = Limits(rpm=5)
    for i in range(5):
        d = await lim.admit("k", limits, f"l{i}")
        assert (d.allowed, d.kind, d.limit, d.remaining) == (True, "rpm", 5, 4 - i)
        assert 0 < d.reset <= backend.window
    for i in range(2):
        d = await lim.admit("k", limits, f"x{i}")
        assert (d.allowed, d.kind, d.limit, d.remaining) == (False, "rpm", 5, 0)
        assert 0 < d.retry_after <= backend.window
        assert d.reset == d.retry_after
    # Another key has its own window.
    assert (await lim.admit("other", limits, "o")).allowed


async def test_rpm_admits_again_after_retry_after(backend: Backend) -> None:
    lim = backend.limiter()
    limits = Limits(rpm=2)
    assert (await lim.admit("k", limits, "a")).allowed
    assert (await lim.admit("k", limits, "b")).allowed
    refused = await lim.admit("k", limits, "c")
    assert not refused.allowed
    await backend.advance(refused.retry_after + 0.05)
    assert (await lim.admit("k", limits, "d")).allowed


async def test_refused_request_consumes_nothing(backend: Backend) -> None:
    lim = backend.limiter()
    # Refused by concurrency: its rpm count is not taken.
    both = Limits(rpm=3, concurrency=1)
    assert (await lim.admit("k", both, "a")).remaining == 2
    d = await lim.admit("k", both, "b")
    assert (d.allowed, d.kind) == (False, "concurrency")
    await lim.release("k", "a")
    assert (await lim.admit("k", both, "c")).remaining == 1
    # Refused by rpm: no lease is taken.
    await lim.release("k", "c")
    tight = Limits(rpm=1, concurrency=2)
    assert (await lim.admit("k2", tight, "a")).allowed
    assert (await lim.admit("k2", tight, "b")).kind == "rpm"
    only_conc = Limits(concurrency=2)
    assert (await lim.admit("k2", only_conc, "c")).allowed  # b did not take a slot
    assert not (await lim.admit("k2", only_conc, "d")).allowed
    # Refused by tpm: neither rpm nor a slot.
    await lim.charge_tokens("k3", 10)
    all3 = Limits(rpm=2, tpm=10, concurrency=1)
    assert (await lim.admit("k3", all3, "a")).kind == "tpm"
    assert (await lim.admit("k3", Limits(rpm=2, concurrency=1), "b")).remaining == 1


async def test_concurrency_slots_and_release(backend: Backend) -> None:
    lim = backend.limiter()
    limits = Limits(concurrency=2)
    a, b = await lim.admit("k", limits, "a"), await lim.admit("k", limits, "b")
    assert (a.allowed, a.kind, a.limit, a.remaining) == (True, "concurrency", 2, 1)
    assert (b.allowed, b.remaining) == (True, 0)
    c = await lim.admit("k", limits, "c")
    assert (c.allowed, c.kind, c.remaining, c.retry_after) == (False, "concurrency", 0, 1.0)
    await lim.release("k", "a")
    assert (await lim.admit("k", limits, "c")).allowed
    # Releasing twice, or a lease never granted, frees nothing else.
    await lim.release("k", "a")
    await lim.release("k", "never")
    await lim.release("nokey", "a")
    assert not (await lim.admit("k", limits, "d")).allowed


async def test_tpm_refuses_at_limit_and_recovers_after_window(backend: Backend) -> None:
    lim = backend.limiter()
    limits = Limits(tpm=100)
    first = await lim.admit("k", limits, "a")
    assert (first.allowed, first.kind, first.remaining, first.reset) == (True, "tpm", 100, 0.0)
    await lim.charge_tokens("k", 60)
    d = await lim.admit("k", limits, "b")
    assert (d.allowed, d.remaining) == (True, 40)
    assert 0 < d.reset <= backend.window
    await lim.charge_tokens("k", 40)  # exactly the limit: the next one waits
    d = await lim.admit("k", limits, "c")
    assert (d.allowed, d.kind, d.limit, d.remaining) == (False, "tpm", 100, 0)
    assert 0 < d.retry_after <= backend.window
    await lim.charge_tokens("k", 0)  # a no-op, not an error
    await backend.advance(d.retry_after + 0.05)
    assert (await lim.admit("k", limits, "d")).allowed


async def test_unlimited_fields(backend: Backend) -> None:
    lim = backend.limiter()
    await lim.charge_tokens("k", 10**9)
    for i in range(100):
        d = await lim.admit("k", Limits(), f"l{i}")
        assert d == Decision(allowed=True)
        assert rate_limit_headers(d) == []
    # Only concurrency is limited: rpm and tpm never refuse.
    for i in range(50):
        d = await lim.admit("k", Limits(concurrency=1), f"c{i}")
        assert d.allowed and d.kind == "concurrency"
        await lim.release("k", f"c{i}")


async def test_allowed_decision_describes_rpm_when_present(backend: Backend) -> None:
    lim = backend.limiter()
    d = await lim.admit("k", Limits(rpm=10, tpm=5, concurrency=1), "a")
    assert (d.kind, d.limit, d.remaining) == ("rpm", 10, 9)
    d = await lim.admit("k2", Limits(tpm=1000, concurrency=2), "a")
    assert (d.kind, d.remaining) == ("concurrency", 1)  # the one with least room left


async def test_memory_retry_after_is_exact_for_a_sliding_window() -> None:
    clock = FakeClock()
    lim = MemoryLimiter(clock=clock)
    limits = Limits(rpm=2)
    assert (await lim.admit("k", limits, "a")).allowed  # bucket 1000, counts until 1060
    clock.now += 30
    assert (await lim.admit("k", limits, "b")).allowed
    clock.now += 1
    d = await lim.admit("k", limits, "c")
    assert d.retry_after == pytest.approx(1060 - clock.now)  # ~29 s, not a whole window
    clock.now += d.retry_after - 0.01
    assert not (await lim.admit("k", limits, "c")).allowed
    clock.now += 0.02
    assert (await lim.admit("k", limits, "c")).allowed


# --- Redis: shared by processes, robust to their deaths and to its own -----------------------


async def test_two_instances_enforce_one_limit(redis_limiters: Callable[..., RedisLimiter]) -> None:
    a, b = redis_limiters(), redis_limiters()
    results = await asyncio.gather(*((a, b)[i % 2].admit("k", Limits(rpm=7), f"r{i}") for i in range(20)))
    assert sum(d.allowed for d in results) == 7
    conc = Limits(concurrency=3)
    granted = [await lim.admit("c", conc, f"{n}{i}") for i, (lim, n) in enumerate([(a, "a"), (b, "b")] * 2)]
    assert [d.allowed for d in granted] == [True, True, True, False]
    await a.release("c", "a0")
    assert (await b.admit("c", conc, "b9")).allowed


_WORKER = """
import asyncio, json, os, sys
from proxy.limits import Limits
from proxy.limits.redis import RedisLimiter

async def main(url, prefix, k, lease_ttl):
    lim = RedisLimiter(url, prefix=prefix, lease_ttl=lease_ttl)
    assert await lim.ping()
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    rpm = [(await lim.admit("rpm", Limits(rpm=k), f"{os.getpid()}r{i}")).allowed for i in range(k)]
    conc = [(await lim.admit("conc", Limits(concurrency=k), f"{os.getpid()}c{i}")).allowed for i in range(k)]
    print(json.dumps({"rpm": sum(rpm), "conc": sum(conc)}), flush=True)
    sys.stdin.readline()  # hold the leases until told (or killed)
    await lim.close()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
"""


def _workers(url: str, prefix: str, n: int, k: int, lease_ttl: float = 60.0) -> list[subprocess.Popen[str]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, url, prefix, str(k), str(lease_ttl)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for _ in range(n)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return procs


def _tell(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()


def test_two_os_processes_share_rpm_and_concurrency(redis_server: RedisServer) -> None:
    # Each process asks K times for a limit of K: together they get exactly K, not 2K.
    k = 15
    procs = _workers(redis_server.url, _prefix(), 2, k)
    try:
        for proc in procs:
            _tell(proc)
        results = [json.loads(proc.stdout.readline()) for proc in procs if proc.stdout]
        assert sum(r["rpm"] for r in results) == k
        assert sum(r["conc"] for r in results) == k
        for proc in procs:
            _tell(proc)
            assert proc.wait(10) == 0
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


async def test_lease_of_a_dead_process_is_reclaimed(
    redis_server: RedisServer, redis_limiters: Callable[..., RedisLimiter]
) -> None:
    prefix = _prefix()
    [proc] = _workers(redis_server.url, prefix, 1, 1, lease_ttl=1.0)
    _tell(proc)
    assert proc.stdout is not None and json.loads(proc.stdout.readline())["conc"] == 1
    proc.kill()  # dies holding its lease: no release, no refresh
    proc.wait()
    killed = time.monotonic()
    live = redis_limiters(prefix=prefix)
    assert not (await live.admit("conc", Limits(concurrency=1), "mine")).allowed
    while not (await live.admit("conc", Limits(concurrency=1), "mine")).allowed:
        assert time.monotonic() - killed < 2.0, "the dead lease was never reclaimed"
        await asyncio.sleep(0.05)


async def test_refresher_keeps_a_held_lease_past_its_ttl(redis_limiters: Callable[..., RedisLimiter]) -> None:
    holder, other = redis_limiters(lease_ttl=1.5), redis_limiters()
    limits = Limits(concurrency=1)
    assert (await holder.admit("k", limits, "held")).allowed
    await asyncio.sleep(2.5)  # well past the 1.5 s ttl
    assert not (await other.admit("k", limits, "x")).allowed
    await holder.release("k", "held")
    assert (await other.admit("k", limits, "x")).allowed
    assert holder.errors == 0


@pytest.mark.timeout(20)
async def test_redis_down_then_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = start_redis(tmp_path)
    lim = RedisLimiter(server.url, op_timeout=0.3)
    limits = Limits(rpm=100, concurrency=5)
    try:
        assert (await lim.admit("k", limits, "a")).allowed
        # Killed: connections refused.
        server.kill()
        await _assert_unavailable(lim, limits, budget=0.3 + 0.5)
        caplog.set_level(logging.WARNING, logger="sluice.limits")
        await lim.release("k", "a")
        await lim.charge_tokens("k", 5)
        await lim.charge_tokens("k", 5)
        assert lim.errors >= 4  # admit, release and two charges
        # Rate-limited log: one line per kind, however many failures.
        lines = [r.getMessage() for r in caplog.records if r.name == "sluice.limits"]
        assert len(lines) == 2 and "release" in lines[0] and "charge" in lines[1]
        # Back, empty (scripts gone: EVALSHA meets NOSCRIPT), on the same port.
        server = start_redis(tmp_path, port=server.port)
        assert await lim.ping()
        assert (await lim.admit("k", limits, "b")).remaining == 99
        # Hung (SIGSTOP): the port accepts, nothing answers; op_timeout bounds us.
        server.freeze()
        await _assert_unavailable(lim, limits, budget=0.3 + 0.5)
        server.thaw()
        assert (await lim.admit("k", limits, "c")).allowed
    finally:
        await lim.close()
        server.stop()


async def _assert_unavailable(lim: RedisLimiter, limits: Limits, budget: float) -> None:
    started = time.monotonic()
    with pytest.raises(LimiterUnavailable):
        await lim.admit("k", limits, "z")
    assert time.monotonic() - started < budget
    started = time.monotonic()
    assert await lim.ping() is False
    assert time.monotonic() - started < budget


async def test_script_flush_is_survived(
    redis_server: RedisServer, redis_limiters: Callable[..., RedisLimiter]
) -> None:
    lim = redis_limiters(lease_ttl=30.0)
    assert (await lim.admit("k", Limits(rpm=5, concurrency=2), "a")).allowed
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        await raw.script_flush()
        assert (await lim.admit("k", Limits(rpm=5, concurrency=2), "b")).remaining == 3
        await raw.script_flush()
        conc_key = f"{lim._prefix}:{{k}}:conc"
        before = await raw.zscore(conc_key, "a")
        await asyncio.sleep(0.01)
        await lim.refresh_leases()  # the pipelined refresh reloads its script too
        assert lim.errors == 0
        after = await raw.zscore(conc_key, "a")
        assert before is not None and after is not None and after > before
        assert await raw.ttl(f"{lim._prefix}:{{k}}:rpm") > 0  # idle keys vanish
    finally:
        await raw.aclose()


# --- headers --------------------------------------------------------------------------------


def test_headers_for_allowed_and_refused() -> None:
    ok = Decision(True, "rpm", 60, 59, reset=12.2)
    assert rate_limit_headers(ok) == [
        (b"ratelimit-limit", b"60"),
        (b"ratelimit-remaining", b"59"),
        (b"ratelimit-reset", b"13"),
    ]
    refused = Decision(False, "tpm", 1000, 0, reset=0.2, retry_after=0.2)
    assert dict(rate_limit_headers(refused))[b"retry-after"] == b"1"
    assert dict(rate_limit_headers(refused))[b"ratelimit-reset"] == b"1"
    assert dict(rate_limit_headers(Decision(False, "rpm", 5, 0, 30.01, 30.01)))[b"retry-after"] == b"31"
    assert rate_limit_headers(Decision(True)) == []
