"""What the benchmark reads from /proc: a process's CPU time and memory, and each core's load."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` so far (resolution: one clock tick, usually 10 ms)."""
    # The command name may contain spaces or parentheses; the fields start after the last ')'.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass(frozen=True)
class CoreTimes:
    """Cumulative busy, stolen and total ticks per core, from /proc/stat.

    Busy excludes steal (the hypervisor running someone else's virtual CPU),
    which is kept apart: it is time no process on this machine got.
    """

    busy: tuple[int, ...]
    steal: tuple[int, ...]
    total: tuple[int, ...]

    @classmethod
    def now(cls) -> CoreTimes:
        busy, steal, total = [], [], []
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu") and line[3].isdigit():
                # user nice system idle iowait irq softirq steal
                v = [int(x) for x in line.split()[1:9]]
                busy.append(v[0] + v[1] + v[2] + v[5] + v[6])
                steal.append(v[7])
                total.append(sum(v))
        return cls(tuple(busy), tuple(steal), tuple(total))

    def utilisation_since(self, earlier: CoreTimes) -> list[float]:
        """Fraction of each core busy between ``earlier`` and this snapshot."""
        return [
            (b - b0) / max(t - t0, 1)
            for b, b0, t, t0 in zip(self.busy, earlier.busy, self.total, earlier.total, strict=True)
        ]

    def steal_since(self, earlier: CoreTimes) -> float:
        """Seconds of CPU the hypervisor withheld, summed over cores."""
        return (sum(self.steal) - sum(earlier.steal)) / TICKS_PER_SECOND
