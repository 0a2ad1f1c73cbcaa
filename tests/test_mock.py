"""Tests of the mock LLM provider itself, over real sockets on 127.0.0.1.

The official SDKs are pointed directly at the mock: if they parse its output,
the mock's wire formats are realistic enough to test the proxy against.
"""

from __future__ import annotations

import asyncio
import base64
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
import google.auth.transport.requests
import httpx
import openai
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google import genai
from google.auth import crypt, exceptions, jwt
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from google.oauth2 import service_account

from proxy.mock import MockHandle, MockState, mock_tokens, start_mock_in_thread
from tests.service_account import make_service_account

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


# ------------------------------------- credentials: key rules, OAuth2, Vertex
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
VERTEX = "/v1/projects/mock-project/locations/us-central1/publishers/google/models/gemini-2.0-flash"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@pytest.fixture(scope="module")
def http(mock: MockHandle) -> Iterator[httpx.Client]:
    # One client for the module: each new httpx client costs ~50 ms of TLS setup.
    with httpx.Client(base_url=mock.url, timeout=GUARD) as client:
        yield client


@pytest.fixture(scope="module")
def sa_file(mock: MockHandle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_service_account(mock, tmp_path_factory.mktemp("sa"))


def sa_credentials(path: Path) -> service_account.Credentials:
    return service_account.Credentials.from_service_account_file(str(path), scopes=SCOPES)


def sa_token(path: Path) -> str:
    creds = sa_credentials(path)
    creds.refresh(google.auth.transport.requests.Request())
    assert isinstance(creds.token, str)
    return creds.token


def vertex_sse(http: httpx.Client, token: str, n: int = 5) -> tuple[int, str, list[dict[str, Any]]]:
    """Stream ``n`` tokens from the Vertex route: (status, text, SSE chunks)."""
    url = f"{VERTEX}:streamGenerateContent?alt=sse"
    hdrs = {"Authorization": f"Bearer {token}", "x-mock-tokens": str(n)}
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    with http.stream("POST", url, json=body, headers=hdrs) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, r.text, []
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    parts = [c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks]
    return 200, "".join(parts), chunks


def signed_assertion(path: Path, **claims: Any) -> str:
    """A JWT signed with the service account's key; ``claims`` override."""
    info = json.loads(path.read_text())
    now = int(time.time())
    payload = {
        "iss": info["client_email"],
        "aud": "https://oauth2.googleapis.com/token",
        "scope": SCOPES[0],
        "iat": now,
        "exp": now + 3600,
        **claims,
    }
    signer = crypt.RSASigner.from_service_account_info(info)
    return jwt.encode(signer, payload).decode()


def post_grant(http: httpx.Client, assertion: str) -> httpx.Response:
    return http.post("/token", data={"grant_type": JWT_GRANT, "assertion": assertion})


def test_service_account_token_streams_from_vertex(
    mock: MockHandle, sa_file: Path, http: httpx.Client
) -> None:
    assert sa_file.stat().st_mode & 0o777 == 0o600
    info = json.loads(sa_file.read_text())
    assert info["type"] == "service_account" and info["token_uri"] == f"{mock.url}/token"
    assert info["private_key"].startswith("-----BEGIN PRIVATE KEY-----")  # PKCS8

    token = sa_token(sa_file)
    assert token.startswith("ya29.mock-") and mock.state.token_requests == 1
    assert mock.state.issued_tokens[token] > time.monotonic() + 3500
    grant = mock.state.last("/token")
    assert grant.headers["content-type"] == "application/x-www-form-urlencoded" and grant.status == 200

    status, got, chunks = vertex_sse(http, token, 5)
    assert (status, got) == (200, text(5))
    assert chunks[-1]["modelVersion"] == "gemini-2.0-flash"
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    hdrs = {"Authorization": f"Bearer {token}", "x-mock-tokens": "3"}
    beta = VERTEX.replace("/v1/", "/v1beta1/")
    one = http.post(f"{beta}:generateContent", json={}, headers=hdrs).json()
    assert one["candidates"][0]["content"]["parts"][0]["text"] == text(3)
    assert one["modelVersion"] == "gemini-2.0-flash"
    array = http.post(f"{VERTEX}:streamGenerateContent", json={}, headers=hdrs).json()
    assert "".join(i["candidates"][0]["content"]["parts"][0]["text"] for i in array) == text(3)
    assert http.post(f"{VERTEX}:countTokens", json={}, headers=hdrs).json()["totalTokens"] >= 1


def test_genai_vertex_mode_with_service_account(mock: MockHandle, sa_file: Path) -> None:
    """google-genai in Vertex mode fetches its own token and parses the replies."""
    opts = genai_types.HttpOptions(base_url=mock.url, timeout=int(GUARD * 1000))
    client = genai.Client(
        vertexai=True,
        credentials=sa_credentials(sa_file),
        project="mock-project",
        location="us-central1",
        http_options=opts,
    )
    assert client.models.generate_content(model="gemini-2.0-flash", contents="hi").text == text(12)
    stream = client.models.generate_content_stream(model="gemini-2.0-flash", contents="hi")
    assert [c.text for c in stream] == mock_tokens(12)
    vertex = [r for r in mock.state.records if "/publishers/google/models/" in r.path]
    assert [r.status for r in vertex] == [200, 200] and mock.state.token_requests == 1
    assert vertex[0].path.endswith(VERTEX.removeprefix("/v1") + ":generateContent")


def test_vertex_rejects_bad_tokens_express_mode_takes_keys(http: httpx.Client) -> None:
    for hdrs in ({"Authorization": "Bearer ya29.bogus"}, {"x-goog-api-key": "AIza-any"}, {}):
        r = http.post(f"{VERTEX}:generateContent", json={}, headers=hdrs)
        assert r.status_code == 401, hdrs
        err = r.json()["error"]
        assert err["status"] == "UNAUTHENTICATED" and err["code"] == 401
        assert err["message"].startswith("Request had invalid authentication credentials.")
        assert r.headers["www-authenticate"].startswith("Bearer")
    # Express mode (no project/location) and plain Gemini take any API key.
    for path in ("/v1/publishers/google/models/gemini-2.0-flash", "/v1beta/models/gemini-2.0-flash"):
        r = http.post(f"{path}:generateContent", json={}, headers={"x-goog-api-key": "AIza-any"})
        assert r.status_code == 200 and r.json()["modelVersion"] == "gemini-2.0-flash"


def test_token_endpoint_rejects_bad_jwts(
    mock: MockHandle, sa_file: Path, http: httpx.Client, tmp_path: Path
) -> None:
    # The right email, signed by a key the mock never saw.
    rogue = json.loads(sa_file.read_text())
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rogue["private_key"] = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    (tmp_path / "rogue.json").write_text(json.dumps(rogue))
    with pytest.raises(exceptions.RefreshError) as info:
        sa_token(tmp_path / "rogue.json")
    assert info.value.args[1] == {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
    assert mock.state.last("/token").status == 400
    # An account the mock does not know.
    rogue["client_email"] = "nobody@mock-project.iam.gserviceaccount.com"
    (tmp_path / "rogue.json").write_text(json.dumps(rogue))
    with pytest.raises(exceptions.RefreshError, match="account not found"):
        sa_token(tmp_path / "rogue.json")

    now = int(time.time())
    none_header = base64.urlsafe_b64encode(b'{"alg":"none"}').decode().rstrip("=")
    bad = {
        "wrong audience": signed_assertion(sa_file, aud="https://evil.example/token"),
        "expired": signed_assertion(sa_file, iat=now - 4000, exp=now - 400),
        "issued in the future": signed_assertion(sa_file, iat=now + 600, exp=now + 1200),
        "too long-lived": signed_assertion(sa_file, exp=now + 7200),
        "unsigned": signed_assertion(sa_file).rsplit(".", 1)[0] + ".",
        # A valid signature under a header claiming "none" must not pass either.
        "alg none": ".".join([none_header, *signed_assertion(sa_file).split(".")[1:]]),
        "garbage": "not-a-jwt",
    }
    for why, assertion in bad.items():
        r = post_grant(http, assertion)
        assert (r.status_code, r.json()["error"]) == (400, "invalid_grant"), why
    assert post_grant(http, signed_assertion(sa_file, scope="")).json()["error"] == "invalid_scope"
    wrong_grant = http.post("/token", data={"grant_type": "password"})
    assert wrong_grant.json()["error"] == "unsupported_grant_type"
    # aud may also name the token URL the client used (older google-auth did),
    # compared case-insensitively on scheme and host.
    for aud in (f"{mock.url}/token", f"HTTP://127.0.0.1:{mock.port}/token"):
        assert post_grant(http, signed_assertion(sa_file, aud=aud)).status_code == 200
    assert mock.state.token_requests == 2 + len(bad) + 4


def test_token_endpoint_injected_failure(mock: MockHandle, sa_file: Path, http: httpx.Client) -> None:
    mock.state.token_endpoint_status = 503
    r = post_grant(http, signed_assertion(sa_file))
    assert r.status_code == 503 and r.json()["error"] == "invalid_grant"
    assert "x-request-id" not in r.headers  # Google's token endpoint, not OpenAI's
    assert mock.state.last("/token").outcome == "error_injected"
    mock.state.token_endpoint_status = 400  # google-auth does not retry a 400: fast
    with pytest.raises(exceptions.RefreshError, match="invalid_grant"):
        sa_token(sa_file)
    assert mock.state.token_requests == 2
    mock.state.reset()
    assert mock.state.token_endpoint_status is None and mock.state.token_requests == 0


def test_vertex_token_expires(mock: MockHandle, sa_file: Path, http: httpx.Client) -> None:
    mock.state.token_lifetime = 1
    try:
        token = sa_token(sa_file)
    finally:
        mock.state.token_lifetime = 3600
    assert json.loads(mock.state.last("/token").sent)["expires_in"] == 1
    assert vertex_sse(http, token, 2)[:2] == (200, text(2))
    time.sleep(1.05)
    status, body, _ = vertex_sse(http, token, 2)
    assert status == 401 and "UNAUTHENTICATED" in body


def test_key_rules_and_attempts_by_key(mock: MockHandle, sa_file: Path, http: httpx.Client) -> None:
    mock.state.set_key_rule("sk-revoked", 401)
    r = http.post("/_mock/keys", json={"key": "sk-hot", "status": 429, "retry_after": 2.5})
    assert r.json() == {"ok": True}
    assert http.post("/_mock/keys", json={"key": "k"}).status_code == 400
    assert http.post("/_mock/keys", json={"key": "k", "status": 200}).status_code == 400
    token = sa_token(sa_file)
    mock.state.set_key_rule(token, 429)  # no retry_after: no header
    chat = {"model": "m", "messages": []}

    r = http.post("/v1/chat/completions", json=chat, headers={"Authorization": "Bearer sk-revoked"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert "retry-after" not in r.headers
    r = http.post("/v1/messages", json={"model": "c"}, headers={"x-api-key": "sk-hot"})
    assert r.status_code == 429 and r.headers["retry-after"] == "2.5"
    assert r.json()["error"]["type"] == "rate_limit_error"
    r = http.post("/v1beta/models/g:generateContent", json={}, headers={"x-goog-api-key": "sk-hot"})
    assert r.status_code == 429 and r.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert http.post("/v1beta/models/g:generateContent?key=sk-revoked", json={}).status_code == 401
    r = http.post(f"{VERTEX}:generateContent", json={}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 429 and "retry-after" not in r.headers
    assert mock.state.last(":generateContent").outcome == "error_injected"
    for _ in range(2):
        r = http.post("/v1/chat/completions", json=chat, headers={"Authorization": "Bearer sk-fine"})
        assert r.status_code == 200
    r = http.post("/v1/messages", json={"model": "c"}, headers={"x-api-key": "sk-fine"})
    assert r.status_code == 200
    assert [rec.outcome for rec in mock.state.records[-3:]] == ["completed"] * 3

    assert mock.state.attempts_by_key() == {"sk-revoked": 2, "sk-hot": 2, token: 1, "sk-fine": 3}
    assert mock.state.attempts_by_key("/chat/completions") == {"sk-revoked": 1, "sk-fine": 2}
    assert http.delete("/_mock/keys").json() == {"ok": True}
    assert mock.state.key_rules == {}
    mock.state.set_key_rule("sk-hot", 503)
    mock.state.reset()  # reset clears key rules too
    assert http.post("/v1/messages", json={"model": "c"}, headers={"x-api-key": "sk-hot"}).status_code == 200
