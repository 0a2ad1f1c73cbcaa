"""A real ``redis-server`` on a free loopback port, for the integration tests.

Never the system's instance (if one runs on 6379): each server here gets its
own port, its own directory, no persistence, and is stopped by the test that
started it. Without ``redis-server`` on PATH the tests skip, or fail when
``CI=true`` (CI must not silently skip them).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class RedisServer:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    dir: Path

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate (SIGTERM, then SIGKILL if it lingers) and reap."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test froze it
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """Die at once, as a crashed server would (no goodbye to clients)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a hung server)."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def log(self) -> str:
        return (self.dir / "redis.log").read_text(errors="replace")


def _redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not on PATH (apt-get install redis-server)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(
    tmp_path: Path, port: int | None = None, timeout: float = 10.0, extra: tuple[str, ...] = ()
) -> RedisServer:
    """Start ``redis-server`` on ``port`` (a free one if None); return once it answers PING.

    Pass the port of a stopped server to restart "the same" Redis, empty.
    ``extra`` arguments go to redis-server after Sluice's own.
    """
    binary = _redis_binary()
    tmp_path.mkdir(parents=True, exist_ok=True)
    # A free port found by binding can be taken by someone else before
    # redis binds it; then redis exits and we try another.
    for _ in range(1 if port is not None else 5):
        chosen = port if port is not None else _free_port()
        log = (tmp_path / "redis.log").open("ab")
        args = ["--port", str(chosen), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--daemonize", "no", "--dir", str(tmp_path), "--protected-mode", "yes", *extra]
        proc = subprocess.Popen(
            [binary, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        server = RedisServer(f"redis://127.0.0.1:{chosen}/0", chosen, proc, tmp_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers_ping(chosen):
                return server
            time.sleep(0.02)
        server.kill()
    raise RuntimeError(f"redis-server did not start:\n{(tmp_path / 'redis.log').read_text(errors='replace')}")


def redis_server_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Body of the session-scoped ``redis_server`` fixture: one server for the whole run."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()
