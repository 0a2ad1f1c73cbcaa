"""Instructions to record one request's metrics, by way of recording them, under callgrind.

    .venv/bin/python -m bench.metrics_cost [--requests N]

What ``Metrics.request_started`` and ``request_ended`` do for one small
request with usage (in flight up and down, the request and key counters,
two histograms, two token counters), recorded five ways:

* ``sluice, one process``: Sluice's cells with no shared directory (each
  still stores its value, into a scratch double);
* ``sluice, shared files``: the same cells storing into the worker's file
  (what ``sluice serve`` runs). What the stores cost against the cells
  before there were any is the A/B of ``make bench-instructions``;
* ``prometheus_client, multiprocess``: its own metrics with
  ``PROMETHEUS_MULTIPROC_DIR`` set, ``.labels(...)`` on each call, as its
  documentation writes them;
* ``prometheus_client, children kept``: the same, the labelled children
  looked up once and kept (its best case);
* the same two with ``prometheus_client`` in one process (no files), for
  scale.

Each runs in its own process under valgrind's callgrind, twice (no requests,
then N), and the difference over N is the figure: start-up cancels out.
Sluice's modules run compiled when built (``make native``), as in
production. Results and what they decided: bench/README.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_SLUICE = """
import sys, time
from pathlib import Path
from proxy.context import RequestContext, Usage
from proxy.metrics import Metrics
m = Metrics(Path(sys.argv[2]) if sys.argv[2] != "-" else None)
ctx = RequestContext("id", "POST", "/v1/chat/completions")
ctx.provider, ctx.status, ctx.key_name, ctx.ttfb = "openai", 200, "team", 0.003
ctx.usage = Usage(12, 30)
for _ in range(int(sys.argv[1])):
    label = m.request_started(ctx)
    m.request_ended(ctx, ctx.started + 0.004, label)
"""

_CLIENT = """
import os, sys
if sys.argv[2] != "-":
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[2]
from prometheus_client import Counter, Gauge, Histogram
B = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
requests = Counter("sluice_requests", "h", ("provider", "status", "outcome"))
keys = Counter("sluice_key_requests", "h", ("key", "outcome"))
tokens = Counter("sluice_tokens", "h", ("provider", "key", "direction"))
in_flight = Gauge("sluice_in_flight_requests", "h", ("provider",), multiprocess_mode="livesum")
ttfb = Histogram("sluice_time_to_first_byte_seconds", "h", ("provider",), buckets=B)
duration = Histogram("sluice_request_duration_seconds", "h", ("provider",), buckets=B)
n, kept = int(sys.argv[1]), sys.argv[3] == "kept"
if kept:
    f, r = in_flight.labels("openai"), requests.labels("openai", "200", "ok")
    k, d, t = keys.labels("team", "ok"), duration.labels("openai"), ttfb.labels("openai")
    ti, to = tokens.labels("openai", "team", "input"), tokens.labels("openai", "team", "output")
    for _ in range(n):
        f.inc(); f.dec(); r.inc(); k.inc(); d.observe(0.004); t.observe(0.003); ti.inc(12); to.inc(30)
else:
    for _ in range(n):
        in_flight.labels("openai").inc()
        in_flight.labels("openai").dec()
        requests.labels("openai", "200", "ok").inc()
        keys.labels("team", "ok").inc()
        duration.labels("openai").observe(0.004)
        ttfb.labels("openai").observe(0.003)
        tokens.labels("openai", "team", "input").inc(12)
        tokens.labels("openai", "team", "output").inc(30)
"""

VARIANTS = {
    "sluice, one process": (_SLUICE, False, ""),
    "sluice, shared files": (_SLUICE, True, ""),
    "prometheus_client, one process": (_CLIENT, False, "labels"),
    "prometheus_client, multiprocess": (_CLIENT, True, "labels"),
    "prometheus_client, children kept": (_CLIENT, True, "kept"),
}


def _instructions(code: str, requests: int, shared: bool, extra: str, workdir: Path) -> int:
    directory = tempfile.mkdtemp(dir=workdir) if shared else "-"
    out = workdir / f"callgrind.{requests}.{len(list(workdir.iterdir()))}"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
    argv += ["-c", code, str(requests), directory, extra]
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)  # noqa: S603 - our own argv
    for line in out.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sluice-metrics-cost-") as tmp:
        for name, (code, shared, extra) in VARIANTS.items():
            base = _instructions(code, 0, shared, extra, Path(tmp))
            full = _instructions(code, args.requests, shared, extra, Path(tmp))
            print(f"{(full - base) / args.requests / 1000:7.2f} k instructions/request  {name}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
