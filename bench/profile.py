"""Where Sluice spends its CPU under scenario 2's load: py-spy, a flame graph, the top frames.

py-spy samples the running Sluice process from outside. It runs on the
harness core, so it competes with the load generator, not with Sluice; the
profile is taken after the measured scenarios, so it disturbs none of them.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from .loadgen import Pool, Req, poisson, run_schedule
from .paths import HARNESS_CORE, Target, taskset

HOST = "127.0.0.1"


def py_spy_binary() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def _record(binary: str, pid: int, seconds: float, fmt: str, out: Path) -> None:
    argv = [binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250"]
    # Blocking mode (py-spy pauses Sluice for each sample, some tens of µs at
    # 250 Hz): consistent stacks matter more here than Sluice's speed while profiled.
    argv += ["--function", "--format", fmt, "--output", str(out)]
    proc = await asyncio.create_subprocess_exec(
        *taskset(HARNESS_CORE, argv), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")


LOOP_FRAME = "Runner.run (asyncio/runners.py"
LOOP_LABEL = "event loop itself: uvloop's native code (epoll, socket reads and writes, callbacks)"


def _package(frame: str) -> str:
    """``send (aiohttp/client.py:12)`` → ``aiohttp``; Sluice's own modules by name (``proxy/gate``)."""
    if frame.startswith(LOOP_FRAME):
        return "event loop (uvloop, native)"
    where = frame.rpartition("(")[2]
    parts = where.split("/")
    if parts[0] == "proxy":
        return "proxy/" + parts[-1].split(".")[0] if len(parts) == 2 else "proxy/" + parts[1]
    return parts[0] if len(parts) > 1 else where.split(":")[0].removesuffix(".py")


def top_frames(collapsed: str, n: int = 12) -> dict[str, Any]:
    """Shares of samples from py-spy's collapsed stacks: by leaf frame, by package, and Sluice's own frames.

    py-spy sees Python frames only, so time in uvloop's C code lands on the
    frame that entered it (``Runner.run``): that is the event loop's share.
    """
    own: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        leaf = LOOP_LABEL if frames[-1].startswith(LOOP_FRAME) else frames[-1]
        own[leaf] += count
        by_package[_package(frames[-1])] += count
        for frame in {f for f in frames if "(proxy/" in f and "proxy/cli.py" not in f}:
            if "proxy/__main__" not in frame and "proxy/server.py" not in frame:
                ours[frame] += count

    def share(c: Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100 * v / max(total, 1), 1)) for f, v in c.most_common(n)]

    return {
        "samples": total,
        "self": share(own),
        "by_package": share(by_package),
        "sluice_inclusive": share(ours),
    }


async def profile(
    target: Target, wire: bytes, rate: float, out_dir: Path, seconds: float = 5.0
) -> dict[str, Any]:
    """Load ``target`` at ``rate`` req/s (Poisson) while py-spy records it twice (SVG, then raw stacks)."""
    binary = py_spy_binary()
    if binary is None or target.pid is None:
        return {"skipped": "py-spy is not installed (make bench installs it with the bench extras)"}
    pool = Pool(HOST, target.port, 2048)
    await pool.fill(32)
    total = 2 * seconds + 3
    load = asyncio.ensure_future(run_schedule(pool, poisson(rate, total, 7), lambda t: Req(wire, t)))
    svg, raw = out_dir / "sluice-throughput-flame.svg", out_dir / "sluice-throughput-stacks.txt"
    try:
        await asyncio.sleep(1.0)
        await _record(binary, target.pid, seconds, "flamegraph", svg)
        await _record(binary, target.pid, seconds, "raw", raw)
    finally:
        reqs = await load
        await pool.drain(10)
        pool.close()
    frames = top_frames(raw.read_text())
    return {
        "rate": rate,
        "seconds": seconds,
        "requests": len(reqs),
        "errors": sum(1 for r in reqs if not r.ok),
        "flame_graph": svg.name,
        "stacks": raw.name,
        **frames,
    }
