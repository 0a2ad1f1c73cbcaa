"""Starting and stopping what the benchmark compares: the upstream, nginx and Sluice.

Every process runs on loopback, started under ``taskset``: the proxy under
test on one core (``PROXY_CORE``), the upstream and the load generator on the
other (``HARNESS_CORE``), so a proxy never competes with its own load.

Paths:

* ``direct``: the generator talks to the upstream itself (the baseline, and
  the harness's own ceiling);
* ``nginx``: one worker, ``proxy_buffering off``, HTTP/1.1 keep-alive to the
  upstream, no access log (like plain Sluice);
* ``sluice``: one worker, no client keys, ``SLUICE_ACCESS_LOG=off``;
* ``sluice+chain``: the full default chain: a keys file (so ``auth`` checks
  every request), a key whose rpm and concurrency limits are far too high to
  trigger (so ``rate_limit`` counts every request, in memory) and the access
  log written to a file;
* ``sluice-stock``: like ``sluice``, with ``SLUICE_HTTP=stock`` (uvicorn's
  own httptools protocol and aiohttp's client instead of Sluice's own): the
  price of the fallback;
* ``sluice@baseline`` (only with ``--baseline-tree DIR``): like ``sluice``,
  the same environment, but the code of another Sluice checkout DIR (say a
  ``git worktree`` of an older commit, built in place), run by this venv's
  Python with ``cwd`` and ``PYTHONPATH`` set to DIR.

``sluice`` and ``sluice+chain`` set ``SLUICE_HTTP=fast`` (the default) and
``sluice@baseline`` gets the very same environment (a tree from before the
setting ignores it). Every Sluice path runs with
``SLUICE_HEARTBEAT_INTERVAL=0``: nginx sends no heartbeats, and the idle
streams of the memory scenario would otherwise get one every 15 s.

A Sluice of this tree must name in its banner the transport it was asked
for; that it runs interpreted (a stale build) is only warned about
(``run.py``), as before. The baseline's process must say in its banner that
it runs compiled, and its memory map must show the compiled modules of its
own tree and none of another's: a baseline that silently ran this
checkout's code, or ran interpreted, would compare nothing.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import procfs
from .meter import OUR_PIDS

REPO = Path(__file__).resolve().parents[1]  # the Sluice checkout the bench belongs to

PROXY_CORE = 0
HARNESS_CORE = 1 if (os.cpu_count() or 1) >= 2 else 0

UPSTREAM_KEY = "bench-upstream-key"  # what Sluice sends upstream; the upstream ignores it


@dataclass
class Target:
    """One path under test: where to send requests and which process does the proxying."""

    name: str
    port: int
    pid: int | None  # the process whose CPU and RSS are measured (None: direct)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    stopper: Callable[[], None] | None = None
    modules: list[str] = field(default_factory=list)  # sluice@baseline: its compiled modules, as mapped

    def stop(self) -> None:
        if self.stopper is not None:
            self.stopper()
            self.stopper = None


def taskset(core: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv]


def _die_with_parent() -> None:
    """Runs in the child before exec: if the benchmark dies, its servers follow (PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _spawn(argv: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own argv, no shell
            argv, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, **kwargs
        )
    OUR_PIDS.add(proc.pid)
    return proc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _terminate(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_line(path: Path, prefix: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith(prefix):
                    return line
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{path.read_text()[-2000:]}")
        time.sleep(0.02)
    raise RuntimeError(f"{proc.args!r} did not print {prefix!r} within {timeout}s")


def _wait_http(port: int, path: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status < 500:
                conn.close()
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered on port {port} within {timeout}s")


def start_upstream(workdir: Path) -> Target:
    log = workdir / "upstream.log"
    argv = taskset(HARNESS_CORE, [sys.executable, "-m", "bench.upstream", "--port", "0"])
    proc = _spawn(argv, log, cwd=Path(__file__).resolve().parents[1])
    port = int(_wait_for_line(log, "upstream listening on", proc, 10).split()[-1])
    return Target("upstream", port, proc.pid, [proc], lambda: _terminate(proc))


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        raise RuntimeError("nginx is not installed (make bench installs it through `make system-deps`)")
    return found


# worker_connections counts both sides of a proxied stream. It is set well
# above the open-files limit (which caps the sockets actually open) because
# nginx starts closing idle keep-alive connections once fewer than 1/16 of
# its connection slots are free ("worker_connections are not enough, reusing
# connections"), which would cut the memory scenario's waiting clients.
_NGINX_CONF = """
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections {conns}; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    # Steady-state keep-alive on both sides: the defaults (1,000 requests per
    # connection) would add reconnects that Sluice and the generator never make.
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    # WebSocket upgrades (scenario 6) pass on; plain HTTP keeps an empty Connection (keep-alive).
    map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
    upstream provider {{
        server 127.0.0.1:{upstream};
        keepalive 256;
        keepalive_requests 10000000;
        keepalive_timeout 120s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://provider;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def start_nginx(workdir: Path, upstream_port: int) -> Target:
    import resource

    prefix = workdir / "nginx"
    prefix.mkdir(parents=True, exist_ok=True)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(
        _NGINX_CONF.format(dir=prefix, nofile=nofile, conns=2 * nofile, upstream=upstream_port, port=port)
    )
    proc = _spawn(
        taskset(PROXY_CORE, [nginx_binary(), "-p", str(prefix), "-c", str(conf)]), prefix / "out.log"
    )
    _wait_http(port, "/v1/chat/completions?mode=json")
    workers = procfs.children(proc.pid)
    if len(workers) != 1:
        raise RuntimeError(f"expected one nginx worker, found {workers}")
    OUR_PIDS.add(workers[0])
    return Target("nginx", port, workers[0], [proc], lambda: _terminate(proc, signal.SIGQUIT))


def sluice_env(upstream_port: int, access_log: str, keys_file: Path | None) -> dict[str, str]:
    """A clean environment: nothing from the developer's shell or a stray .env leaks in."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    env.update(
        OPENAI_API_KEY=UPSTREAM_KEY,
        SLUICE_OPENAI_UPSTREAM=f"http://127.0.0.1:{upstream_port}",
        SLUICE_ACCESS_LOG=access_log,
        SLUICE_HEARTBEAT_INTERVAL="0",
        SLUICE_DRAIN_TIMEOUT="1",
        SLUICE_LOG_LEVEL="warning",
    )
    if keys_file is not None:
        env["SLUICE_KEYS_FILE"] = str(keys_file)
    return env


def create_bench_key(path: Path) -> str:
    """A client key whose limits exist (so they are counted) but never trigger."""
    from proxy.keybook import create_key
    from proxy.limits import Limits

    return create_key(path, "bench", Limits(rpm=1_000_000_000, concurrency=1_000_000))


def start_sluice(
    workdir: Path,
    upstream_port: int,
    keys_file: Path | None = None,
    *,
    transport: str = "fast",
    tree: Path | None = None,
) -> Target:
    """One Sluice worker on the proxy core: ``keys_file`` makes it ``sluice+chain``,
    ``transport="stock"`` ``sluice-stock``, ``tree`` (another checkout) ``sluice@baseline``."""
    if tree is not None:
        name = "sluice@baseline"
    elif transport == "stock":
        name = "sluice-stock"
    elif keys_file is not None:
        name = "sluice+chain"
    else:
        name = "sluice"
    home = workdir / name.replace("+", "_").replace("@", "_")
    home.mkdir(parents=True, exist_ok=True)
    env_file = home / "empty.env"
    env_file.write_text("")
    access_log = str(home / "access.log") if keys_file is not None else "off"
    log = home / "stdout.log"
    argv = [sys.executable, "-m", "proxy", "serve", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--env-file", str(env_file)]
    env = sluice_env(upstream_port, access_log, keys_file)
    env["SLUICE_HTTP"] = transport
    if tree is not None:
        # `-m proxy` imports from the working directory first; PYTHONPATH says the same for
        # anything the process starts. This venv's editable install of REPO comes after both.
        env["PYTHONPATH"] = str(tree)
    proc = _spawn(taskset(PROXY_CORE, argv), log, cwd=tree if tree is not None else home, env=env)
    line = _wait_for_line(log, "Sluice listening on", proc, 20)
    port = int(line.split("http://", 1)[1].split()[0].rsplit(":", 1)[1])
    _wait_http(port, "/healthz")
    # `taskset` execs, so this is the uvicorn process itself (one worker, no supervisor).
    target = Target(name, port, proc.pid, [proc], lambda: _terminate(proc, signal.SIGTERM, 10))
    try:
        _check_banner(name, line, transport, tree)
        if tree is not None:
            target.modules = check_tree(target, tree)
    except RuntimeError:
        target.stop()
        raise
    return target


class BaselineError(RuntimeError):
    """The baseline tree did not run as asked: interpreted, or another tree's code."""


def banner_words(line: str) -> list[str]:
    """``Sluice listening on URL (1 worker, fast, compiled)`` -> ["1 worker", "fast", "compiled"].

    Older trees print no transport: ``(1 worker, compiled)``.
    """
    inside = line.rsplit("(", 1)[-1].rstrip(")").strip()
    return [w.strip() for w in inside.split(",")]


def loaded_extensions(pid: int) -> set[Path]:
    """The Sluice extension modules (``proxy/**.so``) mapped into ``pid``."""
    found = set()
    for row in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = row.split(maxsplit=5)
        if len(parts) == 6 and parts[5].endswith(".so") and "/proxy/" in parts[5]:
            found.add(Path(parts[5]))
    return found


def _check_banner(name: str, line: str, transport: str, tree: Path | None) -> None:
    words = banner_words(line)
    if tree is None:
        # This tree's banner names the transport: a Sluice that ignored SLUICE_HTTP
        # would make sluice-stock a second copy of sluice.
        if transport not in words:
            raise RuntimeError(f"{name}: asked for SLUICE_HTTP={transport}, but its banner says {line!r}")
        return
    if "compiled" not in words:
        raise BaselineError(
            f"{name}: the baseline tree {tree} ran {'interpreted' if 'interpreted' in words else 'unknown'} "
            f"(banner {line!r}): build it in place first (`make native` there), "
            "and leave its sources untouched since (a newer .py than its build runs interpreted)"
        )


def check_tree(target: Target, tree: Path) -> list[str]:
    """The compiled modules ``target`` mapped, all from ``tree`` (relative paths), or a clear error.

    Called once the process answers, with its app (and so its request path) imported.
    """
    assert target.pid is not None
    own = tree.resolve() / "proxy"
    loaded = loaded_extensions(target.pid)
    foreign = sorted(str(p) for p in loaded if not p.is_relative_to(own))
    mine = sorted(str(p.relative_to(tree.resolve())) for p in loaded if p.is_relative_to(own))
    if foreign or not mine:
        raise BaselineError(
            f"{target.name} should run the compiled modules of {tree}, but it mapped "
            + (f"these from elsewhere: {', '.join(foreign[:4])}" if foreign else "none of them")
        )
    return mine


def direct(upstream: Target) -> Target:
    return Target("direct", upstream.port, None)
