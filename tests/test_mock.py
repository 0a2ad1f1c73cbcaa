"""Tests of the mock LLM provider itself, over real sockets on 127.0.0.1.

The official SDKs are pointed directly at the mock: if they parse its output,
the mock's wire formats are realistic enough to test the proxy against.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from proxy.mock import MockHandle, MockState, mock_tokens, start_mock_in_thread

GUARD = 10.0  # seconds: hang guard for every streaming test
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mock() -> Iterator[MockHandle]:
    handle = start_mock_in_thread(port=0, default_tokens=12)
    yield handle
    handle.stop()


@pytest.fixture(autouse=True)
def _fresh(mock: MockHandle) -> None:
    mock.state.reset()


def text(n: int) -> str:
    return "".join(mock_tokens(n))


def oai(mock: MockHandle) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{mock.url}/v1", api_key="x", max_retries=0, timeout=GUARD)


def anth(mock: MockHandle) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=mock.url, api_key="x", max_retries=0, timeout=GUARD)


def gem(mock: MockHandle) -> genai.Client:
    opts = genai_types.HttpOptions(base_url=mock.url, timeout=int(GUARD * 1000))
    return genai.Client(api_key="x", http_options=opts)


async def read_chunks(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[float, bytes]]:
    async for data in resp.content.iter_any():
        yield time.monotonic(), data


# ------------------------------------------------------------------ basics
def test_tokens_are_deterministic_and_multibyte() -> None:
    toks = mock_tokens(30)
    assert toks[0] == "Hello"
    assert toks == mock_tokens(30)
    joined = "".join(toks)
    assert len(joined.encode()) > len(joined)  # has multi-byte UTF-8
    assert not {"\u2028", "\u2029", "\u0085"} & set(joined)


@pytest.mark.asyncio
async def test_port0_records_reset_and_404(mock: MockHandle) -> None:
    assert mock.port > 0 and mock.url == f"http://127.0.0.1:{mock.port}"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{mock.url}/v1/nope?x=1", headers={"X-Custom": "v"}) as r:
            assert r.status == 404
            assert (await r.json())["error"]["type"] == "invalid_request_error"
        async with s.get(f"{mock.url}/v1/nope", headers={"anthropic-version": "1"}) as r:
            assert (await r.json())["type"] == "error"
        async with s.get(f"{mock.url}/_mock/records") as r:
            listed = await r.json()
        assert [x["path"] for x in listed] == ["/v1/nope", "/v1/nope"]
        rec = mock.state.last("/nope")
        assert rec.query == "" and rec.headers["anthropic-version"] == "1"
        assert mock.state.records[0].headers["x-custom"] == "v"
        assert mock.state.records[0].query == "x=1"
        async with s.post(f"{mock.url}/_mock/reset") as r:
            assert r.status == 200
    assert mock.state.records == []
    with pytest.raises(AssertionError):
        mock.state.last()


# ------------------------------------------------------------------ OpenAI
@pytest.mark.asyncio
async def test_openai_chat_non_stream(mock: MockHandle) -> None:
    raw = await oai(mock).chat.completions.with_raw_response.create(
        model="gpt-x", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-mock-tokens": "5"}
    )
    out = raw.parse()
    assert out.choices[0].message.content == text(5)
    assert out.model == "gpt-x" and out.choices[0].finish_reason == "stop"
    assert out.usage is not None and out.usage.completion_tokens == 5
    rec = mock.state.last("/chat/completions")
    assert out.usage.prompt_tokens == max(1, rec.body_bytes // 4)
    assert raw.headers["x-request-id"].startswith("req_mock")
    rec = await mock.state.wait_for_end(rec.id, GUARD)
    assert rec.outcome == "completed" and rec.status == 200
    assert json.loads(rec.sent)["id"] == out.id


@pytest.mark.asyncio
async def test_openai_chat_stream_include_usage(mock: MockHandle) -> None:
    async def run() -> list[Any]:
        stream = await oai(mock).chat.completions.create(
            model="gpt-x",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        return [c async for c in stream]

    chunks = await asyncio.wait_for(run(), GUARD)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text(12)
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert all(c.usage is None for c in chunks[:-1])
    assert mock.state.last().sent.endswith(b"data: [DONE]\n\n")


@pytest.mark.asyncio
async def test_openai_responses(mock: MockHandle) -> None:
    client = oai(mock)
    resp = await client.responses.create(model="gpt-x", input="hi")
    assert resp.output_text == text(12) and resp.status == "completed"
    assert resp.usage is not None and resp.usage.output_tokens == 12

    async def run() -> list[Any]:
        stream = await client.responses.create(model="gpt-x", input="hi", stream=True)
        return [e async for e in stream]

    events = await asyncio.wait_for(run(), GUARD)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == mock_tokens(12)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert events[-1].response.output_text == text(12)


@pytest.mark.asyncio
async def test_openai_embeddings_and_models(mock: MockHandle) -> None:
    client = oai(mock)
    emb = await client.embeddings.create(model="emb", input=["a", "b"])
    assert [d.index for d in emb.data] == [0, 1] and len(emb.data[0].embedding) == 8
    one = await client.embeddings.create(model="emb", input="a")
    assert one.data[0].embedding == emb.data[0].embedding
    models = [m.id async for m in client.models.list()]
    assert models == ["gpt-mock"]
    assert (await client.models.retrieve("gpt-foo")).id == "gpt-foo"


@pytest.mark.asyncio
async def test_openai_rate_limit_error(mock: MockHandle) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        await oai(mock).chat.completions.create(
            model="m", messages=[], extra_headers={"x-mock-status": "429"}
        )
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert info.value.code == "rate_limit_exceeded"
    assert mock.state.last().outcome == "error_injected"


# --------------------------------------------------------------- Anthropic
@pytest.mark.asyncio
async def test_anthropic_messages(mock: MockHandle) -> None:
    client = anth(mock)
    msg = await client.messages.create(
        model="claude-x", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    assert msg.content[0].type == "text" and msg.content[0].text == text(12)
    assert msg.stop_reason == "end_turn" and msg.usage.output_tokens == 12

    async def run() -> tuple[str, list[str]]:
        async with client.messages.stream(
            model="claude-x", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            final = await stream.get_final_text()
        raw = await client.messages.create(
            model="claude-x", max_tokens=50, stream=True, messages=[{"role": "user", "content": "hi"}]
        )
        return final, [e.type async for e in raw]

    final, types = await asyncio.wait_for(run(), GUARD)
    assert final == text(12)
    # The SDK swallows ping events; they are checked on the raw bytes below.
    assert types[:2] == ["message_start", "content_block_start"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert b'event: ping\ndata: {"type": "ping"}\n\n' in mock.state.last().sent
    assert mock.state.last().headers["anthropic-version"]


@pytest.mark.asyncio
async def test_anthropic_models_and_overloaded(mock: MockHandle) -> None:
    client = anth(mock)
    assert [m.id async for m in client.models.list()] == ["claude-mock-1"]
    with pytest.raises(anthropic.InternalServerError) as info:
        await client.messages.create(
            model="c",
            max_tokens=5,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-mock-status": "529"},
        )
    assert info.value.status_code == 529
    assert info.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


# ------------------------------------------------------------------ Gemini
@pytest.mark.asyncio
async def test_gemini_generate_and_stream(mock: MockHandle) -> None:
    client = gem(mock).aio
    resp = await client.models.generate_content(model="gemini-x", contents="hi")
    assert resp.text == text(12)
    assert resp.usage_metadata is not None and resp.usage_metadata.candidates_token_count == 12

    async def run() -> list[str]:
        stream = await client.models.generate_content_stream(model="gemini-x", contents="hi")
        return [c.text or "" async for c in stream]

    parts = await asyncio.wait_for(run(), GUARD)
    assert parts == mock_tokens(12)
    rec = mock.state.last()
    assert rec.path == "/v1/models/gemini-x:streamGenerateContent" and rec.query == "alt=sse"
    assert "x-goog-api-key" in rec.headers and b"\r\n\r\n" in rec.sent


@pytest.mark.asyncio
async def test_gemini_models_count_embed_and_error(mock: MockHandle) -> None:
    client = gem(mock).aio
    names = [m.name async for m in await client.models.list()]
    assert names == ["models/gemini-mock"]
    count = await client.models.count_tokens(model="gemini-x", contents="hello")
    assert count.total_tokens == max(1, mock.state.last().body_bytes // 4)
    emb = await client.models.embed_content(model="emb", contents="hello")
    assert emb.embeddings and len(emb.embeddings[0].values or []) == 8
    with pytest.raises(genai_errors.ClientError) as info:
        await client.models.generate_content(
            model="g", contents="hi", config={"http_options": {"headers": {"x-mock-status": "429"}}}
        )
    assert info.value.code == 429 and info.value.status == "RESOURCE_EXHAUSTED"


@pytest.mark.asyncio
async def test_gemini_json_array_stream(mock: MockHandle) -> None:
    url = f"{mock.url}/v1beta/models/g:streamGenerateContent?key=x"
    hdrs = {"x-mock-tokens": "4", "x-mock-delay-ms": "20"}

    async def run() -> list[bytes]:
        async with aiohttp.ClientSession() as s, s.post(url, json={}, headers=hdrs) as r:
            assert r.content_type == "application/json"
            return [d async for _, d in read_chunks(r)]

    chunks = await asyncio.wait_for(run(), GUARD)
    body = b"".join(chunks)
    assert len(chunks) >= 4 and body.startswith(b"[{") and body.endswith(b"}]")
    items = json.loads(body)
    assert "".join(i["candidates"][0]["content"]["parts"][0]["text"] for i in items) == text(4)
    assert items[-1]["candidates"][0]["finishReason"] == "STOP"
    assert [i["usageMetadata"]["candidatesTokenCount"] for i in items] == [1, 2, 3, 4]


# -------------------------------------------------------- transport faults
@pytest.mark.asyncio
async def test_pacing_spreads_tokens(mock: MockHandle) -> None:
    hdrs = {"x-mock-tokens": "6", "x-mock-delay-ms": "30"}
    body = {"model": "m", "messages": [], "stream": True}

    async def run() -> list[float]:
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"{mock.url}/v1/chat/completions", json=body, headers=hdrs) as r,
        ):
            return [t async for t, _ in read_chunks(r)]

    times = await asyncio.wait_for(run(), GUARD)
    assert len(times) >= 6
    assert times[-1] - times[0] >= 0.1


@pytest.mark.asyncio
async def test_silence_then_continue(mock: MockHandle) -> None:
    hdrs = {
        "x-mock-tokens": "4",
        "x-mock-silence-after": "2",
        "x-mock-silence-ms": "200",
        "anthropic-version": "2023-06-01",
    }

    async def run() -> list[tuple[float, bytes]]:
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"{mock.url}/v1/messages", json={"model": "c", "stream": True}, headers=hdrs) as r,
        ):
            return [x async for x in read_chunks(r)]

    chunks = await asyncio.wait_for(run(), GUARD)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(chunks)]
    assert max(gaps) >= 0.18
    assert b"".join(d for _, d in chunks).count(b"content_block_delta\n") == 4
    rec = await mock.state.wait_for_end(mock.state.last().id, GUARD)
    assert rec.outcome == "completed"


@pytest.mark.asyncio
async def test_sent_equals_received_bytes(mock: MockHandle) -> None:
    body = {"model": "m", "messages": [], "stream": True}

    async def run() -> bytes:
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"{mock.url}/openai/v1/chat/completions", json=body) as r,
        ):
            assert r.headers["Content-Type"].startswith("text/event-stream")
            return await r.read()

    received = await asyncio.wait_for(run(), GUARD)
    rec = await mock.state.wait_for_end(mock.state.last().id, GUARD)
    assert rec.path == "/openai/v1/chat/completions"  # prefix routing, full path recorded
    assert rec.sent == received and rec.outcome == "completed"
    assert rec.first_byte_at is not None and rec.ended is not None
    assert rec.started <= rec.first_byte_at <= rec.ended


@pytest.mark.asyncio
async def test_drop_after_truncates_stream(mock: MockHandle) -> None:
    hdrs = {"x-mock-tokens": "8", "x-mock-drop-after": "3", "x-mock-delay-ms": "5"}
    body = {"model": "m", "messages": [], "stream": True}
    got = bytearray()

    async def run() -> None:
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"{mock.url}/v1/chat/completions", json=body, headers=hdrs) as r,
        ):
            async for _, data in read_chunks(r):
                got.extend(data)

    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(run(), GUARD)
    rec = await mock.state.wait_for_end(mock.state.last().id, GUARD)
    assert rec.outcome == "dropped"
    assert bytes(got) == rec.sent and got.count(b"data: ") == 4  # role chunk + 3 tokens
    assert b"[DONE]" not in got


@pytest.mark.asyncio
async def test_client_close_during_silence(mock: MockHandle) -> None:
    hdrs = {"x-mock-tokens": "6", "x-mock-silence-after": "2", "x-mock-silence-ms": "5000"}
    body = {"model": "m", "messages": [], "stream": True}

    async def run() -> float:
        async with aiohttp.ClientSession() as s:
            r = await s.post(f"{mock.url}/v1/chat/completions", json=body, headers=hdrs)
            got = b""
            while got.count(b"data: ") < 3:  # role chunk + 2 tokens, then silence
                got += await r.content.readany()
            r.close()  # drops the connection
            return time.monotonic()

    closed_at = await asyncio.wait_for(run(), GUARD)
    rec = await mock.state.wait_for_end(mock.state.last().id, GUARD)
    assert rec.outcome == "client_closed"
    assert rec.ended is not None and rec.ended - closed_at < 0.3


@pytest.mark.asyncio
async def test_headers_delay_stalls_before_status(mock: MockHandle) -> None:
    async def run() -> float:
        start = time.monotonic()
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{mock.url}/v1/models", headers={"x-mock-headers-delay-ms": "200"}) as r,
        ):
            assert r.status == 200
            return time.monotonic() - start

    assert await asyncio.wait_for(run(), GUARD) >= 0.19


@pytest.mark.asyncio
async def test_gzip_non_stream(mock: MockHandle) -> None:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as s,
        s.post(
            f"{mock.url}/v1/messages",
            json={"model": "c"},
            headers={"x-mock-gzip": "1", "x-mock-tokens": "3"},
        ) as r,
    ):
        raw = await r.read()
        assert r.headers["Content-Encoding"] == "gzip"
        assert int(r.headers["Content-Length"]) == len(raw)
        assert r.headers["request-id"].startswith("req_mock")
    assert json.loads(gzip.decompress(raw))["content"][0]["text"] == text(3)
    assert mock.state.last().sent == raw


@pytest.mark.asyncio
async def test_file_upload_is_hashed_streaming(mock: MockHandle) -> None:
    block = os.urandom(1 << 20)
    expected = hashlib.sha256(block * 20).hexdigest()

    async def gen() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield block

    async with aiohttp.ClientSession() as s, s.post(f"{mock.url}/v1/files", data=gen()) as r:
        out = await r.json()
    assert out["bytes"] == 20 << 20 and out["sha256"] == expected
    rec = mock.state.last("/files")
    assert rec.body_bytes == 20 << 20 and rec.body_sha256 == expected


@pytest.mark.asyncio
async def test_bytes_endpoint(mock: MockHandle) -> None:
    url = f"{mock.url}/_mock/bytes?size=300000&chunk=70000&delay_ms=10"

    async def run() -> bytes:
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            assert r.headers["Content-Length"] == "300000"
            return await r.read()

    data = await asyncio.wait_for(run(), GUARD)
    assert data == bytes(i % 251 for i in range(300000))
    rec = await mock.state.wait_for_end(mock.state.last().id, GUARD)
    assert rec.sent == data and rec.outcome == "completed"


def test_serve_mock_cli_entry() -> None:
    code = (
        "from proxy.mock import serve_mock\n"
        "serve_mock('127.0.0.1', 0, default_tokens=2, default_delay_ms=0,"
        " ready=lambda u: print(u, flush=True))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=GUARD)
        out = client.chat.completions.create(model="m", messages=[])
        assert out.choices[0].message.content == text(2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(GUARD) == 0
    finally:
        proc.kill()


def test_stop_is_idempotent_and_state_defaults() -> None:
    handle = start_mock_in_thread(default_tokens=3, default_delay_ms=1.5)
    assert isinstance(handle.state, MockState)
    assert (handle.state.default_tokens, handle.state.default_delay_ms) == (3, 1.5)
    handle.stop()
    handle.stop()
