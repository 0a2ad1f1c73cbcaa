"""Real servers on loopback for the integration tests.

* The mock provider runs in a thread of the test process (real sockets), so
  tests can read what it received and when its side of a stream closed.
* Sluice runs as a real subprocess started through its own CLI
  (``python -m proxy serve --port 0``), exactly as a user starts it. All of
  its output goes to a file that the canary tests scan for secrets.
* The modules in ``BOTH_MODES`` run twice, once per transport (``SLUICE_HTTP``
  fast and stock): every Sluice their tests start runs in the mode of the
  run, and the test ids say which (``[fast]``, ``[stock]``). The stock
  transport is the reference the fast one is held to.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.http import HTTP_MODES
from proxy.mock import MockHandle, start_mock_in_thread
from tests.redis_cluster import RedisCluster, redis_cluster_session
from tests.redis_server import RedisServer, redis_server_session

# Recognisable server-held keys: no response, header or log line may ever
# contain them. Each provider's looks like the real thing.
CANARY_KEYS = {
    "OPENAI_API_KEY": "sk-proj-CANARYopenai7f3a9c1e5b2d8f4a6c0e",
    "GEMINI_API_KEY": "AIzaSyCANARYgemini7f3a9c1e5b2d8f4a6c0",
    "ANTHROPIC_API_KEY": "sk-ant-api03-CANARYanthropic7f3a9c1e5b2d",
}
CANARIES = tuple(CANARY_KEYS.values())
CLIENT_KEY = "sk-client-CLIENTKEY0123456789"

# Environment variables that must not leak from the developer's shell into
# the Sluice under test.
_SCRUB = re.compile(r"^(SLUICE_|OPENAI_|GEMINI_|GOOGLE_|ANTHROPIC_)")
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class SluiceProcess:
    url: str
    log_path: Path
    proc: subprocess.Popen[bytes]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not _SCRUB.match(k)}
    env.update(extra)
    return env


def start_sluice(log_path: Path, env: dict[str, str], *args: str, timeout: float = 20.0) -> SluiceProcess:
    """Start ``python -m proxy serve`` on a free port; return once it is listening."""
    with log_path.open("wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--port", "0", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=log_path.parent,  # no stray .env from the repository
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        found = re.search(r"Sluice listening on (https?://\S+)", text)
        if found and "Application startup complete" in text:
            return SluiceProcess(found.group(1), log_path, proc)
        if proc.poll() is not None:
            raise RuntimeError(f"sluice exited with {proc.returncode}:\n{text}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"sluice did not start in {timeout}s:\n{log_path.read_text()}")


# The tests of what the transport decides at the edges: bytes through the
# official SDKs, streaming, disconnects, heartbeats, failover, errors, security.
BOTH_MODES = frozenset(
    {
        "test_sdk_openai",
        "test_sdk_gemini",
        "test_sdk_anthropic",
        "test_streaming",
        "test_resilience",
        "test_failover",
        "test_security",
        "test_chat_api",
        "test_realtime",
        "test_realtime_sdk",
        "test_tls",
        "test_redaction",
        "test_code_assist",
        "test_tracing",
    }
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rpartition(".")[2]
    if module in BOTH_MODES and "http_mode" in metafunc.fixturenames:
        metafunc.parametrize("http_mode", HTTP_MODES, indirect=True, scope="session")


@pytest.fixture(scope="session")
def http_mode(request: pytest.FixtureRequest) -> str:
    """The transport every Sluice of this test runs (``fast`` outside the BOTH_MODES modules)."""
    return str(getattr(request, "param", "fast"))


@pytest.fixture(scope="session")
def mock() -> Iterator[MockHandle]:
    handle = start_mock_in_thread()
    yield handle
    handle.stop()


SluiceFactory = Callable[..., SluiceProcess]


@pytest.fixture(scope="session")
def sluice_factory(tmp_path_factory: pytest.TempPathFactory, http_mode: str) -> Iterator[SluiceFactory]:
    """Start extra Sluice processes with their own settings; all stopped at the end.

    They run the transport of ``http_mode`` unless ``SLUICE_HTTP`` is given.
    """
    started: list[SluiceProcess] = []

    def factory(*args: str, **env: str) -> SluiceProcess:
        log_path = tmp_path_factory.mktemp("sluice") / "sluice.log"
        env.setdefault("SLUICE_HTTP", http_mode)
        process = start_sluice(log_path, clean_env(**env), *args)
        started.append(process)
        return process

    yield factory
    for process in started:
        process.stop()


def upstream_env(mock: MockHandle) -> dict[str, str]:
    """The default test set-up: canary keys; OpenAI and Anthropic behind a path prefix."""
    return {
        **CANARY_KEYS,
        "SLUICE_OPENAI_UPSTREAM": f"{mock.url}/openai-prefix",
        "SLUICE_GEMINI_UPSTREAM": mock.url,
        "SLUICE_ANTHROPIC_UPSTREAM": f"{mock.url}/anthropic-prefix/",
    }


@pytest.fixture(scope="session")
def sluice(mock: MockHandle, sluice_factory: SluiceFactory) -> Iterator[SluiceProcess]:
    """One Sluice in front of the mock, shared by the tests that need no special settings."""
    process = sluice_factory(**upstream_env(mock))
    yield process
    # Whatever the tests did, the server-held keys never reached the log.
    log = process.log()
    for canary in CANARIES:
        assert canary not in log, "a server-held key appeared in Sluice's output"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port (a failure, not a skip, when CI=true and it is missing)."""
    yield from redis_server_session(tmp_path_factory)


@pytest.fixture(autouse=True)
def _reset_mock_records(request: pytest.FixtureRequest) -> None:
    if "mock" in request.fixturenames:
        request.getfixturevalue("mock").state.reset()


def assert_no_canary(*texts: str | bytes) -> None:
    for text in texts:
        blob = text if isinstance(text, str) else text.decode("latin-1")
        for canary in CANARIES:
            assert canary not in blob, "a server-held key leaked"


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A real three-master Redis Cluster on loopback (tests/redis_cluster.py)."""
    yield from redis_cluster_session(tmp_path_factory)
