"""Instructions per request, counted by callgrind: an A/B that machine noise cannot move.

    .venv/bin/python -m bench.instructions [--chain [--budget off|layer|on]] [--otlp] [--env NAME=VALUE]
                                           [--requests N] [--connections C] [--keep DIR] [TREE ...]

Wall-clock and CPU-time figures on a shared 2-core VM swing by 30 % between
runs, which hides any change smaller than that. Counting the instructions
Sluice executes per small JSON request (under valgrind's callgrind, after a
warm-up, on one keep-alive connection) repeats to within about 0.5 %, so a change of
a few percent shows. Each TREE is a Sluice checkout (default: this one), e.g.
a ``git worktree`` of the commit to compare against. ``make bench-instructions``.
``--keep DIR`` keeps the dumps: ``callgrind_annotate --inclusive=yes`` on one
names the functions the instructions went to.

``--connections C`` sends the requests on C connections at once (C threads,
outside valgrind), so C requests are in flight together, as under load: the
garbage collector then has more live objects to scan, for one. The default,
one connection, repeats best.

``--otlp`` turns tracing on (``OTEL_EXPORTER_OTLP_ENDPOINT``) towards a sink
on loopback that answers every export with 200: the count then includes the
spans' making and, in the SDK's export thread, their encoding and sending
(in batches of 512, the SDK's default, or every 5 s). ``--env NAME=VALUE``
(repeatable) adds a variable to Sluice's environment, e.g. a sampler.
``--budget`` (with ``--chain``): ``on`` gives the bench key a budget it never
reaches (checked on every request), ``layer`` (the default) runs the default
chain with a key without one (every request still priced), ``off`` runs the
chain before budgets (``access_log, auth, rate_limit``, set in SLUICE_CONFIG).
``--include-usage`` sets ``SLUICE_OPENAI_INCLUDE_USAGE=true`` (every OpenAI chat
body read to ask streams for usage, as a budgeted key's always are).

What it counts is work, not time: a cache-friendly change can be faster than
its instruction count says, and a system call counts as one instruction.

Each line also names the instructions the metrics took per request
(``Metrics.request_started`` and ``request_ended``, inclusive: the dict
updates, and the slots written to the worker's shared file), read from the
dump by ``callgrind_annotate``; only a compiled build has those functions
by name, so an interpreted one says ``n/a``.
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from . import paths
from .scenarios import REQUEST_BODY


def _requests(port: int, key: str, count: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    for _ in range(count):
        conn.request("POST", "/v1/chat/completions?mode=json", REQUEST_BODY, headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"Sluice answered {response.status}")
    conn.close()


def _concurrently(port: int, key: str, count: int, connections: int) -> None:
    """``count`` requests over ``connections`` connections at once (the remainder on the first)."""
    share, rest = divmod(count, connections)
    with ThreadPoolExecutor(connections) as pool:
        shares = [share + (rest if i == 0 else 0) for i in range(connections)]
        futures = [pool.submit(_requests, port, key, n) for n in shares]
        for future in futures:
            future.result()


class _Sink(BaseHTTPRequestHandler):
    """Accepts an OTLP export and answers 200 with an empty response (valid protobuf)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def start_otlp_sink() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _callgrind_control(option: str, pid: int) -> None:
    tool = shutil.which("callgrind_control") or "callgrind_control"
    subprocess.run([tool, option, str(pid)], check=True, capture_output=True)  # noqa: S603 - our own argv


def _total(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


# The compiled functions that record a request's metrics (mypyc's C names).
METRICS_FUNCTIONS = re.compile(r"CPyDef_metrics___Metrics___request_(started|ended)\b")


def metrics_share(dump: Path) -> int | None:
    """Instructions spent recording metrics in ``dump`` (inclusive), or None when not compiled."""
    tool = shutil.which("callgrind_annotate") or "callgrind_annotate"
    argv = [tool, "--inclusive=yes", "--auto=no", "--threshold=100", str(dump)]
    # Run beside the dump, away from any source tree: where it can open a
    # relative source path, callgrind_annotate lists that function twice.
    report = subprocess.run(  # noqa: S603 - our own argv
        argv, cwd=dump.parent, check=True, capture_output=True, text=True
    ).stdout
    found = [
        int(line.split()[0].replace(",", ""))
        for line in report.splitlines()
        if METRICS_FUNCTIONS.search(line) and line.strip()[:1].isdigit()
    ]
    return sum(found) if found else None


def count(
    tree: Path,
    upstream_port: int,
    workdir: Path,
    chain: bool,
    requests: int,
    connections: int = 1,
    otlp: str | None = None,
    extra_env: dict[str, str] | None = None,
    budget: str = "layer",
    include_usage: bool = False,
) -> tuple[float, float | None]:
    """Instructions Sluice (from ``tree``) executes per request, and those of its metrics, per request."""
    keys = workdir / "keys.toml" if chain else None
    key = paths.create_bench_key(keys) if keys is not None else "no-key-needed"
    env = paths.sluice_env(upstream_port, str(workdir / "access.log") if chain else "off", keys)
    if include_usage:
        env["SLUICE_OPENAI_INCLUDE_USAGE"] = "true"
    if keys is not None and budget == "on":
        paths.give_bench_key_a_budget(keys)
    if keys is not None and budget == "off":
        config = workdir / "sluice.toml"
        config.write_text(paths.CHAIN_WITHOUT_BUDGET)
        env["SLUICE_CONFIG"] = str(config)
    env["PYTHONPATH"] = str(tree)  # `-m proxy` then runs that tree's code
    env["PYTHONHASHSEED"] = "0"  # the same dict and set layouts in every run
    if otlp is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp
    env.update(extra_env or {})
    env_file = workdir / "empty.env"
    env_file.write_text("")
    out = workdir / "callgrind.out"
    port = paths.free_port()
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
    argv += ["-m", "proxy", "serve", "--host", "127.0.0.1", "--port", str(port), "--env-file", str(env_file)]
    with (workdir / "valgrind.log").open("wb") as log:
        proc = subprocess.Popen(argv, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        paths._wait_http(port, "/healthz", timeout=300)  # start-up under valgrind is slow
        # Warm: imports, caches, the upstream connections.
        _concurrently(port, key, 100 * connections, connections)
        _callgrind_control("-z", proc.pid)  # zero the counters
        _concurrently(port, key, requests, connections)
        _callgrind_control("-d", proc.pid)  # dump them
    finally:
        proc.terminate()
        proc.wait(60)
    dump = _latest_dump(workdir)
    metrics = metrics_share(dump)
    return _total(dump) / requests, None if metrics is None else metrics / requests


def _latest_dump(workdir: Path) -> Path:
    return max(workdir.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("trees", nargs="*", type=Path, default=[Path(__file__).resolve().parents[1]])
    parser.add_argument("--chain", action="store_true", help="keys, rate limits and the access log on")
    parser.add_argument(
        "--budget", choices=["off", "layer", "on"], default="layer", help="with --chain: see above"
    )
    parser.add_argument("--include-usage", action="store_true", help="SLUICE_OPENAI_INCLUDE_USAGE=true")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--connections", type=int, default=1, help="connections sending at once")
    parser.add_argument("--otlp", action="store_true", help="tracing on, exporting to a sink")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="for Sluice")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="copy the callgrind dumps here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sluice-icount-") as tmp:
        upstream = paths.start_upstream(Path(tmp))
        sink = start_otlp_sink() if args.otlp else None
        otlp = f"http://127.0.0.1:{sink.server_address[1]}" if sink is not None else None
        try:
            for i, tree in enumerate(args.trees):
                workdir = Path(tmp) / f"tree{i}"
                workdir.mkdir()
                per_request, metrics = count(
                    tree.resolve(),
                    upstream.port,
                    workdir,
                    args.chain,
                    args.requests,
                    args.connections,
                    otlp,
                    dict(pair.split("=", 1) for pair in args.env),
                    args.budget,
                    args.include_usage,
                )
                if args.keep is not None:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    name = f"callgrind.tree{i}.chain" if args.chain else f"callgrind.tree{i}"
                    shutil.copy(_latest_dump(workdir), args.keep / name)
                shown = "n/a" if metrics is None else f"{metrics / 1000:.1f} k"
                print(
                    f"{per_request / 1000:9.1f} k instructions/request (metrics {shown})  {tree}", flush=True
                )
        finally:
            upstream.stop()
            if sink is not None:
                sink.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
