"""The official OpenAI SDK, sync and async, through a real Sluice in front of the mock.

The client holds only CLIENT_KEY and changes nothing but ``base_url``; the
mock records what the upstream received, so every test also checks that the
upstream got the server-held key and never the client's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from proxy.mock import MockHandle, MockRecord, mock_tokens
from tests.conftest import CANARY_KEYS, CLIENT_KEY, SluiceFactory, SluiceProcess, assert_no_canary
from tests.helpers import (
    GUARD,
    DeltaClock,
    assert_paced,
    assert_upstream_credential,
    dead_upstream_sluice,
    mock_input_tokens,
    text,
)

SERVER_KEY = CANARY_KEYS["OPENAI_API_KEY"]
UPSTREAM_PREFIX = "/openai-prefix"  # SLUICE_OPENAI_UPSTREAM = {mock}/openai-prefix
MESSAGES: Any = [{"role": "user", "content": "hi"}]


def sync_client(base_url: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=base_url, api_key=CLIENT_KEY, max_retries=0, timeout=GUARD, default_headers=headers
    )


def async_client(base_url: str, **headers: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=base_url, api_key=CLIENT_KEY, max_retries=0, timeout=GUARD, default_headers=headers
    )


def mock_headers(n: int) -> dict[str, str]:
    return {"x-mock-tokens": str(n)}


def upstream_record(mock: MockHandle, endpoint: str) -> MockRecord:
    """The request the mock got for ``/v1{endpoint}``: prefixed path, server key only."""
    rec = mock.state.last(endpoint)
    assert rec.path == f"{UPSTREAM_PREFIX}/v1{endpoint}"
    assert_upstream_credential(rec, "authorization", f"Bearer {SERVER_KEY}")
    return rec


def assert_chat_usage(usage: Any, rec: MockRecord, n: int) -> None:
    assert usage is not None
    prompt = mock_input_tokens(rec)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (prompt, n, prompt + n)


def assert_responses_usage(usage: Any, rec: MockRecord, n: int) -> None:
    assert usage is not None
    prompt = mock_input_tokens(rec)
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (prompt, n, prompt + n)


@pytest.fixture(params=["/v1", "/openai/v1"], ids=["unprefixed", "prefixed"])
def base_url(request: pytest.FixtureRequest, sluice: SluiceProcess) -> str:
    return sluice.url + request.param


# ------------------------------------------------------------ chat, non-streamed
def test_chat_sync(base_url: str, mock: MockHandle) -> None:
    with sync_client(base_url, **mock_headers(5)) as client:
        raw = client.chat.completions.with_raw_response.create(model="gpt-x", messages=MESSAGES)
        out = raw.parse()
        body = raw.http_response.content
    rec = upstream_record(mock, "/chat/completions")
    assert out.choices[0].message.content == text(5)
    assert out.model == "gpt-x" and out.choices[0].finish_reason == "stop"
    assert_chat_usage(out.usage, rec, 5)
    assert body == rec.sent  # the upstream's bytes, unchanged
    # Sluice's own id takes X-Request-ID; the provider's is kept under another name.
    assert raw.headers["x-upstream-request-id"] == f"req_mock{rec.id}"
    assert len(raw.headers["x-request-id"]) == 32


async def test_chat_async(base_url: str, mock: MockHandle) -> None:
    async with async_client(base_url, **mock_headers(6)) as client:
        out = await asyncio.wait_for(client.chat.completions.create(model="gpt-x", messages=MESSAGES), GUARD)
    rec = upstream_record(mock, "/chat/completions")
    assert out.choices[0].message.content == text(6)
    assert_chat_usage(out.usage, rec, 6)


# ---------------------------------------------------------------- chat, streamed
@pytest.mark.timeout(20)
def test_chat_stream_sync(base_url: str, mock: MockHandle) -> None:
    with sync_client(base_url, **mock_headers(7)) as client:
        stream = client.chat.completions.create(
            model="gpt-x", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
    rec = upstream_record(mock, "/chat/completions")
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert deltas == mock_tokens(7)
    assert chunks[-1].choices == []
    assert_chat_usage(chunks[-1].usage, rec, 7)


@pytest.mark.timeout(20)
async def test_chat_stream_async(base_url: str, mock: MockHandle) -> None:
    async def run() -> list[Any]:
        async with async_client(base_url, **mock_headers(9)) as client:
            stream = await client.chat.completions.create(
                model="gpt-x", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
            return [c async for c in stream]

    chunks = await asyncio.wait_for(run(), GUARD)
    rec = upstream_record(mock, "/chat/completions")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text(9)
    assert chunks[-1].choices == []
    assert_chat_usage(chunks[-1].usage, rec, 9)


# ------------------------------------------------------------------ responses API
def test_responses_sync(base_url: str, mock: MockHandle) -> None:
    with sync_client(base_url, **mock_headers(4)) as client:
        resp = client.responses.create(model="gpt-x", input="hi")
    rec = upstream_record(mock, "/responses")
    assert resp.output_text == text(4) and resp.status == "completed"
    assert_responses_usage(resp.usage, rec, 4)


async def test_responses_async(base_url: str, mock: MockHandle) -> None:
    async with async_client(base_url, **mock_headers(3)) as client:
        resp = await asyncio.wait_for(client.responses.create(model="gpt-x", input="hi"), GUARD)
    rec = upstream_record(mock, "/responses")
    assert resp.output_text == text(3)
    assert_responses_usage(resp.usage, rec, 3)


@pytest.mark.timeout(20)
def test_responses_stream_sync(base_url: str, mock: MockHandle) -> None:
    with sync_client(base_url, **mock_headers(6)) as client:
        events = list(client.responses.create(model="gpt-x", input="hi", stream=True))
    rec = upstream_record(mock, "/responses")
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == mock_tokens(6)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1]
    assert done.type == "response.completed"
    assert done.response.output_text == text(6)
    assert_responses_usage(done.response.usage, rec, 6)


@pytest.mark.timeout(20)
async def test_responses_stream_async(base_url: str, mock: MockHandle) -> None:
    async def run() -> list[Any]:
        async with async_client(base_url, **mock_headers(5)) as client:
            stream = await client.responses.create(model="gpt-x", input="hi", stream=True)
            return [e async for e in stream]

    events = await asyncio.wait_for(run(), GUARD)
    rec = upstream_record(mock, "/responses")
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == text(5)
    done = events[-1]
    assert done.type == "response.completed"
    assert_responses_usage(done.response.usage, rec, 5)


# -------------------------------------------------------------------- models
def test_models_list_sync(base_url: str, mock: MockHandle) -> None:
    with sync_client(base_url) as client:
        ids = [m.id for m in client.models.list()]
    assert ids == ["gpt-mock"]
    upstream_record(mock, "/models")  # /v1/models without hints → OpenAI


async def test_models_list_async(base_url: str, mock: MockHandle) -> None:
    async with async_client(base_url) as client:

        async def run() -> list[str]:
            return [m.id async for m in client.models.list()]

        ids = await asyncio.wait_for(run(), GUARD)
    assert ids == ["gpt-mock"]
    upstream_record(mock, "/models")


# -------------------------------------------------------------------- errors
def test_rate_limit_sync(sluice: SluiceProcess, mock: MockHandle) -> None:
    headers = {"x-mock-status": "429", "x-mock-retry-after": "13"}
    with sync_client(f"{sluice.url}/v1", **headers) as client, pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-x", messages=MESSAGES)
    exc = info.value
    assert exc.status_code == 429 and exc.code == "rate_limit_exceeded"
    assert exc.response.headers["retry-after"] == "13"
    assert exc.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(mock.state.records) == 1
    upstream_record(mock, "/chat/completions")


async def test_rate_limit_async(sluice: SluiceProcess, mock: MockHandle) -> None:
    async with async_client(f"{sluice.url}/openai/v1", **{"x-mock-status": "429"}) as client:
        with pytest.raises(openai.RateLimitError) as info:
            await asyncio.wait_for(client.chat.completions.create(model="gpt-x", messages=MESSAGES), GUARD)
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "7"  # the mock's default
    upstream_record(mock, "/chat/completions")


def test_server_error_sync(sluice: SluiceProcess, mock: MockHandle) -> None:
    with (
        sync_client(f"{sluice.url}/v1", **{"x-mock-status": "500"}) as client,
        pytest.raises(openai.InternalServerError) as info,
    ):
        client.responses.create(model="gpt-x", input="hi")
    assert info.value.status_code == 500
    assert info.value.body == {
        "message": "Mock injected error 500",
        "type": "server_error",
        "param": None,
        "code": "server_error",
    }
    upstream_record(mock, "/responses")


async def test_server_error_async(sluice: SluiceProcess, mock: MockHandle) -> None:
    async with async_client(f"{sluice.url}/v1", **{"x-mock-status": "500"}) as client:
        with pytest.raises(openai.InternalServerError) as info:
            await asyncio.wait_for(client.chat.completions.create(model="gpt-x", messages=MESSAGES), GUARD)
    assert info.value.status_code == 500
    upstream_record(mock, "/chat/completions")


def assert_sluice_502(exc: openai.APIStatusError, dead: SluiceProcess) -> None:
    assert exc.status_code == 502
    assert isinstance(exc.body, dict)
    assert exc.body["message"].startswith("Sluice could not connect to the openai upstream")
    assert exc.body["code"] == "bad_gateway"
    assert_no_canary(str(exc), exc.response.content, dead.log())


def test_unreachable_upstream_sync(mock: MockHandle, sluice_factory: SluiceFactory) -> None:
    dead = dead_upstream_sluice(mock, sluice_factory)
    with sync_client(f"{dead.url}/v1") as client, pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="gpt-x", messages=MESSAGES)
    assert_sluice_502(info.value, dead)
    assert mock.state.records == []


async def test_unreachable_upstream_async(mock: MockHandle, sluice_factory: SluiceFactory) -> None:
    dead = dead_upstream_sluice(mock, sluice_factory)
    async with async_client(f"{dead.url}/openai/v1") as client:
        with pytest.raises(openai.APIStatusError) as info:
            await asyncio.wait_for(client.chat.completions.create(model="gpt-x", messages=MESSAGES), GUARD)
    assert_sluice_502(info.value, dead)


# -------------------------------------------------------------------- pacing
@pytest.mark.timeout(20)
def test_stream_is_paced(sluice: SluiceProcess, mock: MockHandle) -> None:
    clock = DeltaClock()
    headers = {"x-mock-tokens": "8", "x-mock-delay-ms": "40"}
    with sync_client(f"{sluice.url}/v1", **headers) as client:
        for chunk in client.chat.completions.create(model="gpt-x", messages=MESSAGES, stream=True):
            if chunk.choices:
                clock.add(chunk.choices[0].delta.content)
    assert clock.texts == mock_tokens(8)
    assert_paced(clock.times)
