"""LogWriter: whole lines, batched per event-loop step, nothing lost at close."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from proxy.middleware.access_log import LogWriter


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


async def test_lines_ended_in_one_step_go_out_in_one_write(tmp_path: Path, writes: list[int]) -> None:
    path = tmp_path / "access.log"
    writer = LogWriter(str(path))
    for n in range(3):
        writer.write({"n": n})
    await asyncio.sleep(0)  # the end of the step
    await asyncio.sleep(0)
    assert _lines(path) == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert len(writes) == 1
    writer.write({"n": 3})
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert _lines(path)[-1] == {"n": 3}
    assert len(writes) == 2
    writer.close()


async def test_batches_fit_pipe_buf_and_long_lines_stay_whole(tmp_path: Path, writes: list[int]) -> None:
    path = tmp_path / "access.log"
    writer = LogWriter(str(path))
    records = [{"n": n, "pad": "x" * 1500} for n in range(6)] + [{"n": 6, "pad": "y" * 10_000}]
    for record in records:
        writer.write(record)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert _lines(path) == records
    # Several lines share a write while they fit in PIPE_BUF (4096): a pipe
    # takes such a write whole, so workers never interleave inside it.
    assert all(size <= 4096 for size in writes[:-1])
    assert writes[-1] > 10_000  # the long line alone, in one piece
    assert len(writes) < len(records)
    writer.close()


async def test_close_writes_what_is_pending(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    writer = LogWriter(str(path))
    writer.write({"last": True})
    writer.close()  # before the step ends, as at shutdown
    assert _lines(path) == [{"last": True}]


def test_without_a_loop_a_line_is_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    writer = LogWriter(str(path))
    writer.write({"now": 1})
    assert _lines(path) == [{"now": 1}]
    writer.close()
