"""Gemini through Code Assist with a Google account's OAuth credentials, and the sticky fallback.

Sluice runs as a subprocess in front of the mock, whose Code Assist endpoints
check the envelope and whose token endpoint exchanges the refresh token; the
clients are the official ``google-genai`` SDKs (Python here, JavaScript by node).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from google import genai
from google.genai import types as genai_types

from proxy.mock import MockHandle, mock_tokens
from tests.accesslog import read_lines
from tests.conftest import CANARY_KEYS, CLIENT_KEY, SluiceFactory, SluiceProcess, upstream_env
from tests.node import run_node
from tests.oauth_user import make_oauth_file

pytestmark = pytest.mark.timeout(90)

ADMIN = "admin-token-for-tests"
TEXT = "".join(mock_tokens(12))
STREAM = "/v1beta/models/gemini-x:streamGenerateContent"
API_STREAM = "/models/gemini-x:streamGenerateContent"  # on the Gemini API, with the key
WARNING = "gemini credential 'code-assist' failed"


def _config(tmp_path: Path, mock: MockHandle, *, fallback: bool, extra: str = "") -> tuple[Path, str]:
    oauth_file, refresh = make_oauth_file(mock, tmp_path)
    text = f"""
[[providers.gemini.credentials]]
label = "code-assist"
type = "code_assist"
oauth_file = "{oauth_file}"
endpoint = "{mock.url}"
{extra}
"""
    if fallback:
        text += """
[[providers.gemini.credentials]]
label = "studio"
type = "api_key"
api_key_env = "GEMINI_API_KEY"
"""
    config = tmp_path / "sluice.toml"
    config.write_text(text)
    return config, refresh


def _start(
    tmp_path: Path,
    mock: MockHandle,
    sluice_factory: SluiceFactory,
    *,
    fallback: bool,
    extra: str = "",
    **env: str,
) -> tuple[SluiceProcess, str]:
    config, refresh = _config(tmp_path, mock, fallback=fallback, extra=extra)
    settings = {
        **upstream_env(mock),
        "SLUICE_CONFIG": str(config),
        "SLUICE_ADMIN_TOKEN": ADMIN,
        "SLUICE_ACCESS_LOG": str(tmp_path / "access.log"),
        **({} if fallback else {"GEMINI_API_KEY": ""}),
        **env,
    }
    return sluice_factory(**settings), refresh


def _client(sluice: SluiceProcess) -> genai.Client:
    options = genai_types.HttpOptions(
        base_url=sluice.url, retry_options=genai_types.HttpRetryOptions(attempts=1)
    )
    return genai.Client(api_key=CLIENT_KEY, http_options=options)


def _streamed(client: genai.Client) -> list[str]:
    return [c.text or "" for c in client.models.generate_content_stream(model="gemini-x", contents="hi")]


def _access_lines(tmp_path: Path, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [line for line in read_lines(tmp_path / "access.log") if "gemini-x" in str(line.get("path"))]
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} access-log lines")


def _admin(sluice: SluiceProcess) -> dict[str, dict[str, object]]:
    shown = httpx.get(f"{sluice.url}/admin/credentials", headers={"authorization": f"Bearer {ADMIN}"})
    return {c["label"]: c for c in shown.json()["credentials"]["gemini"]}


def _issued_tokens(mock: MockHandle) -> list[str]:
    return list(mock.state.issued_tokens)


def _assert_no_secrets(text: str, refresh: str, mock: MockHandle) -> None:
    assert refresh not in text
    for token in _issued_tokens(mock):
        assert token not in text


def test_google_genai_through_a_code_assist_credential_alone(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    sluice, refresh = _start(tmp_path, mock, sluice_factory, fallback=False)
    client = _client(sluice)
    deltas = _streamed(client)
    assert deltas == mock_tokens(12)  # one SDK chunk per upstream event, in order
    reply = client.models.generate_content(model="gemini-x", contents="hi")
    assert reply.text == TEXT
    assert reply.response_id and reply.response_id.startswith("mock")  # from Code Assist's traceId
    assert reply.usage_metadata is not None and reply.usage_metadata.candidates_token_count == 12
    counted = client.models.count_tokens(model="gemini-x", contents="hi")
    assert counted.total_tokens and counted.total_tokens > 0
    # What Code Assist received: the envelope, the project it discovered, the SDK's request inside.
    stream = mock.state.last(":streamGenerateContent")
    assert stream.path == "/v1internal:streamGenerateContent" and stream.query == "alt=sse"
    assert stream.headers["authorization"].startswith("Bearer ya29.mock-")
    assert "x-goog-api-key" not in stream.headers
    envelope = mock.state.code_assist_bodies[0]
    assert envelope["model"] == "gemini-x" and envelope["project"] == "mock-ca-project"
    assert envelope["request"]["contents"][0]["parts"][0]["text"] == "hi"
    assert mock.state.code_assist_bodies[2]["request"]["model"] == "models/gemini-x"
    assert mock.state.code_assist_loads == 1, "the project is discovered once"
    assert mock.state.token_requests == 1, "one access token, reused"
    lines = _access_lines(tmp_path, 3)
    assert {line["credential"] for line in lines} == {"code-assist"}
    usage = [line["usage"] for line in lines[:2]]
    assert all(isinstance(u, dict) and u["output"] == 12 for u in usage), usage
    assert _admin(sluice)["code-assist"]["kind"] == "code_assist"
    _assert_no_secrets(sluice.log() + (tmp_path / "access.log").read_text(), refresh, mock)


def test_the_javascript_sdk_through_code_assist(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    sluice, refresh = _start(tmp_path, mock, sluice_factory, fallback=False)
    out = run_node("code_assist.mjs", SLUICE_URL=sluice.url, SLUICE_KEY=CLIENT_KEY)
    assert out["deltas"] == mock_tokens(12)
    assert out["text"] == TEXT
    assert out["streamUsage"]["candidatesTokenCount"] == 12
    assert out["totalTokens"] > 0
    assert [r.path for r in mock.state.records if "v1internal:" in r.path and "Code" not in r.path] == [
        "/v1internal:streamGenerateContent",
        "/v1internal:generateContent",
        "/v1internal:countTokens",
    ]
    _assert_no_secrets(json.dumps(out) + sluice.log(), refresh, mock)


def test_paths_code_assist_does_not_serve_get_a_gemini_error_naming_why(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    sluice, _ = _start(tmp_path, mock, sluice_factory, fallback=False)
    with httpx.Client(base_url=sluice.url, headers={"x-goog-api-key": CLIENT_KEY}) as raw:
        listing = raw.get("/v1beta/models")
        embed = raw.post("/v1beta/models/gemini-x:embedContent", json={"content": {"parts": [{"text": "x"}]}})
        array_stream = raw.post(STREAM, json={"contents": [{"parts": [{"text": "hi"}]}]})  # no alt=sse
    for answer in (listing, embed, array_stream):
        assert answer.status_code == 400
        message = answer.json()["error"]["message"]
        assert "Code Assist does not serve" in message and "streamGenerateContent (alt=sse)" in message
    assert "embedContent" in embed.json()["error"]["message"]
    assert mock.state.records == []


def test_an_account_without_a_project_is_onboarded_once(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    mock.state.code_assist_onboarded = False
    sluice, _ = _start(tmp_path, mock, sluice_factory, fallback=False)
    client = _client(sluice)
    assert "".join(_streamed(client)) == TEXT
    assert "".join(_streamed(client)) == TEXT
    assert mock.state.code_assist_onboards == 1
    assert mock.state.code_assist_loads == 1
    polls = [r for r in mock.state.records if "/v1internal/operations/" in r.path]
    assert len(polls) == 1 and polls[0].method == "GET"
    onboard = next(r for r in mock.state.records if r.path.endswith(":onboardUser"))
    assert onboard.status == 200  # the free tier, without a project of our own (else: 400)


def test_a_revoked_oauth_path_falls_back_to_the_api_key_and_sticks(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    sluice, refresh = _start(tmp_path, mock, sluice_factory, fallback=True, SLUICE_FAILOVER_COOLDOWN="4")
    client = _client(sluice)
    assert "".join(_streamed(client)) == TEXT
    assert mock.state.last(":streamGenerateContent").path == "/v1internal:streamGenerateContent"
    mock.state.code_assist_status = 401  # the account's access revoked
    assert "".join(_streamed(client)) == TEXT  # the same call succeeded, on the API key
    assert mock.state.last(":streamGenerateContent").path.endswith(API_STREAM)
    assert (
        mock.state.last(":streamGenerateContent").headers["x-goog-api-key"] == CANARY_KEYS["GEMINI_API_KEY"]
    )
    mock.state.code_assist_status = None  # the OAuth path recovers: the pool stays on the key
    for _ in range(3):
        assert "".join(_streamed(client)) == TEXT
    wrapped = [r for r in mock.state.records if r.path == "/v1internal:streamGenerateContent"]
    assert len(wrapped) == 2, "after the fallback, calls go straight to the API key"
    state = _admin(sluice)["code-assist"]
    assert state["state"] == "failed" and state["reason"] == "401"
    assert sluice.log().count(WARNING) == 1
    assert f"{WARNING} (401): using the next one for 4s" in sluice.log()
    metrics = httpx.get(f"{sluice.url}/metrics").text
    assert (
        'sluice_credential_failovers_total{provider="gemini",label="code-assist",reason="401"} 1' in metrics
    )
    credentials = [line["credential"] for line in _access_lines(tmp_path, 5)]
    assert credentials == ["code-assist", "studio", "studio", "studio", "studio"]
    # The sticky period over: Code Assist serves again.
    time.sleep(4.2)
    assert "".join(_streamed(client)) == TEXT
    assert mock.state.last(":streamGenerateContent").path == "/v1internal:streamGenerateContent"
    assert _admin(sluice)["code-assist"]["state"] == "ok"
    assert mock.state.token_requests == 2, "the refused access token was dropped, a new one fetched"
    _assert_no_secrets(sluice.log() + (tmp_path / "access.log").read_text(), refresh, mock)


@pytest.mark.parametrize("fault", ["refresh", "quota", "forbidden"])
def test_each_oauth_failure_before_the_first_byte_falls_back(
    fault: str, tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    sluice, refresh = _start(tmp_path, mock, sluice_factory, fallback=True)
    if fault == "refresh":
        mock.state.revoked_refresh_tokens.add(refresh)
    else:
        mock.state.code_assist_status = 429 if fault == "quota" else 403
    client = _client(sluice)
    assert client.models.generate_content(model="gemini-x", contents="hi").text == TEXT
    assert "".join(_streamed(client)) == TEXT
    reason = {"refresh": "token", "quota": "429", "forbidden": "403"}[fault]
    assert _admin(sluice)["code-assist"]["reason"] == reason
    assert sluice.log().count(WARNING) == 1
    assert mock.state.last(":streamGenerateContent").path.endswith(API_STREAM)
    _assert_no_secrets(sluice.log(), refresh, mock)


def test_an_unreachable_code_assist_falls_back(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    config, _ = _config(tmp_path, mock, fallback=True, extra='project = "mock-ca-project"')
    config.write_text(
        config.read_text().replace(f'endpoint = "{mock.url}"', 'endpoint = "http://127.0.0.1:9"')
    )
    sluice = sluice_factory(**upstream_env(mock), SLUICE_CONFIG=str(config), SLUICE_ADMIN_TOKEN=ADMIN)
    client = _client(sluice)
    assert "".join(_streamed(client)) == TEXT
    assert "".join(_streamed(client)) == TEXT
    assert _admin(sluice)["code-assist"]["reason"] == "connect"
    assert sluice.log().count(WARNING) == 1


def test_a_code_assist_stream_cut_after_its_first_byte_is_not_retried(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    sluice, _ = _start(tmp_path, mock, sluice_factory, fallback=True)
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    headers = {"x-goog-api-key": CLIENT_KEY, "x-mock-drop-after": "2"}
    received = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.Client(base_url=sluice.url) as raw,
        raw.stream("POST", STREAM + "?alt=sse", json=body, headers=headers) as answer,
    ):
        assert answer.status_code == 200
        for piece in answer.iter_raw():
            received += piece
    assert received.count(b"data: ") == 2  # the two events sent, unwrapped, then the cut
    assert b'"response":' not in received  # unwrapped, as far as it went
    streams = [r.path for r in mock.state.records if r.path.endswith(":streamGenerateContent")]
    assert streams == ["/v1internal:streamGenerateContent"]
    assert _admin(sluice)["code-assist"]["state"] == "ok"


def test_events_are_unwrapped_one_by_one_with_their_framing_and_pacing(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    """Each upstream event reaches the client when it is sent, not batched with the next."""
    sluice, _ = _start(tmp_path, mock, sluice_factory, fallback=False)
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    headers = {"x-goog-api-key": CLIENT_KEY, "x-mock-delay-ms": "150", "x-mock-tokens": "4"}
    arrivals: list[tuple[float, bytes]] = []
    with (
        httpx.Client(base_url=sluice.url, timeout=30) as raw,
        raw.stream("POST", STREAM + "?alt=sse", json=body, headers=headers) as answer,
    ):
        assert answer.headers["content-type"].startswith("text/event-stream")
        assert "content-length" not in answer.headers
        for piece in answer.iter_raw():
            arrivals.append((time.monotonic(), piece))
    events = b"".join(piece for _, piece in arrivals).split(b"\r\n\r\n")
    assert events[-1] == b"" and len(events) == 5  # four events, each CRLF-framed as upstream framed it
    texts = [
        json.loads(e.removeprefix(b"data: "))["candidates"][0]["content"]["parts"][0]["text"]
        for e in events[:-1]
    ]
    assert texts == mock_tokens(4)
    # Paced as the upstream paced them: the last event came well after the first.
    first = next(t for t, piece in arrivals if b"data: " in piece)
    assert arrivals[-1][0] - first >= 0.3


async def test_200_concurrent_requests_at_token_expiry_cause_one_refresh(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    sluice, refresh = _start(tmp_path, mock, sluice_factory, fallback=False)
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    target = "/v1beta/models/gemini-x:generateContent"
    mock.state.token_lifetime = 1  # the first token lives a second: stale in half that
    async with httpx.AsyncClient(
        base_url=sluice.url,
        headers={"x-goog-api-key": CLIENT_KEY},
        timeout=60,
        limits=httpx.Limits(max_connections=200),
    ) as client:
        first = await client.post(target, json=body)
        assert first.status_code == 200
        assert mock.state.token_requests == 1
        mock.state.token_lifetime = 3600
        await asyncio.sleep(0.7)
        answers = await asyncio.gather(*(client.post(target, json=body) for _ in range(200)))
    assert [a.status_code for a in answers] == [200] * 200
    assert {a.json()["candidates"][0]["content"]["parts"][0]["text"] for a in answers} == {TEXT}
    assert mock.state.token_requests == 2, "one refresh for all 200"
    _assert_no_secrets(sluice.log(), refresh, mock)


def test_the_chat_api_streams_through_code_assist(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    sluice, refresh = _start(tmp_path, mock, sluice_factory, fallback=False)
    with httpx.Client(base_url=sluice.url, timeout=30) as client:
        reply = client.post(
            "/api/chat", json={"model": "gemini/gemini-x", "messages": [{"role": "user", "content": "hi"}]}
        )
    assert reply.status_code == 200
    texts = [
        json.loads(line[len("data: ") :])["text"]
        for block in reply.text.split("\n\n")
        if "event: token" in block
        for line in block.split("\n")
        if line.startswith("data: ")
    ]
    assert "".join(texts) == TEXT and "event: done" in reply.text
    assert mock.state.last(":streamGenerateContent").path == "/v1internal:streamGenerateContent"
    _assert_no_secrets(reply.text + sluice.log(), refresh, mock)


def test_with_nowhere_to_fall_back_the_client_gets_one_clean_gemini_error(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    sluice, refresh = _start(tmp_path, mock, sluice_factory, fallback=False)
    mock.state.code_assist_status = 500  # loadCodeAssist fails: no project to send requests to
    client = _client(sluice)
    with pytest.raises(genai.errors.ServerError) as info:
        client.models.generate_content(model="gemini-x", contents="hi")
    assert info.value.code == 502
    assert "refused Sluice's credentials (no Code Assist project)" in str(info.value)
    mock.state.code_assist_status = 401  # and a revoked OAuth path, answered by Code Assist itself
    with pytest.raises(genai.errors.ServerError) as refused:
        client.models.generate_content(model="gemini-x", contents="hi")
    assert "(HTTP 401)" in str(refused.value)
    _assert_no_secrets(str(info.value) + str(refused.value) + sluice.log(), refresh, mock)


def test_methods_code_assist_does_not_serve_go_to_the_api_key_without_a_failover(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    sluice, _ = _start(tmp_path, mock, sluice_factory, fallback=True)
    client = _client(sluice)
    embedded = client.models.embed_content(model="gemini-x", contents="hi")
    assert embedded.embeddings
    embed = next(r for r in mock.state.records if "mbedContent" in r.path)  # batchEmbedContents
    assert embed.headers["x-goog-api-key"] == CANARY_KEYS["GEMINI_API_KEY"]
    assert "".join(_streamed(client)) == TEXT  # and Code Assist still serves what it can
    assert mock.state.last(":streamGenerateContent").path == "/v1internal:streamGenerateContent"
    assert _admin(sluice)["code-assist"]["state"] == "ok"
    assert WARNING not in sluice.log()
