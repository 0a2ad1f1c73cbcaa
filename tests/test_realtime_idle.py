"""1,000 idle realtime sessions held by one Sluice worker, all alive, all closing cleanly.

A session holds two sockets in Sluice (the client's and the upstream's), so
this also checks that Sluice raised its open-files limit far enough. The
memory a session costs is printed here (RSS growth / sessions, from /proc)
and measured by ``make bench`` (bench/realtime.py); the test only bounds it
loosely, as a guard against a leak of whole buffers per session.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect

from proxy.mock import MockHandle
from tests.conftest import CANARY_KEYS, SluiceFactory, upstream_env
from tests.procfs import status_kib

pytestmark = pytest.mark.timeout(300)
SESSIONS = 1000
AT_ONCE = 50  # handshakes in flight at a time


def open_files_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files limit in /proc")


def raise_own_limit(wanted: int) -> None:
    """This process holds both the clients' sockets and the mock's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.fail(f"the hard open-files limit ({hard}) is below the {wanted} sockets this test holds")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def test_a_thousand_idle_sessions_in_one_worker(
    mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    raise_own_limit(2 * SESSIONS + 512)
    sluice = sluice_factory(**upstream_env(mock), SLUICE_WORKERS="1")
    pid = sluice.proc.pid  # one worker: uvicorn serves in the process we started
    assert open_files_limit(pid) >= 2 * SESSIONS + 100, "Sluice cannot hold two sockets per session"
    url = sluice.url.replace("http://", "ws://") + "/v1/realtime?model=idle"
    gate = asyncio.Semaphore(AT_ONCE)
    rss_before = status_kib(pid, "VmRSS")

    async def open_one() -> ClientConnection:
        async with gate:
            ws = await connect(url, ping_interval=None, open_timeout=60)
            assert json.loads(await asyncio.wait_for(ws.recv(), 60))["type"] == "session.created"
            return ws

    sessions = await asyncio.gather(*(open_one() for _ in range(SESSIONS)))
    try:
        await asyncio.sleep(1.0)  # idle, then measured
        rss_held = status_kib(pid, "VmRSS")
        per_session = (rss_held - rss_before) / SESSIONS
        print(f"\n{SESSIONS} idle sessions: {per_session:.1f} KiB of Sluice's RSS each")
        assert len(os.listdir(f"/proc/{pid}/fd")) >= 2 * SESSIONS
        live = [r for r in mock.state.records if r.path.endswith("/realtime") and r.ended is None]
        assert len(live) == SESSIONS
        assert all(r.headers["authorization"] == f"Bearer {CANARY_KEYS['OPENAI_API_KEY']}" for r in live)
        assert per_session < 1024, f"{per_session:.0f} KiB per idle session"

        # Still alive after the wait: every session answers a round trip.
        async def round_trip(ws: ClientConnection) -> str:
            async with gate:
                await ws.send(
                    json.dumps({"type": "session.update", "session": {"instructions": "still here"}})
                )
                return str(json.loads(await asyncio.wait_for(ws.recv(), 60))["type"])

        assert set(await asyncio.gather(*(round_trip(ws) for ws in sessions))) == {"session.updated"}
    finally:

        async def close(ws: ClientConnection) -> int | None:
            async with gate:
                await ws.close()
                return ws.close_code

        codes = await asyncio.gather(*(close(ws) for ws in sessions))
    assert set(codes) == {1000}
    ids = [r.id for r in mock.state.records if r.path.endswith("/realtime")]
    ended = [await mock.state.wait_for_end(i, 60) for i in ids]
    assert len(ended) == SESSIONS
    assert {(r.outcome, r.close_code) for r in ended} == {("completed", 1000)}
