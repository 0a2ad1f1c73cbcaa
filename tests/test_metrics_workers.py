"""One /metrics scrape describes the whole instance, whichever of its workers answers it.

Real ``sluice serve --workers 2`` processes in front of the mock; requests on
fresh connections, so the kernel hands them to both workers, and scrapes on
fresh connections too, so they are answered by both.
"""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from proxy.mock import MockHandle
from tests.conftest import SluiceFactory, SluiceProcess, upstream_env

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
BATCH = 40


def _total(text: str, prefix: str) -> float:
    """The sum of every series of ``prefix`` (a name, or a name and the start of its labels)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def _scrape() -> httpx.Client:
    # No keep-alive: each scrape is a new connection, taken by whichever worker accepts first.
    return httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=30)


def _send(url: str, count: int) -> None:
    def one(_: int) -> None:
        with httpx.Client(timeout=30) as client:  # its own connection
            reply = client.post(f"{url}/v1/chat/completions", json=CHAT, headers={"x-mock-tokens": "2"})
            assert reply.status_code == 200, reply.text

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(count)))


def _requests_by_worker(directory: Path) -> dict[int, float]:
    """Requests each worker process counted, from its own file (read with prometheus_client's reader)."""
    counts: dict[int, float] = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.name.split("_")[1].split("-")[0])
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            if '"sluice_requests_total"' in key:
                counts[pid] = counts.get(pid, 0.0) + value
    return counts


def _two_workers(factory: SluiceFactory, mock: MockHandle, directory: Path) -> SluiceProcess:
    process = factory("--workers", "2", SLUICE_METRICS_DIR=str(directory), **upstream_env(mock))
    deadline = time.monotonic() + 30
    while process.log().count("Application startup complete") < 2:
        assert time.monotonic() < deadline, process.log()
        time.sleep(0.05)
    return process


def _load_both(process: SluiceProcess, directory: Path) -> int:
    """Requests in batches until both workers have served some; how many were sent."""
    sent = 0
    while len([n for n in _requests_by_worker(directory).values() if n]) < 2:
        assert sent < 25 * BATCH, f"one worker took every request: {_requests_by_worker(directory)}"
        _send(process.url, BATCH)
        sent += BATCH
    return sent


def _settled(url: str, expected: float) -> None:
    """The last request's worker records it just after its reply: wait until a scrape sees it."""
    deadline = time.monotonic() + 15
    with _scrape() as client:
        while _total(client.get(f"{url}/metrics").text, "sluice_requests_total{") != expected:
            assert time.monotonic() < deadline, client.get(f"{url}/metrics").text
            time.sleep(0.05)


def test_every_scrape_reports_every_request_once(
    sluice_factory: SluiceFactory, mock: MockHandle, tmp_path: Path
) -> None:
    process = _two_workers(sluice_factory, mock, tmp_path)
    sent = _load_both(process, tmp_path)
    _settled(process.url, sent)
    with _scrape() as client:
        for _ in range(20):
            text = client.get(f"{process.url}/metrics").text
            assert _total(text, "sluice_requests_total{") == sent
            assert _total(text, 'sluice_requests_total{provider="openai",status="200",outcome="ok"}') == sent
            assert _total(text, "sluice_time_to_first_byte_seconds_count{") == sent
            assert _total(text, 'sluice_time_to_first_byte_seconds_bucket{provider="openai",le="+Inf') == sent
            assert _total(text, "sluice_request_duration_seconds_count{") == sent
            assert _total(text, 'sluice_tokens_total{provider="openai",key="",direction="output"') == 2 * sent
            assert _total(text, "sluice_in_flight_requests{") == 0
            assert "sluice_ready 1" in text.splitlines()
    per_worker = _requests_by_worker(tmp_path)
    assert len(per_worker) == 2 and sum(per_worker.values()) == sent, per_worker


def test_a_killed_worker_keeps_its_counts(
    sluice_factory: SluiceFactory, mock: MockHandle, tmp_path: Path
) -> None:
    process = _two_workers(sluice_factory, mock, tmp_path)
    sent = _load_both(process, tmp_path)
    _settled(process.url, sent)
    victim = max(_requests_by_worker(tmp_path).items(), key=lambda item: item[1])[0]
    os.kill(victim, signal.SIGKILL)
    # The supervisor notices and starts another worker (its health check runs every few seconds).
    deadline = time.monotonic() + 60
    while process.log().count("Application startup complete") < 3:
        assert time.monotonic() < deadline, process.log()
        with _scrape() as client:  # meanwhile every scrape still counts the dead worker's requests
            assert _total(client.get(f"{process.url}/metrics").text, "sluice_requests_total{") == sent
        time.sleep(0.2)
    _send(process.url, BATCH)
    _settled(process.url, sent + BATCH)
    with _scrape() as client:
        for _ in range(20):
            text = client.get(f"{process.url}/metrics").text
            assert _total(text, "sluice_requests_total{") == sent + BATCH
            assert _total(text, "sluice_time_to_first_byte_seconds_count{") == sent + BATCH
            assert _total(text, "sluice_in_flight_requests{") == 0
    assert victim in _requests_by_worker(tmp_path)  # its file is still read
    assert len(list(tmp_path.glob("gauge_livesum_*.db"))) == 2  # but only the live workers' gauges


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_private_directory_is_made_and_removed(
    sluice_factory: SluiceFactory, mock: MockHandle, workers: str
) -> None:
    """With no SLUICE_METRICS_DIR: a directory of its own, gone once Sluice stops."""
    process = sluice_factory("--workers", workers, **upstream_env(mock))
    _send(process.url, 6)
    _settled(process.url, 6)
    pids = [process.proc.pid]  # the one worker, or the supervisor of the workers
    pids += [int(p) for p in Path(f"/proc/{pids[0]}/task/{pids[0]}/children").read_text().split()]
    files = [os.readlink(fd) for pid in pids for fd in Path(f"/proc/{pid}/fd").iterdir()]
    made = {Path(f).parent for f in files if re.search(r"/sluice-metrics-[^/]+/counter_", f)}
    assert len(made) == 1, files
    [directory] = made
    assert directory.stat().st_mode & 0o777 == 0o700
    process.stop()
    assert not directory.exists()


def test_a_directory_in_use_is_refused(
    sluice_factory: SluiceFactory, mock: MockHandle, tmp_path: Path
) -> None:
    first = sluice_factory(SLUICE_METRICS_DIR=str(tmp_path), **upstream_env(mock))
    _send(first.url, 1)
    try:
        sluice_factory(SLUICE_METRICS_DIR=str(tmp_path), **upstream_env(mock))
    except RuntimeError as exc:
        assert "SLUICE_METRICS_DIR" in str(exc) and "in use by another running Sluice" in str(exc)
    else:
        raise AssertionError("a second Sluice started on the first one's metrics directory")
