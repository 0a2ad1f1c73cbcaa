"""The access log's record shape, without a server."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from proxy.middleware.access_log import _timestamp


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_timestamps_match_isoformat_to_the_millisecond(wall: float) -> None:
    # The cached-second formatter must print what datetime.isoformat would.
    expected = datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert _timestamp(wall) == expected
