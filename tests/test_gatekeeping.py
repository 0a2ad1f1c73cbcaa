"""Client keys, limits, the access log and metrics, through the official SDKs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from proxy.keybook import create_key, revoke_key
from proxy.limits import Limits
from proxy.mock import MockHandle, mock_tokens
from tests.accesslog import wait_for_line
from tests.conftest import CANARIES, SluiceFactory, SluiceProcess, upstream_env

pytestmark = pytest.mark.timeout(60)


@dataclass
class Gatekept:
    sluice: SluiceProcess
    keys_file: Path
    access_log: Path
    secrets: dict[str, str]

    def wait_for_log(self, request_id: str) -> dict[str, object]:
        return wait_for_line([self.access_log], request_id)


KEYS = {
    "open": Limits(),
    "limited": Limits(rpm=2),
    "counted": Limits(rpm=1000),
    "single": Limits(concurrency=1),
    "revokable": Limits(),
}


@pytest.fixture(scope="module")
def gate(
    tmp_path_factory: pytest.TempPathFactory, mock: MockHandle, sluice_factory: SluiceFactory
) -> Iterator[Gatekept]:
    base = tmp_path_factory.mktemp("gate")
    keys_file, access_log = base / "keys.toml", base / "access.log"
    secrets = {name: create_key(keys_file, name, limits) for name, limits in KEYS.items()}
    secrets["gpt-only"] = create_key(keys_file, "gpt-only", Limits(), ("openai",), ("gpt-4o*",))
    secrets["gemini-flash"] = create_key(
        keys_file, "gemini-flash", Limits(), ("gemini",), ("gemini-*-flash",)
    )
    process = sluice_factory(
        **upstream_env(mock), SLUICE_KEYS_FILE=str(keys_file), SLUICE_ACCESS_LOG=str(access_log)
    )
    yield Gatekept(process, keys_file, access_log, secrets)
    everything = process.log() + access_log.read_text()
    for secret in (*CANARIES, *secrets.values()):
        assert secret not in everything, "a secret reached a log"


def _openai(gate: Gatekept, key: str, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gate.sluice.url}/v1", api_key=key, max_retries=0, **kwargs)  # type: ignore[arg-type]


def _anthropic(gate: Gatekept, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gate.sluice.url, api_key=key, max_retries=0)


def _gemini(gate: Gatekept, key: str) -> genai.Client:
    options = genai_types.HttpOptions(
        base_url=gate.sluice.url, retry_options=genai_types.HttpRetryOptions(attempts=1)
    )
    return genai.Client(api_key=key, http_options=options)


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


# --- authentication -------------------------------------------------------


def test_missing_key_is_401_in_each_providers_format(gate: Gatekept) -> None:
    with httpx.Client(base_url=gate.sluice.url) as client:
        oa = client.post("/v1/chat/completions", json=CHAT)
        an = client.post("/v1/messages", json={}, headers={"anthropic-version": "2023-06-01"})
        ge = client.post("/v1beta/models/gemini-2.0-flash:generateContent", json={})
    assert (oa.status_code, an.status_code, ge.status_code) == (401, 401, 401)
    assert oa.json()["error"]["code"] == "invalid_api_key"
    assert an.json()["error"]["type"] == "authentication_error"
    assert ge.json()["error"]["status"] == "UNAUTHENTICATED"


def test_unknown_key_raises_each_sdks_authentication_error(gate: Gatekept, mock: MockHandle) -> None:
    bogus = "sk-sluice-aaaaaaaaaaaa_notarealsecret"
    # (SDK clients are held in locals: openai 3.x closes a client's transport
    # when a temporary client is garbage-collected mid-call.)
    oa, an, ge = _openai(gate, bogus), _anthropic(gate, "not-even-a-sluice-key"), _gemini(gate, bogus)
    with pytest.raises(openai.AuthenticationError):
        oa.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    with pytest.raises(anthropic.AuthenticationError):
        an.messages.create(model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(genai_errors.ClientError) as info:
        ge.models.generate_content(model="gemini-2.0-flash", contents="hi")
    assert info.value.code == 401
    assert mock.state.records == []


def test_valid_key_passes_and_never_goes_upstream(gate: Gatekept, mock: MockHandle) -> None:
    key = gate.secrets["open"]
    client = _openai(gate, key)
    reply = client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert reply.choices[0].message.content == "".join(mock_tokens(12))
    seen = mock.state.last().headers
    assert key not in json.dumps(seen)
    # The key travels in Gemini's ?key= too, and is stripped there as well.
    with httpx.Client(base_url=gate.sluice.url) as client:
        ok = client.post(f"/v1beta/models/gemini-2.0-flash:generateContent?key={key}", json={})
    assert ok.status_code == 200
    assert key not in mock.state.last().query


def test_revoked_key_stops_working_without_restart(gate: Gatekept) -> None:
    client = _openai(gate, gate.secrets["revokable"])
    client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    revoke_key(gate.keys_file, "revokable")
    deadline = time.monotonic() + 5
    while True:
        try:
            client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        except openai.AuthenticationError:
            break
        assert time.monotonic() < deadline, "the revoked key still works"
        time.sleep(0.1)


def test_disallowed_model_and_provider_are_403(gate: Gatekept, mock: MockHandle) -> None:
    gpt_only = gate.secrets["gpt-only"]
    oa, an = _openai(gate, gpt_only), _anthropic(gate, gpt_only)
    oa.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    with pytest.raises(openai.PermissionDeniedError, match="o3"):
        oa.chat.completions.create(model="o3", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.PermissionDeniedError, match="anthropic"):
        an.messages.create(model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    ge = _gemini(gate, gate.secrets["gemini-flash"])
    assert ge.models.generate_content(model="gemini-2.5-flash", contents="hi").text
    with pytest.raises(genai_errors.ClientError) as info:
        ge.models.generate_content(model="gemini-2.5-pro", contents="hi")
    assert info.value.code == 403
    assert [r.path.rsplit("/", 1)[-1] for r in mock.state.records] == [
        "completions",
        "gemini-2.5-flash:generateContent",
    ]


# --- rate limits -----------------------------------------------------------


def test_over_the_rpm_limit_is_a_rate_limit_error_with_headers(gate: Gatekept, mock: MockHandle) -> None:
    client = _openai(gate, gate.secrets["limited"])
    first = client.chat.completions.with_raw_response.create(**CHAT)  # type: ignore[call-overload]
    assert first.headers["ratelimit-limit"] == "2"
    assert first.headers["ratelimit-remaining"] == "1"
    client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    headers = info.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["ratelimit-remaining"] == "0"
    assert len(mock.state.records) == 2  # the refused request never went upstream


def test_an_admitted_request_that_fails_upstream_still_carries_the_limit_headers(gate: Gatekept) -> None:
    # The limiter counted it, so the client is told what is left, whichever layer answered.
    failed = httpx.post(
        f"{gate.sluice.url}/v1/chat/completions",
        json=CHAT,
        headers={"authorization": f"Bearer {gate.secrets['counted']}", "x-mock-status": "500"},
    )
    assert failed.status_code == 500
    assert failed.headers["ratelimit-limit"] == "1000" and "x-request-id" in failed.headers
    unlimited = _openai(gate, gate.secrets["open"]).chat.completions.with_raw_response.create(**CHAT)  # type: ignore[call-overload]
    assert "ratelimit-limit" not in unlimited.headers and "x-request-id" in unlimited.headers


async def test_concurrency_slot_is_held_by_a_stream_and_released_at_its_end(
    gate: Gatekept, mock: MockHandle
) -> None:
    key = gate.secrets["single"]
    headers = {"authorization": f"Bearer {key}"}
    body = {**CHAT, "stream": True}
    async with httpx.AsyncClient(base_url=gate.sluice.url, headers=headers, timeout=10) as client:
        # 1. A slow stream holds the only slot; a second request is refused meanwhile.
        async with client.stream(
            "POST",
            "/v1/chat/completions",
            json=body,
            headers={"x-mock-tokens": "5", "x-mock-delay-ms": "100"},
        ) as slow:
            assert slow.status_code == 200
            refused = await client.post("/v1/chat/completions", json=CHAT)
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "rate_limit_exceeded"
            assert refused.headers["retry-after"]
            await slow.aread()
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        # 2. Released when the upstream fails mid-stream...
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/v1/chat/completions", json=body, headers={"x-mock-drop-after": "2"})
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        # 3. ...and when the client walks away during a silence.
        async with client.stream(
            "POST", "/v1/chat/completions", json=body,
            headers={"x-mock-silence-after": "1", "x-mock-silence-ms": "20000"},
        ) as abandoned:  # fmt: skip
            await abandoned.aiter_raw().__anext__()
        await asyncio.sleep(0.3)
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


# --- the access log, usage and metrics ---------------------------------------------

USAGE_CASES = {
    "openai-chat": ("/v1/chat/completions", CHAT),
    "openai-chat-stream": (
        "/v1/chat/completions",
        {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
    ),
    "openai-responses": ("/v1/responses", {"model": "gpt-4o-mini", "input": "hi"}),
    "openai-responses-stream": ("/v1/responses", {"model": "gpt-4o-mini", "input": "hi", "stream": True}),
    "gemini": (
        "/v1beta/models/gemini-2.0-flash:generateContent",
        {"contents": [{"parts": [{"text": "hi"}]}]},
    ),
    "gemini-sse": (
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
        {"contents": [{"parts": [{"text": "hi"}]}]},
    ),
    "gemini-array": (
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
        {"contents": [{"parts": [{"text": "hi"}]}]},
    ),
    "anthropic": ("/v1/messages", {"model": "claude-x", "max_tokens": 9, "messages": []}),
    "anthropic-stream": (
        "/v1/messages",
        {"model": "claude-x", "max_tokens": 9, "messages": [], "stream": True},
    ),
}


@pytest.mark.parametrize("case", list(USAGE_CASES))
def test_access_log_records_the_usage_the_provider_reported(
    case: str, gate: Gatekept, mock: MockHandle
) -> None:
    path, body = USAGE_CASES[case]
    key = gate.secrets["open"]
    headers = {
        "authorization": f"Bearer {key}",
        "x-goog-api-key": key,
        "anthropic-version": "2023-06-01",
        "x-mock-tokens": "7",
        "x-request-id": f"test-{case}",
    }
    if case.startswith("openai"):
        del headers["x-goog-api-key"], headers["anthropic-version"]
    with httpx.Client(base_url=gate.sluice.url) as client:
        reply = client.post(path, json=body, headers=headers)
    assert reply.status_code == 200
    assert reply.headers["x-request-id"] == f"test-{case}"
    line = gate.wait_for_log(f"test-{case}")
    record = mock.state.last()
    input_tokens = max(1, record.body_bytes // 4)  # the mock's own formula
    assert line["usage"] == {"input": input_tokens, "output": 7, "total": input_tokens + 7}
    assert line["key"] == "open"
    assert line["outcome"] == "ok"
    assert line["status"] == 200
    assert line["bytes_out"] == len(reply.content)
    assert line["provider"] == case.split("-")[0]
    assert line["model"]
    assert "?" not in str(line["path"])
    assert isinstance(line["ttfb_ms"], float) and isinstance(line["duration_ms"], float)


def test_access_log_outcomes_and_generated_request_ids(gate: Gatekept, mock: MockHandle) -> None:
    key = gate.secrets["open"]
    with httpx.Client(base_url=gate.sluice.url, headers={"authorization": f"Bearer {key}"}) as client:
        refused = client.post("/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer nope"})
        failed = client.post("/v1/chat/completions", json=CHAT, headers={"x-mock-status": "401"})
        bad = client.post("/v1/%2e%2e/x", json=CHAT)
    outcomes = {}
    for response in (refused, failed, bad):
        request_id = response.headers["x-request-id"]
        assert len(request_id) == 32  # generated
        outcomes[response.status_code] = gate.wait_for_log(request_id)["outcome"]
    assert outcomes == {401: "rejected_auth", 502: "upstream_error", 400: "bad_request"}


def test_metrics_count_requests_and_tokens_without_secrets(gate: Gatekept) -> None:
    client = _openai(gate, gate.secrets["open"])
    client.chat.completions.create(**CHAT, extra_headers={"x-mock-tokens": "5"})  # type: ignore[call-overload]
    with httpx.Client(base_url=gate.sluice.url) as client:
        text = client.get("/metrics").text
    assert 'sluice_requests_total{provider="openai",status="200",outcome="ok"}' in text
    assert 'sluice_tokens_total{provider="openai",key="open",direction="output"}' in text
    assert 'sluice_auth_rejections_total{reason="missing"}' in text
    assert "sluice_time_to_first_byte_seconds_bucket" in text
    for secret in (*CANARIES, *gate.secrets.values()):
        assert secret not in text


def test_health_endpoints_need_no_key(gate: Gatekept) -> None:
    with httpx.Client(base_url=gate.sluice.url) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").json()["status"] == "ready"
        assert client.get("/metrics").status_code == 200


# --- configuration of the chain ----------------------------------------------


def test_own_middleware_from_the_config_file(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    config = tmp_path / "sluice.toml"
    config.write_text(
        '[middleware]\nchain = ["access_log", "examples.team_header:TeamHeader"]\n'
        '[middleware.options."examples.team_header:TeamHeader"]\nteam = "research"\nmax_output_tokens = 100\n'
    )
    root = Path(__file__).resolve().parent.parent
    process = sluice_factory(**upstream_env(mock), SLUICE_CONFIG=str(config), PYTHONPATH=str(root))
    with httpx.Client(base_url=process.url) as client:
        ok = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 50})
        too_many = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 500})
    assert ok.status_code == 200
    assert mock.state.last().headers["x-team"] == "research"
    assert too_many.status_code == 400
    assert "ceiling" in too_many.json()["error"]["message"]


def test_header_pairs_as_lists_from_an_own_layer_pass_every_later_layer(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    # ASGI allows [name, value] lists; compiled code that unpacks typed tuples
    # raised TypeError on them, as a 500 (tests/list_pairs.py).
    config = tmp_path / "sluice.toml"
    chain = '["tests.list_pairs:ListPairs", "access_log", "auth", "rate_limit"]'
    config.write_text(f"[middleware]\nchain = {chain}\n")
    keys_file = tmp_path / "keys.toml"
    key = create_key(keys_file, "listed", Limits(rpm=1000, concurrency=5))
    root = Path(__file__).resolve().parent.parent
    process = sluice_factory(
        **upstream_env(mock), SLUICE_CONFIG=str(config), PYTHONPATH=str(root),
        SLUICE_KEYS_FILE=str(keys_file), SLUICE_ACCESS_LOG=str(tmp_path / "access.log"),
    )  # fmt: skip
    hop = {"connection": "keep-alive, x-hop", "x-hop": "1", "x-request-id": "listed-1"}
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 300_000}]}  # read in several parts
    with httpx.Client(base_url=process.url, headers={"authorization": f"Bearer {key}"}) as client:
        for body in (CHAT, big, {**CHAT, "stream": True}):
            response = client.post("/v1/chat/completions", json=body, headers=hop)
            assert response.status_code == 200, response.text
            assert response.headers["x-listed"] == "response"
            assert response.headers["x-request-id"] == "listed-1"
            assert "ratelimit-remaining" in response.headers
            seen = mock.state.last("/chat/completions")
            assert seen.headers["x-listed"] == "request"
            assert "x-hop" not in seen.headers and "key" not in seen.headers.get("authorization", "")
            assert seen.body_bytes == len(response.request.content)


def test_include_usage_setting_makes_every_openai_stream_accountable(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    log = tmp_path / "access.log"
    process = sluice_factory(
        **upstream_env(mock), SLUICE_OPENAI_INCLUDE_USAGE="true", SLUICE_ACCESS_LOG=str(log)
    )
    client = openai.OpenAI(base_url=f"{process.url}/v1", api_key="x")
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_headers={"x-mock-tokens": "4"},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    sent = json.loads(mock.state.last("/chat/completions").headers.get("content-length", "0") or 0)
    assert sent > 0
    deadline = time.monotonic() + 5
    while not log.exists() or '"output":4' not in log.read_text():
        assert time.monotonic() < deadline, "usage missing from the access log"
        time.sleep(0.05)


def test_in_flight_gauge_returns_to_zero_for_every_label(gate: Gatekept) -> None:
    """Sluice's own API learns its provider late: the gauge must still not drift."""
    key = gate.secrets["open"]
    with httpx.Client(base_url=gate.sluice.url, headers={"authorization": f"Bearer {key}"}) as client:
        client.post("/v1/chat/completions", json=CHAT)
        client.post(
            "/api/chat", json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        )
        text = client.get("/metrics").text
    gauges = [line for line in text.splitlines() if line.startswith("sluice_in_flight_requests{")]
    assert gauges, text
    # /metrics itself is served outside the gate, so every gauge is back to 0.
    assert all(line.endswith(" 0") for line in gauges), gauges
