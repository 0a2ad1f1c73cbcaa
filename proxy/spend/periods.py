"""Budget periods: calendar periods in UTC.

``day`` is the UTC calendar day, ``week`` the ISO week (from Monday 00:00
UTC), ``month`` the calendar month, ``total`` never resets. Spend is kept
per UTC day (:func:`day_of`), so every period is a run of whole days: its
spend is the sum of the days from :func:`period_start_day` on.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Final, Literal, get_args

Period = Literal["day", "week", "month", "total"]
PERIODS: Final[tuple[str, ...]] = get_args(Period)

# The first day of "total": before any day Sluice records.
EPOCH_DAY: Final = "0000-00-00"


class _Today:
    """The last day asked for and its bounds: formatting a date on every request costs more
    than the rest of recording it."""

    def __init__(self) -> None:
        self.start = 0.0
        self.end = 0.0
        self.text = ""


_TODAY: Final = _Today()


def day_of(wall: float) -> str:
    """The UTC day of a Unix time, as ``YYYY-MM-DD`` (sorts as dates do)."""
    today = _TODAY
    if today.start <= wall < today.end:
        return today.text
    start = wall - wall % 86400  # Unix time has no leap seconds: every UTC day is 86,400 s
    text = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d")
    today.start, today.end, today.text = start, start + 86400, text
    return text


def _start(period: Period, today: date) -> date | None:
    if period == "day":
        return today
    if period == "week":
        return today - timedelta(days=today.weekday())  # Monday
    if period == "month":
        return today.replace(day=1)
    return None


def period_start_day(period: Period, wall: float) -> str:
    """The first day (``YYYY-MM-DD``) of the period holding ``wall``; :data:`EPOCH_DAY` for total."""
    start = _start(period, datetime.fromtimestamp(wall, UTC).date())
    return EPOCH_DAY if start is None else start.isoformat()


def period_end(period: Period, wall: float) -> float | None:
    """The Unix time the period holding ``wall`` ends (the next one starts); None for total."""
    today = datetime.fromtimestamp(wall, UTC).date()
    if period == "day":
        end = today + timedelta(days=1)
    elif period == "week":
        end = today + timedelta(days=7 - today.weekday())
    elif period == "month":
        end = date(today.year + today.month // 12, today.month % 12 + 1, 1)
    else:
        return None
    return datetime(end.year, end.month, end.day, tzinfo=UTC).timestamp()


def window_start_day(wall: float) -> str:
    """The earliest day any period but ``total`` holding ``wall`` starts on.

    The month's first day, or the week's Monday when the week began in the
    month before: the days a spend cache must hold.
    """
    today = datetime.fromtimestamp(wall, UTC).date()
    return min(today.replace(day=1), today - timedelta(days=today.weekday())).isoformat()
