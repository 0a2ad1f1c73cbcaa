"""The official Anthropic SDK, sync and async, through a real Sluice in front of the mock.

The client holds only CLIENT_KEY and changes nothing but ``base_url``; the
mock records what the upstream received, so every test also checks that the
upstream got the server-held key and never the client's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
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

SERVER_KEY = CANARY_KEYS["ANTHROPIC_API_KEY"]
UPSTREAM_PREFIX = "/anthropic-prefix"  # SLUICE_ANTHROPIC_UPSTREAM = {mock}/anthropic-prefix/
MESSAGES: Any = [{"role": "user", "content": "hi"}]
MODEL = "claude-x"


def sync_client(base_url: str, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=base_url, api_key=CLIENT_KEY, max_retries=0, timeout=GUARD, default_headers=headers
    )


def async_client(base_url: str, **headers: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=base_url, api_key=CLIENT_KEY, max_retries=0, timeout=GUARD, default_headers=headers
    )


def mock_headers(n: int) -> dict[str, str]:
    return {"x-mock-tokens": str(n)}


def upstream_record(mock: MockHandle, endpoint: str) -> MockRecord:
    """The request the mock got for ``/v1{endpoint}``: prefixed path, server key only."""
    rec = mock.state.last(endpoint)
    assert rec.path == f"{UPSTREAM_PREFIX}/v1{endpoint}"
    assert_upstream_credential(rec, "x-api-key", SERVER_KEY)
    assert rec.headers["anthropic-version"]  # the SDK's header, passed through
    return rec


def assert_usage(usage: Any, rec: MockRecord, n: int) -> None:
    assert (usage.input_tokens, usage.output_tokens) == (mock_input_tokens(rec), n)


@pytest.fixture(params=["", "/anthropic"], ids=["unprefixed", "prefixed"])
def base_url(request: pytest.FixtureRequest, sluice: SluiceProcess) -> str:
    return sluice.url + request.param


# --------------------------------------------------------------- non-streamed
def test_messages_sync(base_url: str, mock: MockHandle) -> None:
    with sync_client(base_url, **mock_headers(5)) as client:
        raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=50, messages=MESSAGES)
        msg = raw.parse()
        body = raw.http_response.content
    rec = upstream_record(mock, "/messages")
    assert msg.content[0].type == "text" and msg.content[0].text == text(5)
    assert msg.stop_reason == "end_turn" and msg.model == MODEL
    assert_usage(msg.usage, rec, 5)
    assert body == rec.sent  # the upstream's bytes, unchanged
    assert raw.headers["request-id"] == f"req_mock{rec.id}"


async def test_messages_async(base_url: str, mock: MockHandle) -> None:
    async with async_client(base_url, **mock_headers(6)) as client:
        msg = await asyncio.wait_for(
            client.messages.create(model=MODEL, max_tokens=50, messages=MESSAGES), GUARD
        )
    rec = upstream_record(mock, "/messages")
    assert msg.content[0].type == "text" and msg.content[0].text == text(6)
    assert_usage(msg.usage, rec, 6)


# ------------------------------------------------------------------- streamed
@pytest.mark.timeout(20)
def test_messages_stream_sync(base_url: str, mock: MockHandle) -> None:
    with (
        sync_client(base_url, **mock_headers(7)) as client,
        client.messages.stream(model=MODEL, max_tokens=50, messages=MESSAGES) as stream,
    ):
        events = list(stream)
        final = stream.get_final_message()
    rec = upstream_record(mock, "/messages")
    deltas = [
        e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"
    ]
    assert deltas == mock_tokens(7)
    [message_delta] = [e for e in events if e.type == "message_delta"]
    assert message_delta.usage.output_tokens == 7
    assert final.content[0].type == "text" and final.content[0].text == text(7)
    assert_usage(final.usage, rec, 7)


@pytest.mark.timeout(20)
async def test_messages_stream_async(base_url: str, mock: MockHandle) -> None:
    async def run() -> tuple[list[str], Any]:
        async with (
            async_client(base_url, **mock_headers(9)) as client,
            client.messages.stream(model=MODEL, max_tokens=50, messages=MESSAGES) as stream,
        ):
            texts = [t async for t in stream.text_stream]
            return texts, await stream.get_final_message()

    texts, final = await asyncio.wait_for(run(), GUARD)
    rec = upstream_record(mock, "/messages")
    assert texts == mock_tokens(9)
    assert final.content[0].text == text(9)
    assert_usage(final.usage, rec, 9)


@pytest.mark.timeout(20)
async def test_messages_raw_stream_async(base_url: str, mock: MockHandle) -> None:
    """``stream=True`` (no helper): the message_delta event carries the final usage."""

    async def run() -> list[Any]:
        async with async_client(base_url, **mock_headers(4)) as client:
            stream = await client.messages.create(model=MODEL, max_tokens=50, messages=MESSAGES, stream=True)
            return [e async for e in stream]

    events = await asyncio.wait_for(run(), GUARD)
    rec = upstream_record(mock, "/messages")
    assert [e.type for e in events][-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert events[0].type == "message_start"
    assert events[0].message.usage.input_tokens == mock_input_tokens(rec)
    assert events[-2].usage.output_tokens == 4
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == text(4)


# --------------------------------------------------------------------- models
def test_models_list_sync(base_url: str, mock: MockHandle) -> None:
    with sync_client(base_url) as client:
        ids = [m.id for m in client.models.list()]
    assert ids == ["claude-mock-1"]
    upstream_record(mock, "/models")  # /v1/models + anthropic-version → Anthropic


async def test_models_list_async(base_url: str, mock: MockHandle) -> None:
    async with async_client(base_url) as client:

        async def run() -> list[str]:
            return [m.id async for m in client.models.list()]

        ids = await asyncio.wait_for(run(), GUARD)
    assert ids == ["claude-mock-1"]
    upstream_record(mock, "/models")


# --------------------------------------------------------------------- errors
def test_rate_limit_sync(sluice: SluiceProcess, mock: MockHandle) -> None:
    headers = {"x-mock-status": "429", "x-mock-retry-after": "13"}
    with sync_client(sluice.url, **headers) as client, pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model=MODEL, max_tokens=50, messages=MESSAGES)
    exc = info.value
    assert exc.status_code == 429
    assert exc.response.headers["retry-after"] == "13"
    assert exc.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert exc.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Mock injected error 429"},
    }
    assert len(mock.state.records) == 1
    upstream_record(mock, "/messages")


async def test_rate_limit_async(sluice: SluiceProcess, mock: MockHandle) -> None:
    async with async_client(f"{sluice.url}/anthropic", **{"x-mock-status": "429"}) as client:
        with pytest.raises(anthropic.RateLimitError) as info:
            await asyncio.wait_for(
                client.messages.create(model=MODEL, max_tokens=50, messages=MESSAGES), GUARD
            )
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "7"  # the mock's default
    upstream_record(mock, "/messages")


def test_server_error_sync(sluice: SluiceProcess, mock: MockHandle) -> None:
    with (
        sync_client(sluice.url, **{"x-mock-status": "500"}) as client,
        pytest.raises(anthropic.InternalServerError) as info,
    ):
        client.messages.create(model=MODEL, max_tokens=50, messages=MESSAGES)
    assert info.value.status_code == 500
    assert info.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": "Mock injected error 500"},
    }
    upstream_record(mock, "/messages")


@pytest.mark.timeout(20)
async def test_server_error_streamed_async(sluice: SluiceProcess, mock: MockHandle) -> None:
    async def run() -> None:
        async with (
            async_client(sluice.url, **{"x-mock-status": "500"}) as client,
            client.messages.stream(model=MODEL, max_tokens=50, messages=MESSAGES) as stream,
        ):
            await stream.get_final_message()

    with pytest.raises(anthropic.InternalServerError) as info:
        await asyncio.wait_for(run(), GUARD)
    assert info.value.status_code == 500
    upstream_record(mock, "/messages")


def assert_sluice_502(exc: anthropic.APIStatusError, dead: SluiceProcess) -> None:
    assert exc.status_code == 502
    assert isinstance(exc.body, dict)
    assert exc.body["type"] == "error" and exc.body["error"]["type"] == "api_error"
    assert exc.body["error"]["message"].startswith("Sluice could not connect to the anthropic upstream")
    assert_no_canary(str(exc), exc.response.content, dead.log())


def test_unreachable_upstream_sync(mock: MockHandle, sluice_factory: SluiceFactory) -> None:
    dead = dead_upstream_sluice(mock, sluice_factory)
    with sync_client(dead.url) as client, pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model=MODEL, max_tokens=50, messages=MESSAGES)
    assert_sluice_502(info.value, dead)
    assert mock.state.records == []


async def test_unreachable_upstream_async(mock: MockHandle, sluice_factory: SluiceFactory) -> None:
    dead = dead_upstream_sluice(mock, sluice_factory)
    async with async_client(f"{dead.url}/anthropic") as client:
        with pytest.raises(anthropic.APIStatusError) as info:
            await asyncio.wait_for(
                client.messages.create(model=MODEL, max_tokens=50, messages=MESSAGES), GUARD
            )
    assert_sluice_502(info.value, dead)
    assert mock.state.records == []


# --------------------------------------------------------------------- pacing
@pytest.mark.timeout(20)
def test_stream_is_paced(sluice: SluiceProcess, mock: MockHandle) -> None:
    clock = DeltaClock()
    headers = {"x-mock-tokens": "8", "x-mock-delay-ms": "40"}
    with (
        sync_client(sluice.url, **headers) as client,
        client.messages.stream(model=MODEL, max_tokens=50, messages=MESSAGES) as stream,
    ):
        for delta in stream.text_stream:
            clock.add(delta)
    assert clock.texts == mock_tokens(8)
    assert_paced(clock.times)
