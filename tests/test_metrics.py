"""proxy.metrics: what /metrics says, from what was recorded."""

from __future__ import annotations

import bisect
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.context import RequestContext
from proxy.metricfiles import prepare_dir, remove_dir
from proxy.metrics import Counter, Gauge, Histogram, Metrics

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


# --- several workers: their files, merged at the scrape (proxy/metricfiles.py) -------------


def _recorded(metrics: Metrics, provider: str, requests: int) -> None:
    for i in range(requests):
        ctx = RequestContext(f"r{i}", "POST", "/v1/chat/completions")
        ctx.provider, ctx.status, ctx.started, ctx.ttfb = provider, 200, 0.0, 0.01 * (i + 1)
        label = metrics.request_started(ctx)
        metrics.request_ended(ctx, 0.5, label)


def _record_and_die(directory: Path, requests: int, in_flight: int) -> None:
    """Another process records into ``directory``, then is killed (SIGKILL: no clean-up of its own)."""
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from proxy.metrics import Metrics\n"
        "from tests.test_metrics import _recorded\n"
        "m = Metrics(Path(sys.argv[1]))\n"
        "_recorded(m, 'openai', int(sys.argv[2]))\n"
        "m.in_flight.inc(('openai',), float(sys.argv[3]))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    argv = [sys.executable, "-c", code, str(directory), str(requests), str(in_flight)]
    done = subprocess.run(argv, cwd=Path(__file__).parent.parent, capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()


def _value(text: str, series: str) -> float:
    found = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(series + " ")]
    assert len(found) == 1, (series, text)
    return float(found[0])


def test_any_workers_scrape_reports_every_workers_counts(tmp_path: Path) -> None:
    a, b = Metrics(tmp_path), Metrics(tmp_path)
    _recorded(a, "openai", 3)
    _recorded(b, "openai", 4)
    _recorded(b, "gemini", 2)
    b.in_flight.inc(("gemini",))  # one still in flight in b
    b.ttfb.observe(0.1, ("anthropic",))
    for text in (a.render(), b.render()):
        assert _value(text, 'sluice_requests_total{provider="openai",status="200",outcome="ok"}') == 7
        assert _value(text, 'sluice_requests_total{provider="gemini",status="200",outcome="ok"}') == 2
        assert _value(text, 'sluice_time_to_first_byte_seconds_count{provider="openai"}') == 7
        # 0.01 .. 0.03 from a, 0.01 .. 0.04 from b: four at or below 0.025.
        assert _value(text, 'sluice_time_to_first_byte_seconds_bucket{provider="openai",le="0.025"}') == 4
        assert _value(text, 'sluice_time_to_first_byte_seconds_bucket{provider="anthropic",le="0.1"}') == 1
        assert _value(text, 'sluice_time_to_first_byte_seconds_sum{provider="openai"}') == pytest.approx(0.16)
        assert _value(text, 'sluice_in_flight_requests{provider="gemini"}') == 1
        assert _value(text, 'sluice_in_flight_requests{provider="openai"}') == 0
    # The merged text is the same text one process gives for the same values.
    alone = Metrics()
    _recorded(alone, "openai", 7)
    merged = a.render().splitlines()
    for line in alone.render().splitlines():
        if "openai" in line and "time_to_first_byte_seconds" not in line:  # buckets differ per worker
            assert line in merged


def test_a_dead_workers_counters_stay_and_its_gauges_go(tmp_path: Path) -> None:
    live = Metrics(tmp_path)
    _recorded(live, "openai", 2)
    live.in_flight.inc(("openai",))
    _record_and_die(tmp_path, requests=5, in_flight=3)  # 3 in flight when it died
    assert len(list(tmp_path.glob("gauge_livesum_*.db"))) == 2
    text = live.render()
    assert _value(text, 'sluice_requests_total{provider="openai",status="200",outcome="ok"}') == 7
    assert _value(text, 'sluice_request_duration_seconds_count{provider="openai"}') == 7
    assert _value(text, 'sluice_in_flight_requests{provider="openai"}') == 1
    assert len(list(tmp_path.glob("gauge_livesum_*.db"))) == 1  # the dead one's removed


def test_a_worker_file_grows_past_its_first_mapping(tmp_path: Path) -> None:
    """Cells made before the file grew keep writing through their older mapping of the same file."""
    metrics = Metrics(tmp_path)
    for key in range(400):  # 400 label sets of ~190 bytes: past the first 64 KiB
        metrics.tokens.inc(("openai", f"key-{key}", "input"), 1)
    for key in range(400):
        metrics.tokens.inc(("openai", f"key-{key}", "input"), key)
    text = Metrics(tmp_path).render()
    for key in (0, 1, 200, 399):
        series = f'sluice_tokens_total{{provider="openai",key="key-{key}",direction="input"}}'
        assert _value(text, series) == key + 1


def test_the_directory_is_emptied_at_start_and_refused_while_in_use(tmp_path: Path) -> None:
    _record_and_die(tmp_path, requests=3, in_flight=1)  # a run that is over
    (tmp_path / "other.db").write_bytes(b"not ours")  # someone else's file: left alone, never read
    assert prepare_dir(tmp_path) == (tmp_path, False)
    assert [p.name for p in tmp_path.iterdir()] == ["other.db"]
    current = Metrics(tmp_path)
    assert "sluice_requests_total{" not in current.render()
    _recorded(current, "openai", 1)
    with pytest.raises(ValueError, match="in use by another running Sluice"):
        prepare_dir(tmp_path)
    made, ours = prepare_dir(None)
    assert ours and made.is_dir() and made.stat().st_mode & 0o777 == 0o700
    remove_dir(made)
    assert not made.exists()


def test_the_files_are_what_prometheus_client_reads(tmp_path: Path) -> None:
    """Its own collector and text writer read a worker's files (names, format, histogram buckets)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    _recorded(Metrics(tmp_path), "openai", 3)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(tmp_path))
    text = generate_latest(registry).decode()
    assert 'sluice_requests_total{outcome="ok",provider="openai",status="200"} 3.0' in text
    assert 'sluice_time_to_first_byte_seconds_bucket{le="0.025",provider="openai"} 2.0' in text
    assert 'sluice_time_to_first_byte_seconds_count{provider="openai"} 3.0' in text
