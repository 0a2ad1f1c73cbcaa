"""CPU accounting for one measurement window, and a wait for a quiet machine.

The proxy's CPU is what the scenarios divide by requests and chunks. Every
window also records how busy each core was and how much CPU went to processes
that are not the benchmark's ("foreign" CPU: a test suite someone runs on the
same machine, say), so a disturbed measurement is visible in the results
instead of silently skewing them.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from typing import Any

from . import procfs

# Every process the benchmark started (upstream, nginx master and worker, Sluice).
OUR_PIDS: set[int] = {os.getpid()}


def _ours() -> float:
    total = 0.0
    for pid in list(OUR_PIDS):
        try:
            total += procfs.cpu_seconds(pid)
        except OSError:
            OUR_PIDS.discard(pid)  # exited; its CPU no longer matters
    return total


class Meter:
    """Start at construction, read with :meth:`stop`."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.t0 = time.monotonic()
        self.cpu0 = procfs.cpu_seconds(pid) if pid else math.nan
        self.ours0 = _ours()
        self.cores0 = procfs.CoreTimes.now()

    def stop(self) -> dict[str, Any]:
        cores = procfs.CoreTimes.now()
        elapsed = time.monotonic() - self.t0
        busy = sum(cores.busy) - sum(self.cores0.busy)
        foreign = busy / procfs.TICKS_PER_SECOND - (_ours() - self.ours0)
        return {
            "proxy_cpu_s": procfs.cpu_seconds(self.pid) - self.cpu0 if self.pid else math.nan,
            "core_util": [round(u, 3) for u in cores.utilisation_since(self.cores0)],
            "foreign_cpu": round(max(foreign, 0.0) / max(elapsed, 1e-9), 3),  # cores' worth
            "steal": round(cores.steal_since(self.cores0) / max(elapsed, 1e-9), 3),
            "seconds": round(elapsed, 3),
        }


async def wait_quiet(max_wait: float = 3.0, threshold: float = 0.1, window: float = 0.25) -> float:
    """Wait (up to ``max_wait`` s) until foreign CPU drops under ``threshold`` of a core.

    Returns the foreign load of the last window looked at, for the record.
    """
    deadline = time.monotonic() + max_wait
    while True:
        m = Meter(None)
        await asyncio.sleep(window)
        foreign = float(m.stop()["foreign_cpu"])
        if foreign < threshold or time.monotonic() >= deadline:
            return foreign
