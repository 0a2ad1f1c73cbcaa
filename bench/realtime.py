"""Scenario 6: realtime WebSocket sessions through direct, nginx and Sluice.

* **Round trips.** One session a path, all open at once; the generator sends
  one text frame and waits for it to come back, path after path (direct,
  nginx, Sluice, direct, …; the first path turns each round), so the proxies,
  which share a core, never overlap. The frame is what a client streams most:
  an OpenAI ``input_audio_buffer.append`` of 20 ms of 24 kHz PCM16 audio
  (1.3 KB of JSON). p50/p99 per path; what a proxy adds is its figure minus
  direct's, within the round. Every echo is compared with what was sent.
* **Idle sessions.** nginx and Sluice each hold ``plan.realtime_idle``
  sessions (one echo round trip each, so both legs are up), then sit idle; the
  RSS growth of the proxy's process divided by the sessions is a session's
  memory.

The upstream is an echo server (this module run as ``python -m
bench.realtime --port 0``; the ``websockets`` library on uvloop, on the
harness core): every message comes back unchanged, on any path. Sluice and
nginx run on the proxy core as in the other scenarios, started afresh for
this one (nginx with the WebSocket upgrade headers, Sluice with
``SLUICE_OPENAI_UPSTREAM`` pointing at the echo server).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from . import paths, procfs
from .meter import Meter
from .paths import Target
from .stats import summary

# 20 ms of 24 kHz 16-bit mono audio, as the Realtime API's clients append it.
FRAME = json.dumps(
    {"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(range(240)) * 4).decode()}
)
PATH = "/v1/realtime?model=bench-realtime"
_OPTIONS: dict[str, Any] = {"compression": None, "max_size": None, "ping_interval": None, "open_timeout": 30}


def ws_url(target: Target) -> str:
    return f"ws://127.0.0.1:{target.port}{PATH}"


def start_echo(workdir: Path) -> Target:
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "echo.log"
    argv = paths.taskset(paths.HARNESS_CORE, [sys.executable, "-m", "bench.realtime", "--port", "0"])
    proc = paths._spawn(argv, log, cwd=paths.REPO)
    port = int(paths._wait_for_line(log, "echo listening on", proc, 10).split()[-1])
    return Target("echo", port, proc.pid, [proc], lambda: paths._terminate(proc))


async def round_trips(targets: Sequence[Target], frames: int) -> dict[str, Any]:
    """One window: ``frames`` round trips a path on one session each, interleaved."""
    sessions = [await connect(ws_url(t), **_OPTIONS) for t in targets]
    try:
        for ws in sessions:  # warm: the first frames of a session pay for its buffers
            for _ in range(50):
                await ws.send(FRAME)
                await ws.recv()
        samples: list[list[float]] = [[] for _ in targets]
        bad = [0] * len(targets)
        meters = [Meter(t.pid) for t in targets]
        for _ in range(frames):
            for i, ws in enumerate(sessions):
                start = time.perf_counter()
                await ws.send(FRAME)
                echoed = await ws.recv()
                samples[i].append(time.perf_counter() - start)
                bad[i] += echoed != FRAME
        windows = [m.stop() for m in meters]
    finally:
        for ws in sessions:
            await ws.close()
    out: dict[str, dict[str, Any]] = {}
    for t, lat, mismatches, window in zip(targets, samples, bad, windows, strict=True):
        out[t.name] = {
            **summary(lat, 1e3),
            **window,
            "frames": len(lat),
            "mismatches": mismatches,
            "cpu_us_per_frame": window["proxy_cpu_s"] / len(lat) * 1e6,
        }
    return {"paths": out, "foreign_cpu": max(float(r["foreign_cpu"]) for r in out.values())}


async def idle_sessions(target: Target, sessions: int, at_once: int = 100) -> dict[str, Any]:
    """RSS growth of ``target``'s proxy process while it holds ``sessions`` idle sessions."""
    assert target.pid is not None
    gc.collect()
    await asyncio.sleep(0.5)
    rss0, fds0 = procfs.rss_kib(target.pid), procfs.open_fds(target.pid)
    gate = asyncio.Semaphore(at_once)
    failures: list[str] = []

    async def open_one() -> ClientConnection | None:
        async with gate:
            try:
                ws = await connect(ws_url(target), **_OPTIONS)
                await ws.send(FRAME)  # both legs up: the echo comes from the upstream
                if await asyncio.wait_for(ws.recv(), 30) != FRAME:
                    failures.append("echo differs")
                return ws
            except Exception as exc:  # counted and reported, not raised
                failures.append(type(exc).__name__)
                return None

    started = time.monotonic()
    opened = [ws for ws in await asyncio.gather(*(open_one() for _ in range(sessions))) if ws is not None]
    open_seconds = time.monotonic() - started
    await asyncio.sleep(1.0)  # let allocations settle
    rss1, fds1 = procfs.rss_kib(target.pid), procfs.open_fds(target.pid)

    async def close(ws: ClientConnection) -> int | None:
        async with gate:
            await ws.close()
            return ws.close_code

    codes = await asyncio.gather(*(close(ws) for ws in opened))
    await asyncio.sleep(1.0)
    return {
        "requested": sessions,
        "held": len(opened),
        "failed": len(failures),
        "failures": sorted(set(failures))[:5],
        "clean_closes": sum(code == 1000 for code in codes),
        "open_seconds": round(open_seconds, 2),
        "rss_before_kib": rss0,
        "rss_held_kib": rss1,
        "rss_after_close_kib": procfs.rss_kib(target.pid),
        "fds_before": fds0,
        "fds_held": fds1,
        "kib_per_session": (rss1 - rss0) / len(opened) if opened else float("nan"),
    }


# ---------------------------------------------------------------- the upstream
async def _echo_main(port: int) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", port, compression=None, max_size=None, ping_interval=None) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        print(f"echo listening on {bound}", flush=True)
        await asyncio.Future()


def main() -> None:
    parser = argparse.ArgumentParser(description="the realtime scenario's echo upstream")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    uvloop.run(_echo_main(args.port))


if __name__ == "__main__":
    main()
