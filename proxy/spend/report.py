"""``sluice usage``: the ledger summed per key, model or day, as a table or JSON.

Reads the same store the servers write (Redis with ``SLUICE_REDIS_URL``,
else the SQLite file). Spend still in a running server's batch (under a
second's worth) shows at its next flush.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Sequence
from typing import Literal

from .ledger import NANOS_PER_USD, Row, Tally
from .periods import EPOCH_DAY, day_of
from .store import SpendStore

By = Literal["key", "model", "day"]
_SINCE = re.compile(r"(\d+)([dw])")


def since_day(raw: str | None, now: float) -> str:
    """``7d``, ``2w`` or a date (``2026-01-31``) into the first UTC day to include; None: everything."""
    if raw is None:
        return EPOCH_DAY
    found = _SINCE.fullmatch(raw.strip())
    if found:
        days = int(found.group(1)) * (7 if found.group(2) == "w" else 1)
        return day_of(now - max(days - 1, 0) * 86400)  # 1d: today, 7d: today and the 6 days before
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw.strip()):
        return raw.strip()
    raise ValueError(f"--since takes a number of days or weeks (7d, 2w) or a date (YYYY-MM-DD), not {raw!r}")


def _group(row: Row, by: By) -> str:
    key, provider, model, day = row
    if by == "key":
        return key or "-"
    if by == "model":
        return f"{provider}/{model}" if model else f"{provider or '-'}/-"
    return day


def summarize(rows: Sequence[tuple[Row, Tally]], by: By) -> list[dict[str, object]]:
    groups: dict[str, Tally] = {}
    for row, tally in rows:
        groups.setdefault(_group(row, by), Tally()).add(tally)
    return [
        {
            by: name,
            "requests": t.requests,
            "input_tokens": t.input_tokens,
            "output_tokens": t.output_tokens,
            "cache_read_tokens": t.cache_read_tokens,
            "cache_write_tokens": t.cache_write_tokens,
            "cost_usd": t.cost_nanos / NANOS_PER_USD,
            "unpriced_requests": t.unpriced,
        }
        for name, t in sorted(groups.items())
    ]


def render_table(summary: list[dict[str, object]], by: By) -> str:
    head = f"{by.upper():<40} {'REQUESTS':>9} {'INPUT':>12} {'OUTPUT':>12} {'COST (USD)':>14} {'UNPRICED':>9}"
    lines = [head]
    totals = [0, 0, 0, 0.0, 0]
    for entry in summary:
        values = [entry["requests"], entry["input_tokens"], entry["output_tokens"], entry["cost_usd"]]
        values.append(entry["unpriced_requests"])
        totals = [a + b for a, b in zip(totals, values, strict=True)]  # type: ignore[operator]
        lines.append(_line(str(entry[by]), values))
    lines.append(_line("TOTAL", totals))
    return "\n".join(lines)


def _line(name: str, values: Sequence[object]) -> str:
    requests, inp, out, cost, unpriced = values
    return f"{name:<40} {requests:>9} {inp:>12} {out:>12} {cost:>14.6f} {unpriced:>9}"


async def _read(store: SpendStore, first_day: str) -> list[tuple[Row, Tally]]:
    try:
        return await store.rows(first_day)
    finally:
        await store.close()


def report(store: SpendStore, since: str | None, by: By, as_json: bool) -> str:
    first_day = since_day(since, time.time())
    summary = summarize(asyncio.run(_read(store, first_day)), by)
    if as_json:
        return json.dumps({"since": None if first_day == EPOCH_DAY else first_day, "by": by, "rows": summary})
    return render_table(summary, by)
