"""Realtime sessions through the shipped deployment: official SDK → nginx
(deploy/nginx.conf, TLS) → Sluice (two workers, Redis) → mock.

The WebSocket upgrade must pass nginx (its ``Upgrade``/``Connection``
headers), the session must then carry every message both ways unchanged, and
the upstream must see the server-held key, never the client's Sluice key.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest

from proxy.limits import Limits
from proxy.mock import MockHandle, mock_audio, mock_tokens
from tests.accesslog import read_lines
from tests.conftest import CANARY_KEYS, SluiceFactory
from tests.realtime_clients import GUARD, gemini_session, genai_client, openai_session
from tests.redis_server import RedisServer
from tests.test_deploy import Deployment, deploy

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory,
    mock: MockHandle,
    sluice_factory: SluiceFactory,
    redis_server: RedisServer,
) -> Iterator[Deployment]:
    keys = {"app": Limits(rpm=10_000, concurrency=100)}
    yield from deploy(
        tmp_path_factory.mktemp("deploy"), mock, sluice_factory, redis_server, [("--workers", "2")], keys
    )


async def session_line(deployment: Deployment, path: str) -> dict[str, object]:
    """The access-log line of the realtime session at ``path`` (written once it ended)."""
    deadline = time.monotonic() + GUARD
    while time.monotonic() < deadline:
        lines = [entry for entry in read_lines(*deployment.access_logs) if entry["path"] == path]
        if lines:
            return lines[-1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no access-log line for {path}")


async def test_openai_realtime_session_through_nginx(deployment: Deployment, mock: MockHandle) -> None:
    key = deployment.secrets["app"]
    turn = await asyncio.wait_for(
        openai_session(
            f"{deployment.tls_url}/v1",
            key,
            modalities=["audio"],
            headers={"x-mock-delay-ms": "5"},  # paced: frames cross nginx one by one
            tls=deployment.tls,
        ),
        GUARD,
    )
    assert turn.text == mock_tokens(12) and turn.audio == [mock_audio(960)] * 12
    rec = await mock.state.wait_for_end(mock.state.last("/realtime").id, GUARD)
    # Every event the SDK parsed is one the mock sent, in order (the SDK stops reading at response.done).
    assert [e.to_dict() for e in turn.raw] == [json.loads(f) for f in rec.frames_out]
    assert rec.headers["authorization"] == f"Bearer {CANARY_KEYS['OPENAI_API_KEY']}"
    assert key not in json.dumps(rec.headers) + rec.query
    assert rec.outcome == "completed" and rec.close_code == 1000
    line = await session_line(deployment, "/v1/realtime")
    assert line["status"] == 101 and line["close_code"] == 1000 and line["credential"] == "OPENAI_API_KEY"


async def test_gemini_live_session_through_nginx(deployment: Deployment, mock: MockHandle) -> None:
    key = deployment.secrets["app"]
    client = genai_client(deployment.tls_url, key, deployment.tls)
    turn = await asyncio.wait_for(gemini_session(client, modalities=["TEXT"]), GUARD)
    assert turn.text == mock_tokens(12) and turn.types[-1] == "turnComplete"
    rec = await mock.state.wait_for_end(mock.state.last("BidiGenerateContent").id, GUARD)
    assert rec.headers["x-goog-api-key"] == CANARY_KEYS["GEMINI_API_KEY"] and "key=" not in rec.query
    assert key not in json.dumps(rec.headers) + rec.query
    assert rec.outcome == "completed"
