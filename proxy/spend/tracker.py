"""Spend per key: priced at each request's end, batched to the store, read back into a cache.

Guarantees:

* The request path never waits on the store. :meth:`SpendTracker.record`
  prices a request and adds it to an in-memory batch; :meth:`remaining`
  reads a cache. A background task, about once a second, writes the batch
  (one transaction, or one script per key in Redis) and then reads every
  key's spend back, from which the cache's period sums are made.
* Nothing recorded is lost to a failing store: a batch that could not be
  written is kept and written with the next one (bounded by
  ``max_rows`` distinct ledger rows; past that, further rows fold into
  one row per key and day, their model unnamed).
* What a key spent here and the store has not shown yet still counts
  against its budget, so a worker never forgets its own spend between two
  reads. Other workers' and hosts' spend shows within about a second: a
  budget may be overrun by about one second of the key's traffic, plus the
  streams already running when it was reached (they finish).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final

from ..context import RequestContext
from ..keys import ClientKey
from ..metrics import Metrics
from .ledger import NANOS_PER_USD, Row, Tally, merge
from .periods import PERIODS, Period, day_of, period_start_day, window_start_day
from .prices import Pricer
from .rates import Priced, Rates
from .store import SpendStore, StoreUnavailable

logger = logging.getLogger("sluice.spend")

_PERIOD_INDEX: Final = {name: i for i, name in enumerate(PERIODS)}
_MONOTONIC: Final = time.monotonic  # a C static when compiled, not a module attribute lookup
_ZERO: Final = (0, 0, 0, 0)
_LOG_EVERY: Final = 10.0
# Distinct unpriced models named in the metric; others are counted as "other".
MAX_UNPRICED_LABELS: Final = 200
# Distinct (provider, model) prices remembered; past this the cache starts over.
MAX_PRICED: Final = 4096


class BudgetState:
    """A budgeted key's standing, as the request path sees it (made per request: a plain class)."""

    __slots__ = ("remaining_usd", "spent_usd", "stale")

    def __init__(self, spent_usd: float, remaining_usd: float, stale: bool) -> None:
        self.spent_usd = spent_usd
        self.remaining_usd = remaining_usd
        self.stale = stale  # the store could not be read lately (SLUICE_REDIS_FAILURE decides)


class SpendTracker:
    """One per worker process: prices requests, keeps the batch, caches every key's period spend."""

    def __init__(
        self,
        pricer: Pricer,
        store: SpendStore,
        metrics: Metrics,
        *,
        warn_at: float = 0.8,
        interval: float = 1.0,
        max_rows: int = 100_000,
        stale_after: float = 5.0,
    ) -> None:
        self.pricer = pricer
        self.store = store
        self.metrics = metrics
        self.warn_at = warn_at
        self.interval = interval
        self.max_rows = max_rows
        self.stale_after = stale_after
        self._pending: dict[Row, Tally] = {}
        self._prices: dict[tuple[str, str], Priced] = {}  # by (provider, model)
        # Nanodollars recorded here that the cache does not show yet, by key.
        self._local: dict[str, int] = {}
        # From the store's last read: (day, week, month, total) nanodollars by key.
        self._periods: dict[str, tuple[int, int, int, int]] = {}
        self._budgeted: dict[str, ClientKey] = {}  # keys with a budget seen lately (for the warning)
        self._warned: set[tuple[str, str]] = set()  # (key, period's first day)
        self._read_ok = time.monotonic()
        self._loaded = False
        self._unpriced_labels: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None
        self._last_log = -_LOG_EVERY

    # ------------------------------------------------------------- request path
    def record(self, ctx: RequestContext) -> None:
        """Price a finished request (``ctx.cost_usd``), count it, and add it to the batch."""
        name, provider, model = ctx.key_name or "", ctx.provider or "", ctx.model or ""
        wall = ctx.started_wall
        tally = self._tally(name, provider, model, day_of(wall))
        tally.requests += 1
        usage = ctx.usage
        if usage is None:  # nothing reported (an error, a model list): nothing to price
            return
        tally.input_tokens += usage.input_tokens or 0
        tally.output_tokens += usage.output_tokens or 0
        tally.cache_read_tokens += usage.cache_read_tokens or 0
        tally.cache_write_tokens += usage.cache_write_tokens or 0
        rates = self._rates(provider, model, wall) if model else None
        if rates is None:
            tally.unpriced += 1
            self._count_unpriced(provider, model)
            return
        cost = rates.cost(usage)
        ctx.cost_usd = cost
        nanos = int(cost * NANOS_PER_USD + 0.5)  # round() is a generic call
        tally.cost_nanos += nanos
        self.metrics.spend.inc((name, provider, model), cost)
        if nanos:
            self._local[name] = self._local.get(name, 0) + nanos

    def _tally(self, name: str, provider: str, model: str, day: str) -> Tally:
        row = (name, provider, model, day)
        tally = self._pending.get(row)
        if tally is None:
            if len(self._pending) >= self.max_rows:  # fold: the key and day stay exact
                row = (name, "", "", day)
                tally = self._pending.get(row)
            if tally is None:
                tally = self._pending[row] = Tally()
        return tally

    def _rates(self, provider: str, model: str, wall: float) -> Rates | None:
        """The model's price at ``wall``: a dict lookup, the table only once per model (and day)."""
        key = (provider, model)
        priced = self._prices.get(key)
        if priced is None or not priced.since <= wall < priced.until:
            if len(self._prices) >= MAX_PRICED:  # model names come from requests: bounded
                self._prices.clear()
            priced = self._prices[key] = self.pricer.lookup(provider, model, wall)
        return priced.rates

    def _count_unpriced(self, provider: str, model: str) -> None:
        label = (provider, model)
        if label not in self._unpriced_labels:
            if len(self._unpriced_labels) >= MAX_UNPRICED_LABELS:
                label = (provider, "other")
            else:
                self._unpriced_labels.add(label)
        self.metrics.unpriced.inc(label)

    def state(self, key: ClientKey, budget: float, period: Period) -> BudgetState:
        """How much of its budget ``key`` has left (negative when over)."""
        if self._budgeted.get(key.name) is not key:  # new, or its budget changed
            self._budgeted[key.name] = key
        nanos = self._periods.get(key.name, _ZERO)[_PERIOD_INDEX[period]] + self._local.get(key.name, 0)
        spent = nanos / NANOS_PER_USD
        stale = _MONOTONIC() - self._read_ok > self.stale_after
        return BudgetState(spent, budget - spent, stale)

    # ------------------------------------------------------------- background
    async def start(self) -> None:
        """Read the store once (so a restarted worker knows past spend), then tick in the background."""
        await self.tick()
        self._task = asyncio.create_task(self._run(), name="sluice-spend")

    async def stop(self) -> None:
        """Stop ticking and write what is left (once; it is logged if that fails)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
        if self._pending:
            logger.error("spend of %d ledger rows could not be written at shutdown", len(self._pending))
        await self.store.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except Exception:  # a bug here must not stop the accounting for good
                logger.exception("spend tick failed")

    async def flush(self) -> bool:
        """Write the batch; what fails stays for the next flush. True when all was written."""
        if not self._pending:
            return True
        batch, self._pending = self._pending, {}
        try:
            await self.store.write(batch)
        except StoreUnavailable as exc:
            kept: dict[Row, Tally] = {}
            merge(kept, (batch if exc.unwritten is None else exc.unwritten).items())
            merge(kept, self._pending.items())  # and what arrived meanwhile
            self._pending = kept
            self._failed("write", exc)
            return False
        return True

    async def tick(self) -> None:
        """Write the batch, then read every key's spend back into the cache."""
        recorded = dict(self._local)  # what the cache lacks, as of now
        written = await self.flush()
        now = time.time()
        try:
            spend = await self.store.read_spend(window_start_day(now))
        except StoreUnavailable as exc:
            self._failed("read", exc)
            return
        starts = [period_start_day(p, now) for p in PERIODS]  # type: ignore[arg-type]
        self._periods = {
            name: (ks.since(starts[0]), ks.since(starts[1]), ks.since(starts[2]), ks.total)
            for name, ks in spend.items()
        }
        if written:  # the read shows everything recorded before the write: only newer spend is local
            local = ((name, nanos - recorded.get(name, 0)) for name, nanos in self._local.items())
            self._local = {name: rest for name, rest in local if rest > 0}
        self._read_ok = time.monotonic()
        self._warn(now)

    def _warn(self, now: float) -> None:
        for name, key in list(self._budgeted.items()):
            budget, period = key.budget_usd, key.budget_period
            if budget is None or period is None:
                del self._budgeted[name]
                continue
            first_day = period_start_day(period, now)
            state = self.state(key, budget, period)
            if state.spent_usd >= self.warn_at * budget and (name, first_day) not in self._warned:
                self._warned.add((name, first_day))
                logger.warning(
                    "key %r has spent $%.4f of its %s budget of $%.2f (%.0f %%)",
                    name, state.spent_usd, period, budget, 100 * state.spent_usd / budget if budget else 100,
                )  # fmt: skip

    def _failed(self, kind: str, exc: Exception) -> None:
        self.metrics.spend_store_errors.inc((kind,))
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY:
            self._last_log = now
            logger.warning("spend store %s failed (%s); kept in memory, retrying every second", kind, exc)
