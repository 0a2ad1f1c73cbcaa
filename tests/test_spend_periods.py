"""Budget periods: UTC calendar days, ISO weeks from Monday, calendar months, and total."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.spend.periods import EPOCH_DAY, day_of, period_end, period_start_day, window_start_day


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("day", "2026-03-15T13:45:00", "2026-03-15", "2026-03-16T00:00:00"),
        ("day", "2026-03-15T23:59:59.999", "2026-03-15", "2026-03-16T00:00:00"),
        ("day", "2026-03-16T00:00:00", "2026-03-16", "2026-03-17T00:00:00"),
        # 2026-03-15 is a Sunday: its ISO week began on Monday the 9th.
        ("week", "2026-03-15T13:45:00", "2026-03-09", "2026-03-16T00:00:00"),
        ("week", "2026-03-16T00:00:00", "2026-03-16", "2026-03-23T00:00:00"),
        # A week across a month's and a year's end.
        ("week", "2027-01-01T08:00:00", "2026-12-28", "2027-01-04T00:00:00"),
        ("month", "2026-03-15T13:45:00", "2026-03-01", "2026-04-01T00:00:00"),
        ("month", "2026-12-31T23:00:00", "2026-12-01", "2027-01-01T00:00:00"),
        ("month", "2028-02-29T12:00:00", "2028-02-01", "2028-03-01T00:00:00"),
    ],
)
def test_calendar_periods(period: str, now: str, start: str, end: str) -> None:
    assert period_start_day(period, at(now)) == start  # type: ignore[arg-type]
    assert period_end(period, at(now)) == at(end)  # type: ignore[arg-type]


def test_total_never_resets() -> None:
    assert period_start_day("total", at("2026-03-15T13:45:00")) == EPOCH_DAY
    assert period_end("total", at("2026-03-15T13:45:00")) is None


def test_window_covers_the_week_begun_last_month() -> None:
    assert window_start_day(at("2026-04-02T10:00:00")) == "2026-03-30"  # Thursday; Monday was in March
    assert window_start_day(at("2026-04-20T10:00:00")) == "2026-04-01"


@given(st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False))
def test_every_period_holds_its_moment(wall: float) -> None:
    day = day_of(wall)
    for period in ("day", "week", "month"):
        start = period_start_day(period, wall)  # type: ignore[arg-type]
        end = period_end(period, wall)  # type: ignore[arg-type]
        assert end is not None
        assert start <= day < day_of(end)
        assert at(f"{start}T00:00:00") <= wall < end
        assert start >= window_start_day(wall)
