"""Where spend is kept: the contract, and the in-memory and SQLite stores.

* :class:`MemoryStore`: this process only, gone at exit (Sluice without a
  keys file or ``SLUICE_SPEND_DB``: costs are still logged and counted).
* :class:`SqliteStore`: one file shared by every worker of a host, in WAL
  mode, surviving restarts. Its calls run in a thread, so the event loop
  never waits on the disk.
* :class:`~proxy.spend.redis_store.RedisStore`: every host sharing one Redis.

A store method that fails raises :class:`StoreUnavailable`; the tracker
keeps what it could not write and tries again.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from .ledger import TALLY_FIELDS, KeySpend, Row, Tally, by_key_spend, merge


class StoreUnavailable(Exception):
    """The store could not be read or written (Redis down, disk error, locked too long).

    ``unwritten``: the rows of a write that were not stored (None: all of them).
    """

    def __init__(self, message: str, unwritten: Mapping[Row, Tally] | None = None) -> None:
        super().__init__(message)
        self.unwritten = unwritten


class SpendStore(Protocol):
    async def write(self, batch: Mapping[Row, Tally]) -> None:
        """Add the batch's sums to the ledger, all or nothing where the store allows."""

    async def read_spend(self, first_day: str) -> dict[str, KeySpend]:
        """Every key's spend per day from ``first_day`` on, and its total."""

    async def rows(self, first_day: str) -> list[tuple[Row, Tally]]:
        """The ledger from ``first_day`` on (``sluice usage``)."""

    async def close(self) -> None: ...


class MemoryStore:
    def __init__(self) -> None:
        self._rows: dict[Row, Tally] = {}

    async def write(self, batch: Mapping[Row, Tally]) -> None:
        merge(self._rows, batch.items())

    async def read_spend(self, first_day: str) -> dict[str, KeySpend]:
        return by_key_spend(
            ((k, d, t.cost_nanos) for (k, _p, _m, d), t in self._rows.items() if d >= first_day),
            _totals(self._rows),
        )

    async def rows(self, first_day: str) -> list[tuple[Row, Tally]]:
        return [(row, tally) for row, tally in self._rows.items() if row[3] >= first_day]

    async def close(self) -> None:
        return None


def _totals(rows: Mapping[Row, Tally]) -> list[tuple[str, int]]:
    totals: dict[str, int] = {}
    for (key, _p, _m, _d), tally in rows.items():
        totals[key] = totals.get(key, 0) + tally.cost_nanos
    return list(totals.items())


# Every statement is a constant; the columns after the row are TALLY_FIELDS, in order.
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS ledger (
    key TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL, day TEXT NOT NULL,
    {", ".join(f"{f} INTEGER NOT NULL DEFAULT 0" for f in TALLY_FIELDS)},
    PRIMARY KEY (key, provider, model, day)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ledger_day ON ledger (day);
CREATE TABLE IF NOT EXISTS totals (key TEXT PRIMARY KEY, cost_nanos INTEGER NOT NULL) WITHOUT ROWID;
"""
_UPSERT = """
INSERT INTO ledger (key, provider, model, day, requests, input_tokens, output_tokens,
                    cache_read_tokens, cache_write_tokens, cost_nanos, unpriced)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO UPDATE SET
    requests = requests + excluded.requests,
    input_tokens = input_tokens + excluded.input_tokens,
    output_tokens = output_tokens + excluded.output_tokens,
    cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens,
    cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens,
    cost_nanos = cost_nanos + excluded.cost_nanos,
    unpriced = unpriced + excluded.unpriced
"""
_ROWS = """
SELECT key, provider, model, day, requests, input_tokens, output_tokens,
       cache_read_tokens, cache_write_tokens, cost_nanos, unpriced
FROM ledger WHERE day >= ?
"""
_ADD_TOTAL = (
    "INSERT INTO totals (key, cost_nanos) VALUES (?, ?) "
    "ON CONFLICT DO UPDATE SET cost_nanos = cost_nanos + excluded.cost_nanos"
)


class SqliteStore:
    """The ledger in one SQLite file (WAL: readers never block the writer, workers share it)."""

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()  # one statement sequence at a time on the connection
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at each checkpoint, never corrupt
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    async def _run(self, work: str, *args: object) -> object:
        try:
            return await asyncio.to_thread(self._locked, work, *args)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite {work} failed: {exc}") from exc

    def _locked(self, work: str, *args: object) -> object:
        with self._lock:
            return getattr(self, f"_{work}")(*args)

    def open_sync(self) -> None:
        """Create the file and its tables now (at start: a bad path fails there, not on a request)."""
        try:
            with self._lock:
                self._connect()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc

    async def write(self, batch: Mapping[Row, Tally]) -> None:
        if batch:
            await self._run("write_sync", batch)

    def _write_sync(self, batch: Mapping[Row, Tally]) -> None:
        db = self._connect()
        totals: dict[str, int] = {}
        for (key, _p, _m, _d), tally in batch.items():
            totals[key] = totals.get(key, 0) + tally.cost_nanos
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(_UPSERT, [(*row, *tally.values()) for row, tally in batch.items()])
            db.executemany(_ADD_TOTAL, list(totals.items()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def read_spend(self, first_day: str) -> dict[str, KeySpend]:
        return await self._run("read_spend_sync", first_day)  # type: ignore[return-value]

    def _read_spend_sync(self, first_day: str) -> dict[str, KeySpend]:
        db = self._connect()
        days = db.execute(
            "SELECT key, day, SUM(cost_nanos) FROM ledger WHERE day >= ? GROUP BY key, day", (first_day,)
        ).fetchall()
        totals = db.execute("SELECT key, cost_nanos FROM totals").fetchall()
        return by_key_spend(days, totals)

    async def rows(self, first_day: str) -> list[tuple[Row, Tally]]:
        return await self._run("rows_sync", first_day)  # type: ignore[return-value]

    def _rows_sync(self, first_day: str) -> list[tuple[Row, Tally]]:
        cursor = self._connect().execute(_ROWS, (first_day,))
        return [((r[0], r[1], r[2], r[3]), Tally(*r[4:])) for r in cursor]

    async def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
