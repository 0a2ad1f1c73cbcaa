"""CPU cost of reading usage on the hot path: UsageTap vs no tap.

Feeds realistic 1000-token streams (one SSE event per chunk, as providers
flush them) through ``UsageTap`` and through a loop that only touches each
chunk, and prints the extra nanoseconds per event (median of several runs).

    .venv/bin/python bench/tap_overhead.py [--events 1000] [--runs 15]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.context import Usage
from proxy.mock import formats as fmt
from proxy.sse import SseScanner
from proxy.usage import Provider, UsageTap

SSE = b"text/event-stream; charset=utf-8"


def chunks(plan: fmt.StreamPlan) -> list[bytes]:
    return [*plan.head, *plan.tokens, *plan.tail]


def gzipped(frames: list[bytes]) -> list[bytes]:
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    out = [c.compress(f) + c.flush(zlib.Z_SYNC_FLUSH) for f in frames]
    out[-1] += c.flush()
    return out


def cases(n: int) -> dict[str, tuple[Provider, bytes | None, list[bytes]]]:
    r = fmt.Reply("gpt-4o-mini", fmt.mock_tokens(n), 1234, "bench1", 1700000000, include_usage=True)
    chat = chunks(fmt.chat_stream(r))
    return {
        "openai chat (include_usage)": ("openai", None, chat),
        "openai chat (no usage)": (
            "openai",
            None,
            chunks(fmt.chat_stream(replace(r, include_usage=False))),
        ),
        "openai responses": ("openai", None, chunks(fmt.responses_stream(r))),
        "anthropic messages": ("anthropic", None, chunks(fmt.anthropic_stream(r))),
        "gemini alt=sse": ("gemini", None, chunks(fmt.gemini_stream(r, True))),
        "openai chat, gzip": ("openai", b"gzip", gzipped(chat)),
    }


def bare(frames: list[bytes]) -> None:
    total = 0
    for chunk in frames:  # what the relay loop does with a chunk, minus the send
        total += len(chunk)


def scanned(frames: list[bytes]) -> None:
    scanner = SseScanner()
    for chunk in frames:
        scanner.feed(chunk)


def tapped(provider: Provider, encoding: bytes | None, frames: list[bytes]) -> Usage | None:
    tap = UsageTap(provider, SSE, encoding)
    total = 0
    for chunk in frames:
        total += len(chunk)
        tap.feed(chunk)
    return tap.finish()


def medians_ns(fns: list[Callable[[], object]], runs: int) -> list[float]:
    """Median wall time of each function; runs interleaved so noise hits all alike."""
    samples: list[list[int]] = [[] for _ in fns]
    gc.disable()
    try:
        for _ in range(runs):
            for fn, out in zip(fns, samples, strict=True):
                start = time.perf_counter_ns()
                fn()
                out.append(time.perf_counter_ns() - start)
    finally:
        gc.enable()
    return [statistics.median(s) for s in samples]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1000, help="token events per stream")
    parser.add_argument("--runs", type=int, default=31, help="runs per measurement (median taken)")
    args = parser.parse_args()

    print(f"ns per event, median of {args.runs} runs; 'scanner' is SseScanner alone on the same bytes")
    print(f"{'stream':<28} {'events':>6} {'KiB':>5} {'no tap':>7} {'scanner':>8} {'tap':>6} {'tap extra':>9}")
    for name, (provider, encoding, frames) in cases(args.events).items():
        usage = tapped(provider, encoding, frames)  # warm up, and check it reads the usage
        assert usage is not None or "no usage" in name, name
        fns: list[Callable[[], object]] = [
            partial(bare, frames),
            partial(scanned, frames),
            partial(tapped, provider, encoding, frames),
        ]
        n = len(frames)
        base, scan, tap = (t / n for t in medians_ns(fns, args.runs))
        scan_col = f"{scan:8.0f}" if encoding is None else f"{'-':>8}"  # compressed bytes: n/a
        kib = sum(map(len, frames)) / 1024
        print(f"{name:<28} {n:>6} {kib:>5.0f} {base:>7.0f} {scan_col} {tap:>6.0f} {tap - base:>9.0f}")


if __name__ == "__main__":
    main()
