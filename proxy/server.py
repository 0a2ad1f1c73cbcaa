"""Running the app under uvicorn, with one worker or several."""

from __future__ import annotations

import atexit
import copy
import dataclasses
import functools
import gc
import math
import resource
import signal
import socket
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.supervisors import Multiprocess

from .app import create_app
from .config import ConfigError, Settings
from .dispatch import SluiceApp
from .http import server_options, websocket_options
from .redact import redacting
from .tls import uvicorn_options as tls_options


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before starting uvicorn so port 0 works and the banner can print the real port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def logging_config(level: str) -> dict[str, Any]:
    """uvicorn's logging set-up, plus Sluice's own loggers on the same handler.

    Every handler redacts credentials (proxy/redact.py). Other libraries'
    warnings (asyncio, aiohttp, websockets) go to the same handler through the
    root logger, instead of Python's last-resort handler, which would print
    them unredacted.
    """
    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["sluice"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    config["root"] = {"handlers": ["default"], "level": "WARNING"}
    return redacting(config)


def raise_open_files_limit(wanted: int) -> None:
    """Each stream holds two sockets; the usual soft limit of 1024 would cap a worker near 500 streams."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def worker_app(settings: Settings) -> SluiceApp:
    """The app, in the process that serves it.

    Everything alive by now (modules, settings, the app) lives as long as the
    process, so it is kept out of the collector's generations: a full
    collection then scans only what requests allocated, not the whole heap.

    A request leaves no reference cycle behind (tests/test_usage.py guards
    the one it used to), so the collector rarely finds anything; but it runs
    every 700 container allocations net of frees, and under load the
    requests in flight keep that count rising: a collection every few
    requests, ~2.3 % of a loaded worker's CPU time in ``perf``. Every
    10,000 instead took it out of the profile.
    """
    app = create_app(settings)
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000)
    return app


def uvicorn_config(settings: Settings) -> uvicorn.Config:
    # A partial of a module-level function pickles, so the settings object
    # reaches spawned worker processes as it is, without re-reading anything.
    return uvicorn.Config(
        app=functools.partial(worker_app, settings),
        factory=True,
        # The server protocol, the event loop and the logging set-up.
        **server_options(settings.http, logging_config(settings.log_level)),
        # Realtime sessions: the message size limit, keepalive pings (proxy/realtime).
        **websocket_options(settings.realtime_max_message, settings.realtime_ping_interval),
        lifespan="on",
        workers=settings.workers,
        # uvicorn's access log prints query strings, and Gemini clients may put
        # their key in `?key=`. Sluice writes its own log lines.
        access_log=False,
        # uvicorn would otherwise believe X-Forwarded-For from any loopback
        # peer and rewrite the client address; which proxies to trust is
        # Sluice's decision (and a setting), not a default.
        proxy_headers=False,
        server_header=False,
        log_level=settings.log_level,
        # Also how long a connection may stay silent before its first request.
        timeout_keep_alive=settings.keep_alive_timeout,
        # Sluice's drain aborts what is left at SLUICE_DRAIN_TIMEOUT; this is
        # uvicorn's own backstop, in case anything outlives that.
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout) + 10,
        **tls_options(settings.ssl_certfile, settings.ssl_keyfile),
    )


def with_metrics_dir(settings: Settings) -> Settings:
    """The settings with the directory every worker writes its metrics to, made ready.

    Unset, it is a private temporary directory, removed when this process
    ends: at exit, and on SIGTERM too (one worker's uvicorn ends by raising
    the signal it caught again, under the handler found at its start: this
    one, then, rather than the default that would end the process before
    any clean-up).
    """
    from .metricfiles import prepare_dir, remove_dir

    try:
        path, ours = prepare_dir(settings.metrics_dir)
    except (OSError, ValueError) as exc:
        raise ConfigError("SLUICE_METRICS_DIR", str(exc)) from exc
    if ours:
        atexit.register(remove_dir, path)

        def handler(signum: int, _frame: object) -> None:
            remove_dir(path)
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

        signal.signal(signal.SIGTERM, handler)
    return dataclasses.replace(settings, metrics_dir=path)


def serve(settings: Settings, on_listening: Callable[[str], None]) -> None:
    """Serve until SIGINT/SIGTERM. ``on_listening`` gets the base URL once the socket is bound."""
    raise_open_files_limit(2 * settings.pool_size + 1024)
    settings = with_metrics_dir(settings)  # shared by every worker (proxy/metricfiles.py)
    sock = bind_socket(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    config = uvicorn_config(settings)
    on_listening(f"{'https' if settings.tls else 'http'}://{shown_host}:{port}")
    if settings.workers > 1:
        Multiprocess(config, sockets=[sock]).run()
    else:
        uvicorn.Server(config).run(sockets=[sock])
