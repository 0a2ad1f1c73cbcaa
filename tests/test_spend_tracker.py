"""The spend tracker: batching off the request path, never losing spend, shared stores.

In-process, against the real stores: a SQLite file two trackers share (two
workers of a host) and a real redis-server (two hosts).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest

from proxy.context import RequestContext, Usage
from proxy.keys import ClientKey
from proxy.metrics import Metrics
from proxy.spend.ledger import NANOS_PER_USD, KeySpend, Row, Tally
from proxy.spend.periods import day_of
from proxy.spend.prices import Pricer
from proxy.spend.rates import parse_price_overrides
from proxy.spend.redis_store import RedisStore
from proxy.spend.store import MemoryStore, SpendStore, SqliteStore, StoreUnavailable
from proxy.spend.tracker import SpendTracker
from tests.redis_server import RedisServer, start_redis

# $1 per million input and output tokens: 1,000 tokens cost $0.001.
PRICES = parse_price_overrides({"openai/m1": {"input_per_mtok": 1, "output_per_mtok": 1}})
KEY = ClientKey(
    "alice", "aliceid00000", "sha256:0", "2026-01-01T00:00:00Z", budget_usd=0.01, budget_period="day"
)


def request(key: str = "alice", model: str = "m1", tokens: int = 1000) -> RequestContext:
    ctx = RequestContext("r1", "POST", "/v1/chat/completions")
    ctx.key_name, ctx.provider, ctx.model = key, "openai", model
    ctx.usage = Usage(tokens // 2, tokens - tokens // 2)
    return ctx


def tracker(store: SpendStore, metrics: Metrics | None = None) -> SpendTracker:
    return SpendTracker(Pricer(PRICES), store, metrics or Metrics())


def spent(t: SpendTracker) -> float:
    return t.state(KEY, 0.01, "day").spent_usd


class FlakyStore(MemoryStore):
    """A real MemoryStore that fails while ``down`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.writes = 0

    async def write(self, batch: Mapping[Row, Tally]) -> None:
        if self.down:
            raise StoreUnavailable("down")
        self.writes += 1
        await super().write(batch)

    async def read_spend(self, first_day: str) -> dict[str, KeySpend]:
        if self.down:
            raise StoreUnavailable("down")
        return await super().read_spend(first_day)


async def test_record_prices_and_batches_without_touching_the_store() -> None:
    store = FlakyStore()
    t = tracker(store)
    ctx = request()
    t.record(ctx)
    t.record(request())
    assert ctx.cost_usd == pytest.approx(0.001)
    assert store.writes == 0  # the request path only adds to the batch
    assert spent(t) == pytest.approx(0.002)  # this worker's own spend counts at once
    await t.tick()
    assert store.writes == 1
    rows = await store.rows("0")
    assert [(row, tally.requests, tally.cost_nanos) for row, tally in rows] == [
        (("alice", "openai", "m1", day_of(time.time())), 2, 2_000_000)
    ]
    assert spent(t) == pytest.approx(0.002)  # now from the store, not twice


async def test_a_failing_store_loses_nothing() -> None:
    store = FlakyStore()
    metrics = Metrics()
    t = tracker(store, metrics)
    t.record(request())
    store.down = True
    await t.tick()
    t.record(request())
    await t.tick()
    assert await store.rows("0") == []
    assert spent(t) == pytest.approx(0.002)  # still counted against the budget
    assert metrics.spend_store_errors.cells[("write",)].value == 2
    assert t.state(KEY, 0.01, "day").stale is False  # not yet: stale after a few seconds
    store.down = False
    await t.tick()
    ((_row, tally),) = await store.rows("0")
    assert (tally.requests, tally.cost_nanos) == (2, 2_000_000)
    assert spent(t) == pytest.approx(0.002)


async def test_the_batch_is_bounded_by_rows_not_requests() -> None:
    store = MemoryStore()
    t = SpendTracker(Pricer(PRICES), store, Metrics(), max_rows=2)
    for model in ("m1", "a", "b", "c"):
        t.record(request(model=model))
    await t.tick()
    rows = {row[2]: tally for row, tally in await store.rows("0")}
    assert set(rows) == {"m1", "a", ""}  # past two rows, folded per key and day
    assert sum(t.requests for t in rows.values()) == 4


async def test_unpriced_models_are_null_and_counted() -> None:
    metrics = Metrics()
    t = tracker(MemoryStore(), metrics)
    ctx = request(model="gpt-mock")
    t.record(ctx)
    assert ctx.cost_usd is None
    assert metrics.unpriced.cells[("openai", "gpt-mock")].value == 1
    assert ("alice", "openai", "gpt-mock") not in metrics.spend.cells
    no_usage = request()
    no_usage.usage = None  # nothing reported (an error, a model list): neither priced nor "unpriced"
    t.record(no_usage)
    assert no_usage.cost_usd is None and metrics.unpriced.cells[("openai", "gpt-mock")].value == 1


async def test_the_soft_threshold_warns_once_per_period(caplog: pytest.LogCaptureFixture) -> None:
    t = tracker(MemoryStore())
    t.state(KEY, 0.01, "day")  # a budgeted key seen by the layer
    for _ in range(9):
        t.record(request())
    with caplog.at_level("WARNING", logger="sluice.spend"):
        await t.tick()
        t.record(request())
        await t.tick()
    warnings = [r for r in caplog.records if "budget" in r.getMessage()]
    assert len(warnings) == 1 and "'alice'" in warnings[0].getMessage()


async def test_two_workers_share_one_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "spend.db"
    first, second = tracker(SqliteStore(path)), tracker(SqliteStore(path))
    for _ in range(3):
        first.record(request())
    second.record(request())
    await first.tick()
    await second.tick()
    assert spent(second) == pytest.approx(0.004)
    await first.tick()
    assert spent(first) == pytest.approx(0.004)
    await first.stop()
    await second.stop()
    # A restart reads it back.
    again = tracker(SqliteStore(path))
    await again.start()
    try:
        assert spent(again) == pytest.approx(0.004)
        assert again.state(KEY, 0.01, "total").spent_usd == pytest.approx(0.004)
    finally:
        await again.stop()


async def test_stop_writes_what_is_left(tmp_path: Path) -> None:
    path = tmp_path / "spend.db"
    t = tracker(SqliteStore(path))
    await t.start()
    t.record(request())
    await t.stop()
    reader = SqliteStore(path)
    ((_row, tally),) = await reader.rows("0")
    assert tally.cost_nanos == NANOS_PER_USD // 1000
    await reader.close()


@pytest.fixture
def redis(tmp_path: Path) -> RedisServer:
    server = start_redis(tmp_path / "redis")
    yield server  # type: ignore[misc]
    server.stop()


async def test_two_hosts_share_redis_and_survive_its_outage(redis: RedisServer, tmp_path: Path) -> None:
    first, second = (
        tracker(RedisStore(redis.url, op_timeout=0.5)),
        tracker(RedisStore(redis.url, op_timeout=0.5)),
    )
    first.record(request())
    first.record(request(key="bob"))
    await first.tick()
    await second.tick()
    assert spent(second) == pytest.approx(0.001)
    redis.stop()
    first.record(request())
    await first.tick()  # fails: kept
    assert spent(first) == pytest.approx(0.002)
    restarted = start_redis(tmp_path / "redis2", port=redis.port)  # an empty Redis on the same port
    try:
        await first.tick()
        await second.tick()
        assert spent(second) == pytest.approx(0.001)  # the unflushed dollar-thousandth arrived
        rows = await RedisStore(restarted.url).rows("0")
        assert {(row[0], tally.requests) for row, tally in rows} == {("alice", 1)}
    finally:
        await first.stop()
        await second.stop()
        restarted.stop()


async def test_redis_ledger_matches_the_sqlite_ledger(redis: RedisServer, tmp_path: Path) -> None:
    stores: list[SpendStore] = [RedisStore(redis.url), SqliteStore(tmp_path / "s.db")]
    for store in stores:
        t = tracker(store)
        for key, model, tokens in [("alice", "m1", 1000), ("alice", "gpt-mock", 10), ("bob", "m1", 3000)]:
            t.record(request(key, model, tokens))
        await t.tick()
    redis_rows, sqlite_rows = [sorted((r, t.values()) for r, t in await s.rows("0")) for s in stores]
    assert redis_rows == sqlite_rows
    assert len(redis_rows) == 3
    for store in stores:
        await store.close()


async def test_ticks_run_in_the_background() -> None:
    store = FlakyStore()
    t = SpendTracker(Pricer(PRICES), store, Metrics(), interval=0.05)
    await t.start()
    try:
        t.record(request())
        for _ in range(100):
            if store.writes:
                break
            await asyncio.sleep(0.05)
        assert store.writes == 1
    finally:
        await t.stop()


async def test_a_dated_price_is_the_one_of_the_request_s_day() -> None:
    """claude-opus-4-6 lost its long-context tier on 2026-03-13: a cached price holds for one UTC day."""
    t = SpendTracker(Pricer({}), MemoryStore(), Metrics())
    long_prompt = Usage(300_000, 1_000)
    costs = []
    for when in ("2026-03-12T23:59:00", "2026-03-13T00:01:00", "2026-03-12T12:00:00"):
        ctx = request(model="claude-opus-4-6")
        ctx.provider, ctx.usage = "anthropic", long_prompt
        ctx.started_wall = datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp()
        t.record(ctx)
        costs.append(ctx.cost_usd)
    before, after, again = costs
    assert before == pytest.approx(300_000 * 10e-6 + 1_000 * 37.5e-6)  # the tier's prices
    assert after == pytest.approx(300_000 * 5e-6 + 1_000 * 25e-6)
    assert again == before  # a long stream of the day before, ending after: its own day's price
