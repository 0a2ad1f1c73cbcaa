"""What is recorded per request, summed per (key, provider, model, UTC day).

The ledger is fine enough for ``sluice usage`` (per key, per model, per day)
and for budgets (a key's spend per day, from which every period is summed).
Costs are kept as integer nanodollars: sums are exact, in SQLite and in Redis.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

NANOS_PER_USD: Final = 1_000_000_000

# (key name, provider, model, UTC day). "" for a request without a key or a model.
Row = tuple[str, str, str, str]

TALLY_FIELDS: Final = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_nanos",
    "unpriced",
)


@dataclass(slots=True)
class Tally:
    """The sums of one ledger row. ``unpriced``: requests with usage but no known price."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_nanos: int = 0
    unpriced: int = 0

    def add(self, other: Tally) -> None:
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read_tokens += other.cache_read_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.cost_nanos += other.cost_nanos
        self.unpriced += other.unpriced

    def values(self) -> tuple[int, ...]:
        return (
            self.requests,
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.cost_nanos,
            self.unpriced,
        )


def merge(into: dict[Row, Tally], rows: Iterable[tuple[Row, Tally]]) -> None:
    for row, tally in rows:
        held = into.get(row)
        if held is None:
            into[row] = Tally(*tally.values())
        else:
            held.add(tally)


@dataclass(frozen=True, slots=True)
class KeySpend:
    """One key's recorded spend: nanodollars per UTC day (from some day on), and in all."""

    days: Mapping[str, int]
    total: int

    def since(self, first_day: str) -> int:
        return sum(nanos for day, nanos in self.days.items() if day >= first_day)


def by_key_spend(
    rows: Iterable[tuple[str, str, int]], totals: Iterable[tuple[str, int]]
) -> dict[str, KeySpend]:
    """``(key, day, nanos)`` rows and ``(key, total)`` pairs into :class:`KeySpend` per key."""
    days: dict[str, dict[str, int]] = {}
    for key, day, nanos in rows:
        per_day = days.setdefault(key, {})
        per_day[day] = per_day.get(day, 0) + nanos
    result = {key: KeySpend(per_day, 0) for key, per_day in days.items()}
    for key, total in totals:
        result[key] = KeySpend(days.get(key, {}), total)
    return result
