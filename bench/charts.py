"""PNG charts of the raw results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

from .summary import PATHS

COLOURS = {
    "direct": "#555555",
    "nginx": "#2a9d8f",
    "sluice": "#e76f51",
    "sluice-stock": "#e9a23b",
    "sluice@baseline": "#3a6ea5",
    "sluice+chain": "#8d5fd3",
}


def _cdf(ax: Axes, samples_by_path: dict[str, np.ndarray], xlabel: str, log: bool = True) -> None:
    for p in PATHS:
        data = samples_by_path.get(p)
        if data is None or data.size == 0:
            continue
        xs = np.sort(data)
        ys = np.arange(1, xs.size + 1) / xs.size
        ax.plot(xs, ys, label=f"{p} (n={xs.size:,})", color=COLOURS[p], linewidth=1.4)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction ≤ x")
    ax.axhline(0.99, color="#bbbbbb", linewidth=0.8, linestyle=":")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="lower right")


def _pooled(rounds: dict[str, list[dict[str, Any]]], key: str) -> dict[str, np.ndarray]:
    """All rounds' samples (stored in µs) per path, in ms."""
    return {
        p: np.asarray([x for r in rs for x in r.get(key, [])], dtype=float) / 1e3 for p, rs in rounds.items()
    }


def latency_c1(rounds: dict[str, list[dict[str, Any]]], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    _cdf(ax, _pooled(rounds, "samples_us"), "latency from scheduled send (ms, log scale)")
    ax.set_title("Scenario 1: small JSON at concurrency 1 (CDF, all rounds)")
    return _save(fig, out / "latency_c1.png")


def streaming(rounds: dict[str, list[dict[str, Any]]], out: Path) -> Path:
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    _cdf(a, _pooled(rounds, "ttfb_us"), "time to first event (ms, log scale)")
    a.set_title("Scenario 3: time to first event")
    gaps = _pooled(rounds, "gap_us")
    _cdf(b, gaps, "inter-chunk gap (ms)", log=False)
    hi = max((float(np.percentile(g, 99.9)) for g in gaps.values() if g.size), default=40.0)
    b.set_xlim(0, hi * 1.05)
    b.set_title("Scenario 3: inter-chunk gaps (paced at 20 ms)")
    return _save(fig, out / "streaming.png")


def throughput(rounds: dict[str, list[dict[str, Any]]], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for p in PATHS:
        steps = [s for r in rounds.get(p, []) for s in r.get("steps", [])]
        if not steps:
            continue
        ax.scatter(
            [s["rate"] for s in steps], [max(s["p99"], 0.01) for s in steps], label=p, color=COLOURS[p], s=18
        )
    ax.axhline(50, color="#cc0000", linewidth=0.8, linestyle="--", label="50 ms limit")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate, Poisson arrivals (req/s, log)")
    ax.set_ylabel("p99 latency (ms, log)")
    ax.set_title("Scenario 2: p99 at each open-loop step, all rounds")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    return _save(fig, out / "throughput.png")


def sweep(levels_by_path: dict[str, dict[str, list[dict[str, Any]]]], interval_ms: float, out: Path) -> Path:
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for p in PATHS:
        lv = levels_by_path.get(p)
        if not lv:
            continue
        levels = sorted(int(k) for k in lv)
        p99 = [np.median([r["gap"].get("p99", np.nan) for r in lv[str(n)]]) for n in levels]
        a.plot(levels, p99, marker="o", label=p, color=COLOURS[p])
        if p != "direct":
            cpu = [_median([r["cpu_us_per_chunk"] for r in lv[str(n)]]) for n in levels]
            shown = [(n, c) for n, c in zip(levels, cpu, strict=True) if c > 0]  # NaN: below /proc resolution
            b.plot([n for n, _ in shown], [c for _, c in shown], marker="o", label=p, color=COLOURS[p])
    a.axhline(interval_ms, color="#bbbbbb", linestyle=":", label=f"pacing ({interval_ms:g} ms)")
    for ax in (a, b):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("concurrent streams (log)")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8)
    a.set_ylabel("inter-chunk gap p99 (ms, log)")
    a.set_title("Scenario 4: p99 inter-chunk gap vs streams")
    b.set_ylabel("proxy CPU per chunk (µs, log)")
    b.set_title("Scenario 4: CPU per chunk vs streams")
    return _save(fig, out / "sweep.png")


def memory(mem: dict[str, Any], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    paths = [p for p in PATHS if isinstance(mem.get(p), dict)]
    vals = [mem[p]["kib_per_stream"] for p in paths]
    ax.bar(paths, vals, color=[COLOURS[p] for p in paths])
    ax.axhline(50, color="#cc0000", linewidth=0.8, linestyle="--", label="target: 50 KiB")
    for i, v in enumerate(vals):
        ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("RSS growth per open stream (KiB)")
    ax.set_title(f"Scenario 5: {mem.get('held_target', 0):,} idle open streams")
    ax.legend(fontsize=8)
    return _save(fig, out / "memory.png")


def _median(values: list[float]) -> float:
    """NaN-tolerant median (NaN: a window with too little CPU to measure)."""
    vals = [v for v in values if v == v]
    return float(np.median(vals)) if vals else float("nan")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_all(raw: dict[str, Any], interval_ms: float, out: Path) -> list[Path]:
    written = []
    if "latency_c1" in raw:
        written.append(latency_c1(raw["latency_c1"], out))
    if "throughput" in raw:
        written.append(throughput(raw["throughput"], out))
    if "streaming" in raw:
        written.append(streaming(raw["streaming"], out))
    if "sweep" in raw:
        written.append(sweep(raw["sweep"], interval_ms, out))
    if "memory" in raw:
        written.append(memory(raw["memory"], out))
    return written
