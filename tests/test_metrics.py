"""proxy.metrics: what /metrics says, from what was recorded."""

from __future__ import annotations

import bisect
import re

from hypothesis import given
from hypothesis import strategies as st

from proxy.metrics import Counter, Gauge, Histogram

BUCKETS = (0.1, 0.5, 1.0)


def _series(h: Histogram) -> dict[str, str]:
    return dict(line.rsplit(" ", 1) for line in h.samples())


def test_a_histogram_counts_cumulatively_and_a_value_on_a_bound_counts_in_that_bucket() -> None:
    h = Histogram("t", "help", ("provider",), BUCKETS)
    for value in (0.05, 0.1, 0.3, 2.0):
        h.observe(value, ("openai",))
    h.observe(0.7, ("gemini",))
    series = _series(h)
    assert series['t_bucket{provider="openai",le="0.1"}'] == "2"  # 0.05, and 0.1 itself
    assert series['t_bucket{provider="openai",le="0.5"}'] == "3"
    assert series['t_bucket{provider="openai",le="1.0"}'] == "3"
    assert series['t_bucket{provider="openai",le="+Inf"}'] == "4"
    assert series['t_count{provider="openai"}'] == "4"
    assert float(series['t_sum{provider="openai"}']) == 0.05 + 0.1 + 0.3 + 2.0
    assert series['t_bucket{provider="gemini",le="1.0"}'] == "1"
    assert series['t_bucket{provider="gemini",le="0.5"}'] == "0"
    # Label sets in order, each with its buckets, sum and count.
    assert [re.search(r'provider="(\w+)"', line)[1] for line in h.samples()] == (  # type: ignore[index]
        ["gemini"] * 6 + ["openai"] * 6
    )


@given(st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), max_size=30))
def test_the_bucket_counts_are_what_bisect_left_gives(values: list[float]) -> None:
    h = Histogram("t", "help", (), BUCKETS)
    for value in values:
        h.observe(value)
    if not values:
        assert h.samples() == []  # nothing recorded, no series
        return
    expected = [0] * (len(BUCKETS) + 1)
    for value in values:
        expected[bisect.bisect_left(BUCKETS, value)] += 1
    running = 0
    series = _series(h)
    for bound, count in zip((*map(repr, BUCKETS), "+Inf"), expected, strict=True):
        running += count
        assert series[f't_bucket{{le="{bound}"}}'] == str(running)


def test_counters_and_gauges_add_per_label_set_and_list_them_in_order() -> None:
    c = Counter("c_total", "help", ("provider", "status"))
    c.inc(("openai", "200"))
    c.inc(("gemini", "200"), 2.5)
    c.inc(("openai", "200"))
    assert c.samples() == [
        'c_total{provider="gemini",status="200"} 2.5',
        'c_total{provider="openai",status="200"} 2',
    ]
    g = Gauge("g", "help", ("provider",))
    g.inc(("openai",))
    g.inc(("openai",))
    g.dec(("openai",))
    g.dec(("anthropic",))  # a dec before any inc goes below zero, as Prometheus allows
    assert g.samples() == ['g{provider="anthropic"} -1', 'g{provider="openai"} 1']
