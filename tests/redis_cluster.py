"""A real three-master Redis Cluster on loopback, for the tests that share state through one.

Three ``redis-server --cluster-enabled yes`` on free ports, joined by
``redis-cli --cluster create`` (no replicas: each master owns a third of the
slots). :meth:`RedisCluster.restart` stops one master and starts it again on
its port with its node file and its append-only file, as an operator's
restart would: it rejoins with its slots and its data. Missing binaries skip, or fail under CI.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.redis_server import RedisServer, start_redis

NODE_TIMEOUT_MS = 2000


@dataclass
class RedisCluster:
    masters: list[RedisServer]
    dirs: list[Path]

    @property
    def url(self) -> str:
        """What ``SLUICE_REDIS_URL`` takes: one node; the client finds the others."""
        return f"redis+cluster://127.0.0.1:{self.masters[0].port}"

    def restart(self, index: int, down_for: float = 0.0) -> None:
        """Stop master ``index``, wait ``down_for`` seconds, start it again on its port."""
        server = self.masters[index]
        server.stop()
        time.sleep(down_for)
        self.masters[index] = start_redis(self.dirs[index], server.port, extra=_cluster_args(server.port))
        wait_until_ok(self.masters, timeout=30.0)

    def flush(self) -> None:
        """Empty every master, so a test starts from nothing whatever ran before it."""
        for server in self.masters:
            subprocess.run(
                [_redis_cli(), "-p", str(server.port), "flushall"],
                check=True,
                capture_output=True,
                timeout=10,
            )

    def stop(self) -> None:
        for server in self.masters:
            server.stop()


def _cluster_args(port: int) -> tuple[str, ...]:
    return (
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        f"nodes-{port}.conf",
        "--cluster-node-timeout",
        str(NODE_TIMEOUT_MS),
        "--appendonly",
        "yes",
    )


def _redis_cli() -> str:
    binary = shutil.which("redis-cli")
    if binary is None:
        message = "redis-cli is not on PATH (apt-get install redis-server)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


def _cluster_state(port: int) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"*2\r\n$7\r\nCLUSTER\r\n$4\r\nINFO\r\n")
            reply = sock.recv(4096).decode(errors="replace")
    except OSError:
        return "down"
    for line in reply.splitlines():
        if line.startswith("cluster_state:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def wait_until_ok(masters: list[RedisServer], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_cluster_state(m.port) == "ok" for m in masters):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the cluster did not reach state ok: {[_cluster_state(m.port) for m in masters]}")


def start_cluster(tmp_path: Path) -> RedisCluster:
    cli = _redis_cli()
    dirs = [tmp_path / f"node{i}" for i in range(3)]
    masters: list[RedisServer] = []
    try:
        for directory in dirs:
            port = _free_port()
            masters.append(start_redis(directory, port, extra=_cluster_args(port)))
        nodes = [f"127.0.0.1:{m.port}" for m in masters]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        wait_until_ok(masters, timeout=30.0)
    except BaseException:
        for server in masters:
            server.stop()
        raise
    return RedisCluster(masters, dirs)


def _free_port() -> int:
    # A cluster node also listens on port + 10000 (the cluster bus): keep both free.
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def redis_cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = start_cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()
