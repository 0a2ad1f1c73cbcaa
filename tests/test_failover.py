"""Credential pools: sticky failover before the first byte, Vertex AI with a service account."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from proxy.mock import MockHandle, mock_tokens
from tests.conftest import SluiceFactory, SluiceProcess, upstream_env
from tests.service_account import vertex_config

pytestmark = pytest.mark.timeout(60)

PRIMARY, BACKUP = "sk-primary-FAILOVERprimary0123", "sk-backup-FAILOVERbackup4567"
ADMIN = "admin-token-for-tests"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _pool(mock: MockHandle, sluice_factory: SluiceFactory, **env: str) -> SluiceProcess:
    settings = {
        **upstream_env(mock),
        "OPENAI_API_KEY": f"{PRIMARY},{BACKUP}",  # labelled OPENAI_API_KEY[1] and [2]
        "SLUICE_ADMIN_TOKEN": ADMIN,
        **env,
    }
    return sluice_factory(**settings)


def _openai(sluice: SluiceProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{sluice.url}/v1", api_key="client", max_retries=0)


def _chat(client: openai.OpenAI) -> str:
    reply = client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    return str(reply.choices[0].message.content)


def _credentials(sluice: SluiceProcess) -> dict[str, dict[str, object]]:
    body = httpx.get(f"{sluice.url}/readyz").json()
    return {c["label"]: c for c in body["credentials"]["openai"]}


def test_a_revoked_primary_fails_over_sticks_and_is_retried_after_the_cooldown(
    mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    sluice = _pool(mock, sluice_factory, SLUICE_FAILOVER_COOLDOWN="2")
    client = _openai(sluice)
    mock.state.set_key_rule(PRIMARY, 401)
    assert _chat(client) == "".join(mock_tokens(12))  # the same call succeeded, on the backup
    for _ in range(3):
        _chat(client)
    attempts = mock.state.attempts_by_key("/chat/completions")
    assert attempts[PRIMARY] == 1, "after failing over, calls must go straight to the backup"
    assert attempts[BACKUP] == 4
    states = _credentials(sluice)
    assert states["OPENAI_API_KEY[1]"]["state"] == "failed" and states["OPENAI_API_KEY[1]"]["reason"] == "401"
    assert states["OPENAI_API_KEY[2]"]["state"] == "ok"
    # After the cool-down the primary is tried again (still revoked: one more attempt, then the backup).
    time.sleep(2.2)
    _chat(client)
    assert mock.state.attempts_by_key("/chat/completions")[PRIMARY] == 2
    # Fixed and cooled down: the primary serves again.
    mock.state.clear_key_rules()
    time.sleep(2.2)
    _chat(client)
    assert mock.state.attempts_by_key("/chat/completions")[PRIMARY] == 3
    log = sluice.log()
    assert "openai credential 'OPENAI_API_KEY[1]' failed (401)" in log
    assert PRIMARY not in log and BACKUP not in log
    metrics = httpx.get(f"{sluice.url}/metrics").text
    assert (
        'sluice_credential_failovers_total{provider="openai",label="OPENAI_API_KEY[1]",reason="401"} 2'
        in metrics
    )


def test_an_operator_reset_brings_the_primary_back_at_once(
    mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    sluice = _pool(mock, sluice_factory)  # default cool-down: 300 s
    client = _openai(sluice)
    mock.state.set_key_rule(PRIMARY, 403)
    _chat(client)
    mock.state.clear_key_rules()
    assert (
        httpx.post(f"{sluice.url}/admin/credentials/reset").status_code == 404
    )  # no token: no such endpoint
    auth = {"authorization": f"Bearer {ADMIN}"}
    reset = httpx.post(f"{sluice.url}/admin/credentials/reset?provider=openai", headers=auth)
    assert reset.json()["reset"] == 1
    _chat(client)
    assert mock.state.attempts_by_key("/chat/completions")[PRIMARY] == 2
    shown = httpx.get(f"{sluice.url}/admin/credentials", headers=auth).text
    assert PRIMARY not in shown and BACKUP not in shown


def test_a_429_cools_the_credential_for_its_retry_after(
    mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    sluice = _pool(mock, sluice_factory)
    client = _openai(sluice)
    mock.state.set_key_rule(PRIMARY, 429, retry_after=1.5)
    _chat(client)
    state = _credentials(sluice)["OPENAI_API_KEY[1]"]
    assert state["state"] == "cooling" and 0 < float(state["seconds_left"]) <= 1.5  # type: ignore[arg-type]
    mock.state.clear_key_rules()
    _chat(client)
    assert mock.state.attempts_by_key("/chat/completions")[PRIMARY] == 1  # still cooling
    time.sleep(1.6)
    _chat(client)
    assert mock.state.attempts_by_key("/chat/completions")[PRIMARY] == 2


def test_when_every_credential_is_refused_the_client_gets_one_clean_error(
    mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    sluice = _pool(mock, sluice_factory)
    mock.state.set_key_rule(PRIMARY, 401)
    mock.state.set_key_rule(BACKUP, 401)
    with pytest.raises(openai.APIStatusError) as info:
        _chat(_openai(sluice))
    assert info.value.status_code == 502
    body = info.value.response.text
    assert "refused Sluice's credentials" in body
    assert PRIMARY not in body and BACKUP not in body  # the mock's 401 bodies quote the key they got
    assert sum(mock.state.attempts_by_key("/chat/completions").values()) == 2


def test_when_every_credential_is_rate_limited_the_429_reaches_the_client(
    mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    sluice = _pool(mock, sluice_factory)
    mock.state.set_key_rule(PRIMARY, 429, retry_after=20)
    mock.state.set_key_rule(BACKUP, 429, retry_after=9)
    with pytest.raises(openai.RateLimitError) as info:
        _chat(_openai(sluice))
    assert info.value.response.headers["retry-after"] == "9"


def test_a_stream_that_failed_after_its_first_byte_is_not_retried(
    mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    sluice = _pool(mock, sluice_factory)
    with pytest.raises(httpx.RemoteProtocolError), httpx.Client(base_url=sluice.url) as client:
        client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers={"x-mock-drop-after": "2"})
    assert sum(mock.state.attempts_by_key("/chat/completions").values()) == 1


def test_bodies_over_the_retry_limit_are_not_retried(mock: MockHandle, sluice_factory: SluiceFactory) -> None:
    sluice = _pool(mock, sluice_factory, SLUICE_RETRY_BODY_LIMIT="1024")
    mock.state.set_key_rule(PRIMARY, 401)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4000}]}
    with httpx.Client(base_url=sluice.url) as client:
        refused = client.post("/v1/chat/completions", json=big)
        small = client.post("/v1/chat/completions", json=CHAT)
    assert refused.status_code == 502  # over the limit: not kept, so not sent again
    assert small.status_code == 200  # the primary is now known to be failed: straight to the backup
    assert mock.state.attempts_by_key("/chat/completions") == {PRIMARY: 1, BACKUP: 1}


async def test_a_streamed_upload_over_the_limit_is_never_retried(
    mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    sluice = _pool(mock, sluice_factory, SLUICE_RETRY_BODY_LIMIT="1024")
    mock.state.set_key_rule(PRIMARY, 401)

    async def pieces() -> object:
        for _ in range(8):
            yield b"x" * 1024
            await asyncio.sleep(0.05)  # arrives in pieces: the body is not in hand when it is sent

    async with httpx.AsyncClient(base_url=sluice.url) as client:
        response = await client.post("/v1/files", content=pieces(), headers={"content-length": str(8 * 1024)})  # type: ignore[arg-type]
    assert response.status_code == 502
    assert mock.state.attempts_by_key("/files") == {PRIMARY: 1}


def test_connection_failures_are_retried_with_backoff(
    mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    sluice = sluice_factory(
        **{
            **upstream_env(mock),
            "SLUICE_OPENAI_UPSTREAM": "http://127.0.0.1:9",
            "SLUICE_CONNECT_RETRIES": "2",
        }
    )
    started = time.monotonic()
    response = httpx.post(f"{sluice.url}/v1/chat/completions", json=CHAT)
    elapsed = time.monotonic() - started
    assert response.status_code == 502
    assert elapsed >= 0.3  # backoff 0.1 s, then 0.2 s, between three attempts


# --- Vertex AI ------------------------------------------------------------------


def _gemini(sluice: SluiceProcess, **kwargs: object) -> genai.Client:
    options = genai_types.HttpOptions(
        base_url=sluice.url, retry_options=genai_types.HttpRetryOptions(attempts=1)
    )
    return genai.Client(api_key="client", http_options=options, **kwargs)  # type: ignore[arg-type]


def _streamed(client: genai.Client) -> str:
    return "".join(
        c.text or "" for c in client.models.generate_content_stream(model="gemini-x", contents="hi")
    )


def test_gemini_requests_are_served_by_vertex_with_a_service_account(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    sluice = sluice_factory(**upstream_env(mock), SLUICE_CONFIG=str(vertex_config(mock, tmp_path)))
    client = _gemini(sluice)
    for _ in range(3):
        assert _streamed(client) == "".join(mock_tokens(12))
    record = mock.state.last(":streamGenerateContent")
    vertex = "/v1/projects/mock-project/locations/us-central1/publishers/google/models/"
    assert record.path == vertex + "gemini-x:streamGenerateContent"
    assert record.query == "alt=sse"
    assert record.headers["authorization"].startswith("Bearer ya29.mock-")
    assert "x-goog-api-key" not in record.headers
    assert mock.state.token_requests == 1, "one token, reused: never fetched per request"
    assert _credentials_of(sluice, "gemini")["vertex"]["kind"] == "vertex"


def _credentials_of(sluice: SluiceProcess, provider: str) -> dict[str, dict[str, object]]:
    return {c["label"]: c for c in httpx.get(f"{sluice.url}/readyz").json()["credentials"][provider]}


def test_the_google_genai_sdk_in_vertex_mode_works_through_sluice(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    sluice = sluice_factory(**upstream_env(mock), SLUICE_CONFIG=str(vertex_config(mock, tmp_path)))
    vertex_client = _gemini(sluice, vertexai=True)  # express mode: /v1beta1/publishers/google/models/...
    assert _streamed(vertex_client) == "".join(mock_tokens(12))
    record = mock.state.last(":streamGenerateContent")
    assert record.path.startswith(
        "/v1beta1/projects/mock-project/locations/us-central1/publishers/google/models/"
    )
    # And the Vertex-style path with a project and location, under /vertex/:
    with httpx.Client(base_url=sluice.url, headers={"x-goog-api-key": "client"}) as raw:
        reply = raw.post(
            "/vertex/v1/projects/any/locations/europe-west4/publishers/google/models/gemini-x:generateContent",
            json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        )
    assert reply.status_code == 200
    assert reply.json()["candidates"][0]["content"]["parts"][0]["text"] == "".join(mock_tokens(12))
    # The server decides where requests run: its own project and location.
    assert "/projects/mock-project/locations/us-central1/" in mock.state.last(":generateContent").path


def test_a_refusing_token_endpoint_fails_over_to_the_api_key(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    mock.state.token_endpoint_status = 400
    sluice = sluice_factory(**upstream_env(mock), SLUICE_CONFIG=str(vertex_config(mock, tmp_path)))
    assert _streamed(_gemini(sluice)) == "".join(mock_tokens(12))
    record = mock.state.last(":streamGenerateContent")
    assert record.path == "/v1/models/gemini-x:streamGenerateContent"  # the Gemini API, with the key
    assert "x-goog-api-key" in record.headers
    assert _credentials_of(sluice, "gemini")["vertex"]["reason"] == "token"


def test_vertex_refusing_the_token_fails_over_to_the_api_key(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    sluice = sluice_factory(**upstream_env(mock), SLUICE_CONFIG=str(vertex_config(mock, tmp_path)))
    client = _gemini(sluice)
    assert _streamed(client) == "".join(mock_tokens(12))  # via Vertex; now revoke the token there
    token = mock.state.last(":streamGenerateContent").headers["authorization"].removeprefix("Bearer ")
    mock.state.set_key_rule(token, 403)
    assert _streamed(client) == "".join(mock_tokens(12))
    assert mock.state.last(":streamGenerateContent").path == "/v1/models/gemini-x:streamGenerateContent"
    assert _credentials_of(sluice, "gemini")["vertex"]["reason"] == "403"
    assert "gemini credential 'vertex' failed (403)" in sluice.log()


def test_a_vertex_only_pool_refuses_paths_vertex_cannot_serve(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    config = vertex_config(mock, tmp_path)
    config.write_text(config.read_text().split('[[providers.gemini.credentials]]\nlabel = "studio"')[0])
    sluice = sluice_factory(**{**upstream_env(mock), "GEMINI_API_KEY": ""}, SLUICE_CONFIG=str(config))
    response = httpx.get(f"{sluice.url}/v1beta/files", headers={"x-goog-api-key": "client"})
    assert response.status_code == 400
    assert "No configured gemini credential can serve this path" in response.json()["error"]["message"]
    assert mock.state.records == []


def test_a_vertex_only_pool_serves_the_chat_api(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    """Regression: the chat API took "no API key" for "no credential" and refused a Vertex-only pool."""
    config = vertex_config(mock, tmp_path)
    config.write_text(config.read_text().split('[[providers.gemini.credentials]]\nlabel = "studio"')[0])
    sluice = sluice_factory(**{**upstream_env(mock), "GEMINI_API_KEY": ""}, SLUICE_CONFIG=str(config))
    assert "gemini    → " in sluice.log() and "(1 credential)" in sluice.log()
    with httpx.Client(base_url=sluice.url) as client:
        models = client.get("/api/chat/models").json()["models"]
        reply = client.post(
            "/api/chat", json={"model": "gemini/gemini-x", "messages": [{"role": "user", "content": "hi"}]}
        )
    assert any(m.startswith("gemini/") for m in models)
    assert reply.status_code == 200
    events = [block.split("\n") for block in reply.text.split("\n\n") if "event: token" in block]
    text = "".join(
        json.loads(line[len("data: ") :])["text"]
        for lines in events
        for line in lines
        if line.startswith("data: ")
    )
    assert text == "".join(mock_tokens(12))
    assert "event: done" in reply.text
    assert "/projects/mock-project/locations/us-central1/" in mock.state.last(":streamGenerateContent").path


def test_a_vertex_only_configuration_is_not_taken_for_no_configuration(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    """Regression: `make run` (--mock-if-unconfigured) looked only for API keys and fell back to the mock."""
    config = vertex_config(mock, tmp_path)
    config.write_text(config.read_text().split('[[providers.gemini.credentials]]\nlabel = "studio"')[0])
    sluice = sluice_factory("--mock-if-unconfigured", SLUICE_CONFIG=str(config))
    assert "built-in mock" not in sluice.log()
    assert "(1 credential)" in sluice.log()
