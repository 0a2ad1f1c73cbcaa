"""LogWriter: whole lines in batches, in order, within their flush time, nothing lost at close."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from proxy.accesslog import LogWriter, log_line
from proxy.config import ConfigError, load_settings
from proxy.context import RequestContext
from proxy.mock import MockHandle
from tests.conftest import SluiceFactory, upstream_env


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every write(2) the writer makes (the real os.write still runs)."""
    sizes: list[int] = []
    real = os.write

    def counting(fd: int, data: bytes) -> int:
        sizes.append(len(data))
        return real(fd, data)

    monkeypatch.setattr(os, "write", counting)
    return sizes


def _ctx(n: int) -> RequestContext:
    ctx = RequestContext(f"req{n}", "POST", "/v1/chat/completions", "127.0.0.1")
    ctx.status = 200
    return ctx


async def test_lines_within_the_flush_time_go_out_in_one_write(tmp_path: Path, writes: list[int]) -> None:
    path = tmp_path / "access.log"
    writer = LogWriter(str(path), flush_seconds=0.05)
    for n in range(3):
        writer.log(_ctx(n), time.monotonic())
    await asyncio.sleep(0.01)
    assert not path.read_text() and writes == []  # still within its batch's time
    await asyncio.sleep(0.1)
    assert [line["request_id"] for line in _lines(path)] == ["req0", "req1", "req2"]
    assert len(writes) == 1
    writer.close()


async def test_a_full_batch_goes_at_once(tmp_path: Path, writes: list[int]) -> None:
    path = tmp_path / "access.log"
    writer = LogWriter(str(path), flush_seconds=60.0)
    for n in range(128):
        writer.log(_ctx(n), time.monotonic())
    assert len(_lines(path)) == 128  # no waiting for the minute
    writer.log(_ctx(128), time.monotonic())
    assert len(_lines(path)) == 128
    writer.close()
    assert len(_lines(path)) == 129


async def test_lines_keep_the_order_their_requests_ended_in(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    writer = LogWriter(str(path), flush_seconds=0.01)
    writer.log(_ctx(0), time.monotonic())
    writer.write({"request_id": "record"})
    writer.log(_ctx(1), time.monotonic())
    await asyncio.sleep(0.05)
    assert [line["request_id"] for line in _lines(path)] == ["req0", "record", "req1"]
    writer.close()


async def test_a_line_is_formatted_as_log_line_formats_it(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    writer = LogWriter(str(path))
    ctx, ended = _ctx(7), time.monotonic()
    writer.log(ctx, ended)
    writer.close()
    assert path.read_bytes() == log_line(ctx, ended)


async def test_zero_flush_time_writes_at_the_end_of_the_step(tmp_path: Path, writes: list[int]) -> None:
    path = tmp_path / "access.log"
    writer = LogWriter(str(path), flush_seconds=0.0)
    for n in range(3):
        writer.write({"n": n})
    await asyncio.sleep(0)  # the end of the step
    await asyncio.sleep(0)
    assert _lines(path) == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert len(writes) == 1
    writer.close()


async def test_a_file_takes_64_kib_writes_and_long_lines_whole(tmp_path: Path, writes: list[int]) -> None:
    path = tmp_path / "access.log"
    writer = LogWriter(str(path), flush_seconds=0.0)
    records = [{"n": n, "pad": "x" * 1500} for n in range(30)] + [{"n": 30, "pad": "y" * 100_000}]
    for record in records:
        writer.write(record)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert _lines(path) == records
    # A regular file opened O_APPEND takes each write whole: lines share
    # writes up to 64 KiB (30 lines of ~1.5 KiB: one write).
    assert writes[0] > 4096 and all(size <= 65536 for size in writes[:-1])
    assert writes[-1] > 100_000  # the long line alone, in one piece
    assert len(writes) == 2
    writer.close()


async def test_a_pipe_gets_writes_within_pipe_buf(tmp_path: Path, writes: list[int]) -> None:
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a writer's open would wait for one
    try:
        writer = LogWriter(str(fifo), flush_seconds=0.0)
        records = [{"n": n, "pad": "x" * 1500} for n in range(6)]
        for record in records:
            writer.write(record)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        # A pipe takes a write up to PIPE_BUF (4096) whole, so workers never
        # interleave inside one.
        assert all(size <= 4096 for size in writes) and 1 < len(writes) < len(records)
        data = os.read(reader, 1 << 16)
        assert [json.loads(line) for line in data.splitlines()] == records
        writer.close()
    finally:
        os.close(reader)


async def test_close_writes_what_is_pending(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    writer = LogWriter(str(path), flush_seconds=60.0)
    writer.write({"last": True})
    writer.log(_ctx(1), time.monotonic())
    writer.close()  # before the batch's time is up, as at shutdown
    assert [line.get("request_id", "record") for line in _lines(path)] == ["record", "req1"]


async def test_a_failing_write_drops_its_lines_without_raising(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "access.log"
    writer = LogWriter(str(path), flush_seconds=60.0)

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    for n in range(300):  # two full batches fail inside log(), where a request ends
        writer.log(_ctx(n), time.monotonic())
    assert sum("write failed" in r.getMessage() for r in caplog.records) == 1  # reported once, not per batch
    monkeypatch.undo()
    writer.log(_ctx(300), time.monotonic())
    writer.close()
    # The two failed batches are gone; the lines after them are written.
    assert [line["request_id"] for line in _lines(path)] == [f"req{n}" for n in range(256, 301)]


def test_without_a_loop_a_line_is_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    writer = LogWriter(str(path))
    writer.write({"now": 1})
    assert _lines(path) == [{"now": 1}]
    writer.log(_ctx(2), time.monotonic())
    assert _lines(path)[-1]["request_id"] == "req2"
    writer.close()


def test_sigterm_writes_the_lines_still_waiting_for_their_batch(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    log = tmp_path / "access.log"
    sluice = sluice_factory(**upstream_env(mock), SLUICE_ACCESS_LOG=str(log), SLUICE_ACCESS_LOG_FLUSH="60")
    ids = [f"term{n}" for n in range(3)]
    for request_id in ids:
        response = httpx.post(
            f"{sluice.url}/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-request-id": request_id},
        )
        assert response.status_code == 200
    time.sleep(0.2)
    assert log.read_text() == ""  # all three wait for their minute
    assert sluice.stop() in (0, -signal.SIGTERM)  # a graceful stop, as uvicorn reports it
    assert [line["request_id"] for line in _lines(log)] == ids


@pytest.mark.parametrize("raw", ["-1", "soon", "inf"])
def test_a_bad_flush_time_is_refused_at_start(raw: str) -> None:
    with pytest.raises(ConfigError, match="SLUICE_ACCESS_LOG_FLUSH"):
        load_settings({"SLUICE_ACCESS_LOG_FLUSH": raw})


def test_the_flush_time_is_read_in_seconds() -> None:
    assert load_settings({"SLUICE_ACCESS_LOG_FLUSH": "0"}).access_log_flush == 0.0
    assert load_settings({}).access_log_flush == 0.05
