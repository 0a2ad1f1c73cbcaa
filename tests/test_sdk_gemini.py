"""The official google-genai SDK, sync and async, through a real Sluice in front of the mock.

The client holds only CLIENT_KEY and changes nothing but ``base_url`` (and,
in some tests, ``api_version``). google-genai 3.x defaults to API version
``v1``, so its un-prefixed requests share ``/v1/...`` with OpenAI and are told
apart by the ``x-goog-api-key`` header. The Gemini upstream has no prefix.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qsl

import httpx
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

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

SERVER_KEY = CANARY_KEYS["GEMINI_API_KEY"]
MODEL = "gemini-x"


def make_client(base_url: str, api_version: str | None = None, **headers: str) -> genai.Client:
    options = types.HttpOptions(
        base_url=base_url,
        api_version=api_version,
        headers=headers,
        timeout=int(GUARD * 1000),
        retry_options=types.HttpRetryOptions(attempts=1),  # no retries: errors surface at once
    )
    return genai.Client(api_key=CLIENT_KEY, http_options=options)


def mock_headers(n: int) -> dict[str, str]:
    return {"x-mock-tokens": str(n)}


def upstream_record(mock: MockHandle, path: str) -> MockRecord:
    """The request the mock got for ``path``: server key in x-goog-api-key, none in the query."""
    rec = mock.state.last(path)
    assert rec.path == path
    assert_upstream_credential(rec, "x-goog-api-key", SERVER_KEY)
    assert "key" not in dict(parse_qsl(rec.query, keep_blank_values=True))
    return rec


def assert_usage(usage: types.GenerateContentResponseUsageMetadata | None, rec: MockRecord, n: int) -> None:
    assert usage is not None
    prompt = mock_input_tokens(rec)
    assert (usage.prompt_token_count, usage.candidates_token_count, usage.total_token_count) == (
        prompt,
        n,
        prompt + n,
    )


class Route:
    """A client base URL and API version, and the upstream path prefix they must reach."""

    def __init__(self, base_url: str, api_version: str | None, upstream_version: str) -> None:
        self.base_url = base_url
        self.api_version = api_version
        self.upstream_version = upstream_version

    def client(self, **headers: str) -> genai.Client:
        return make_client(self.base_url, self.api_version, **headers)

    def path(self, rest: str) -> str:
        return f"/{self.upstream_version}{rest}"


@pytest.fixture(
    params=[
        ("", None, "v1"),
        ("/gemini", None, "v1"),
        ("", "v1beta", "v1beta"),
        ("/gemini", "v1beta", "v1beta"),
    ],
    ids=["unprefixed-v1", "prefixed-v1", "unprefixed-v1beta", "prefixed-v1beta"],
)
def route(request: pytest.FixtureRequest, sluice: SluiceProcess) -> Route:
    suffix, api_version, upstream_version = request.param
    return Route(sluice.url + suffix, api_version, upstream_version)


# --------------------------------------------------------------- non-streamed
def test_generate_sync(route: Route, mock: MockHandle) -> None:
    with route.client(**mock_headers(5)) as client:
        resp = client.models.generate_content(model=MODEL, contents="hi")
    rec = upstream_record(mock, route.path(f"/models/{MODEL}:generateContent"))
    assert rec.query == ""
    assert resp.text == text(5)
    assert resp.candidates and resp.candidates[0].finish_reason == types.FinishReason.STOP
    assert_usage(resp.usage_metadata, rec, 5)


async def test_generate_async(route: Route, mock: MockHandle) -> None:
    async with route.client(**mock_headers(6)).aio as client:
        resp = await asyncio.wait_for(client.models.generate_content(model=MODEL, contents="hi"), GUARD)
    rec = upstream_record(mock, route.path(f"/models/{MODEL}:generateContent"))
    assert resp.text == text(6)
    assert_usage(resp.usage_metadata, rec, 6)


# ------------------------------------------------------------------- streamed
@pytest.mark.timeout(20)
def test_generate_stream_sync(route: Route, mock: MockHandle) -> None:
    with route.client(**mock_headers(7)) as client:
        chunks = list(client.models.generate_content_stream(model=MODEL, contents="hi"))
    rec = upstream_record(mock, route.path(f"/models/{MODEL}:streamGenerateContent"))
    assert rec.query == "alt=sse"
    assert [c.text for c in chunks] == mock_tokens(7)
    assert_usage(chunks[-1].usage_metadata, rec, 7)


@pytest.mark.timeout(20)
async def test_generate_stream_async(route: Route, mock: MockHandle) -> None:
    async def run() -> list[types.GenerateContentResponse]:
        async with route.client(**mock_headers(9)).aio as client:
            stream = await client.models.generate_content_stream(model=MODEL, contents="hi")
            return [c async for c in stream]

    chunks = await asyncio.wait_for(run(), GUARD)
    rec = upstream_record(mock, route.path(f"/models/{MODEL}:streamGenerateContent"))
    assert rec.query == "alt=sse"
    assert "".join(c.text or "" for c in chunks) == text(9)
    assert_usage(chunks[-1].usage_metadata, rec, 9)


# --------------------------------------------------------------------- models
def test_models_list_sync(route: Route, mock: MockHandle) -> None:
    with route.client() as client:
        names = [m.name for m in client.models.list()]
    assert names == ["models/gemini-mock"]
    upstream_record(mock, route.path("/models"))  # /v1/models + x-goog-api-key → Gemini


async def test_models_list_async(route: Route, mock: MockHandle) -> None:
    async def run() -> list[str | None]:
        async with route.client().aio as client:
            return [m.name async for m in await client.models.list()]

    assert await asyncio.wait_for(run(), GUARD) == ["models/gemini-mock"]
    upstream_record(mock, route.path("/models"))


# ------------------------------------------------- ?key= in the query (httpx)
@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/v1beta/models/gemini-x:streamGenerateContent", f"alt=sse&key={CLIENT_KEY}"),
        ("/v1/models/gemini-x:streamGenerateContent", f"key={CLIENT_KEY}&alt=sse"),  # ?key= alone routes
        ("/gemini/v1/models/gemini-x:streamGenerateContent", f"alt=sse&key={CLIENT_KEY}&key={CLIENT_KEY}"),
    ],
    ids=["v1beta", "v1-routed-by-key", "prefixed-repeated-key"],
)
def test_query_key_is_replaced(sluice: SluiceProcess, mock: MockHandle, path: str, query: str) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    with httpx.Client(timeout=GUARD) as http:
        resp = http.post(f"{sluice.url}{path}?{query}", json=body, headers=mock_headers(3))
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: ")]
    assert "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events) == text(3)
    rec = upstream_record(mock, path.removeprefix("/gemini"))
    assert rec.query == "alt=sse"  # the key is gone, the rest intact
    assert resp.content == rec.sent


# --------------------------------------------------------------------- errors
def test_rate_limit_sync(sluice: SluiceProcess, mock: MockHandle) -> None:
    headers = {"x-mock-status": "429", "x-mock-retry-after": "13"}
    with make_client(sluice.url, **headers) as client, pytest.raises(genai_errors.ClientError) as info:
        client.models.generate_content(model=MODEL, contents="hi")
    exc = info.value
    assert exc.code == 429 and exc.status == "RESOURCE_EXHAUSTED"
    assert exc.message == "Mock injected error 429"
    assert exc.response.headers["retry-after"] == "13"
    assert len(mock.state.records) == 1  # not retried
    upstream_record(mock, f"/v1/models/{MODEL}:generateContent")


@pytest.mark.timeout(20)
async def test_rate_limit_streamed_async(sluice: SluiceProcess, mock: MockHandle) -> None:
    async def run() -> None:
        async with make_client(f"{sluice.url}/gemini", "v1beta", **{"x-mock-status": "429"}).aio as client:
            async for _ in await client.models.generate_content_stream(model=MODEL, contents="hi"):
                pass

    with pytest.raises(genai_errors.ClientError) as info:
        await asyncio.wait_for(run(), GUARD)
    exc = info.value
    assert exc.code == 429 and exc.status == "RESOURCE_EXHAUSTED"
    assert exc.response.headers["retry-after"] == "7"  # the mock's default
    assert len(mock.state.records) == 1
    upstream_record(mock, f"/v1beta/models/{MODEL}:streamGenerateContent")


def test_server_error_sync(sluice: SluiceProcess, mock: MockHandle) -> None:
    with (
        make_client(sluice.url, "v1beta", **{"x-mock-status": "500"}) as client,
        pytest.raises(genai_errors.ServerError) as info,
    ):
        client.models.generate_content(model=MODEL, contents="hi")
    assert info.value.code == 500 and info.value.status == "INTERNAL"
    upstream_record(mock, f"/v1beta/models/{MODEL}:generateContent")


async def test_server_error_async(sluice: SluiceProcess, mock: MockHandle) -> None:
    async with make_client(sluice.url, **{"x-mock-status": "500"}).aio as client:
        with pytest.raises(genai_errors.ServerError) as info:
            await asyncio.wait_for(client.models.generate_content(model=MODEL, contents="hi"), GUARD)
    assert info.value.code == 500
    upstream_record(mock, f"/v1/models/{MODEL}:generateContent")


def assert_sluice_502(exc: genai_errors.APIError, dead: SluiceProcess) -> None:
    assert exc.code == 502 and exc.status == "UNAVAILABLE"
    assert exc.message.startswith("Sluice could not connect to the gemini upstream")
    assert_no_canary(str(exc), json.dumps(exc.details), dead.log())


def test_unreachable_upstream_sync(mock: MockHandle, sluice_factory: SluiceFactory) -> None:
    dead = dead_upstream_sluice(mock, sluice_factory)
    with make_client(dead.url) as client, pytest.raises(genai_errors.ServerError) as info:
        client.models.generate_content(model=MODEL, contents="hi")
    assert_sluice_502(info.value, dead)
    assert_no_canary(info.value.response.content)
    assert mock.state.records == []


async def test_unreachable_upstream_async(mock: MockHandle, sluice_factory: SluiceFactory) -> None:
    dead = dead_upstream_sluice(mock, sluice_factory)
    async with make_client(f"{dead.url}/gemini", "v1beta").aio as client:
        with pytest.raises(genai_errors.ServerError) as info:
            await asyncio.wait_for(client.models.generate_content(model=MODEL, contents="hi"), GUARD)
    assert_sluice_502(info.value, dead)
    assert mock.state.records == []


# --------------------------------------------------------------------- pacing
@pytest.mark.timeout(20)
def test_stream_is_paced(sluice: SluiceProcess, mock: MockHandle) -> None:
    clock = DeltaClock()
    headers = {"x-mock-tokens": "8", "x-mock-delay-ms": "40"}
    with make_client(sluice.url, **headers) as client:
        for chunk in client.models.generate_content_stream(model=MODEL, contents="hi"):
            clock.add(chunk.text)
    assert clock.texts == mock_tokens(8)
    assert_paced(clock.times)
