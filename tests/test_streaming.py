"""Bytes in, bytes out: identity, pacing, compression, disconnects and truncation."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import itertools
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from proxy.mock import MockHandle
from tests.conftest import CLIENT_KEY, SluiceFactory, SluiceProcess, upstream_env
from tests.procfs import status_kib
from tests.rawhttp import RawConnection, request

pytestmark = pytest.mark.timeout(30)

OPENAI_JSON = {"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"}
ANTHROPIC_JSON = {
    "x-api-key": CLIENT_KEY,
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
}
GEMINI_JSON = {"x-goog-api-key": CLIENT_KEY, "content-type": "application/json"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
CLAUDE = {"model": "claude-mock", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}

# Every streamed wire format the mock speaks, sent the way its SDK sends it.
STREAMS = {
    "openai-chat": ("/v1/chat/completions", OPENAI_JSON, {**CHAT, "stream": True}),
    "openai-chat-usage": (
        "/openai/v1/chat/completions",
        OPENAI_JSON,
        {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
    ),
    "openai-responses": (
        "/v1/responses",
        OPENAI_JSON,
        {"model": "gpt-4o-mini", "input": "hi", "stream": True},
    ),
    "gemini-sse": ("/v1beta/models/gemini-mock:streamGenerateContent?alt=sse", GEMINI_JSON, GEMINI_BODY),
    "gemini-json-array": (
        "/gemini/v1beta/models/gemini-mock:streamGenerateContent",
        GEMINI_JSON,
        GEMINI_BODY,
    ),
    "anthropic": ("/v1/messages", ANTHROPIC_JSON, {**CLAUDE, "stream": True}),
}


@pytest.mark.parametrize("name", list(STREAMS))
async def test_stream_bytes_are_identical_to_the_upstreams(
    name: str, sluice: SluiceProcess, mock: MockHandle
) -> None:
    target, headers, body = STREAMS[name]
    response = await request(
        sluice.url, "POST", target, {**headers, "x-mock-tokens": "40"}, json.dumps(body).encode()
    )
    assert response.status == 200
    assert response.complete
    assert response.body == mock.state.last().sent
    assert len(response.body) > 1000


async def test_event_stream_headers(sluice: SluiceProcess, mock: MockHandle) -> None:
    target, headers, body = STREAMS["anthropic"]
    response = await request(sluice.url, "POST", target, headers, json.dumps(body).encode())
    assert response.header(
        "content-type",
    ).startswith("text/event-stream")  # type: ignore[union-attr]
    assert response.header("x-accel-buffering") == "no"
    assert response.header("cache-control") == "no-cache"
    assert response.header(
        "request-id",
    ).startswith("req_mock")  # type: ignore[union-attr]
    # uvicorn writes Date; the upstream's is not added to it, and no Server leaks.
    assert response.header_count("date") == 1
    assert response.header_count("server") == 0


async def _paced_stream_problem(url: str) -> str | None:
    """What is wrong with one paced stream's arrival (8 tokens 50 ms apart), or None."""
    target, headers, body = STREAMS["openai-chat"]
    conn = await RawConnection.open(url)
    try:
        await conn.send_request(
            "POST",
            target,
            {**headers, "x-mock-tokens": "8", "x-mock-delay-ms": "50"},
            json.dumps(body).encode(),
        )
        response = await conn.read_head()
        await conn.read_body(response)
    finally:
        conn.close()
    # (The role chunk and the first token are written back to back, so they
    # may share a read; the tokens after it are 50 ms apart.)
    token_arrivals = [t for t, data in response.chunks for _ in re.finditer(rb'"content":"[^"]', data)]
    assert len(token_arrivals) == 8
    per_read = [len(re.findall(rb'"content":"[^"]', data)) for _, data in response.chunks]
    gaps = [b - a for a, b in itertools.pairwise(token_arrivals)]
    if max(per_read) != 1:
        return f"tokens were batched: {per_read}"
    if min(gaps) <= 0.025 or token_arrivals[-1] - token_arrivals[0] <= 0.3:
        return f"not paced: {gaps}"
    return None


async def test_chunks_arrive_as_paced_not_in_one_burst(sluice: SluiceProcess) -> None:
    # A stall of this VM (tens of ms, in any of the three processes) can put
    # two tokens in one read on its own, so one clean stream of three tries
    # passes; a proxy that batches never produces one.
    problems = []
    for _ in range(3):
        problem = await _paced_stream_problem(sluice.url)
        if problem is None:
            return
        problems.append(problem)
    pytest.fail("; ".join(problems))


async def test_gzip_body_passes_compressed_and_decodes(sluice: SluiceProcess, mock: MockHandle) -> None:
    headers = {**OPENAI_JSON, "x-mock-gzip": "1", "accept-encoding": "gzip"}
    raw = await request(sluice.url, "POST", "/v1/chat/completions", headers, json.dumps(CHAT).encode())
    assert raw.header("content-encoding") == "gzip"
    assert raw.body == mock.state.last().sent  # still compressed, byte for byte
    assert json.loads(gzip.decompress(raw.body))["object"] == "chat.completion"
    async with httpx.AsyncClient(base_url=sluice.url) as client:
        decoded = await client.post("/v1/chat/completions", headers=headers, json=CHAT)
    assert decoded.json()["object"] == "chat.completion"


async def test_no_accept_encoding_is_invented(sluice: SluiceProcess, mock: MockHandle) -> None:
    await request(sluice.url, "POST", "/v1/chat/completions", OPENAI_JSON, json.dumps(CHAT).encode())
    seen = mock.state.last().headers
    assert "accept-encoding" not in seen
    assert "user-agent" not in seen


async def test_upstream_errors_pass_through_unchanged(sluice: SluiceProcess, mock: MockHandle) -> None:
    headers = {**ANTHROPIC_JSON, "x-mock-status": "429", "x-mock-retry-after": "11"}
    response = await request(sluice.url, "POST", "/v1/messages", headers, json.dumps(CLAUDE).encode())
    assert response.status == 429
    assert response.header("retry-after") == "11"
    assert response.header("anthropic-ratelimit-requests-remaining") == "0"
    assert response.body == mock.state.last().sent


async def test_methods_and_query_strings_pass_through(sluice: SluiceProcess, mock: MockHandle) -> None:
    response = await request(sluice.url, "DELETE", "/v1/files/file-1?purpose=x&q=a%20b&empty=", OPENAI_JSON)
    record = mock.state.last()
    assert (record.method, record.path, record.query) == (
        "DELETE",
        "/openai-prefix/v1/files/file-1",
        "purpose=x&q=a%20b&empty=",
    )
    assert response.status == 404  # the mock has no such file; its answer is passed on
    assert response.body == record.sent


@pytest.fixture(scope="module", params=["server-told", "receive-wrapped"])
def watched(
    request: pytest.FixtureRequest, sluice: SluiceProcess, mock: MockHandle, sluice_factory: SluiceFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> SluiceProcess:  # fmt: skip
    """Sluice learns of a client gone two ways: its server tells it (the ``sluice.disconnect``
    extension), or, behind a layer that wraps ``receive``, it waits in ``receive()``."""
    if request.param == "server-told":
        return sluice
    config = tmp_path_factory.mktemp("wrapped") / "sluice.toml"
    config.write_text('[middleware]\nchain = ["tests.wrapped_receive:WrappedReceive"]\n')
    root = Path(__file__).resolve().parent.parent
    return sluice_factory(**upstream_env(mock), SLUICE_CONFIG=str(config), PYTHONPATH=str(root))


async def test_client_disconnect_during_silence_cancels_upstream(
    watched: SluiceProcess, mock: MockHandle
) -> None:
    target, headers, body = STREAMS["openai-chat"]
    conn = await RawConnection.open(watched.url)
    await conn.send_request(
        "POST",
        target,
        {**headers, "x-mock-tokens": "10", "x-mock-silence-after": "2", "x-mock-silence-ms": "30000"},
        json.dumps(body).encode(),
    )
    response = await conn.read_head()
    while b'"content":"' not in response.body.split(b"Hello", 1)[-1]:
        await conn.read_chunk(response)  # role chunk, then the first tokens
    record = mock.state.last()
    await asyncio.sleep(0.1)  # now the upstream is silent
    conn.close()
    closed_at = time.monotonic()
    ended = await mock.state.wait_for_end(record.id, timeout=5)
    assert ended.outcome == "client_closed"
    assert ended.ended is not None
    assert ended.ended - closed_at < 0.5


async def test_client_disconnect_before_headers_cancels_upstream(
    watched: SluiceProcess, mock: MockHandle
) -> None:
    conn = await RawConnection.open(watched.url)
    await conn.send_request(
        "POST",
        "/v1/messages",
        {**ANTHROPIC_JSON, "x-mock-headers-delay-ms": "30000"},
        json.dumps(CLAUDE).encode(),
    )
    for _ in range(200):
        if mock.state.records:
            break
        await asyncio.sleep(0.01)
    record = mock.state.last()
    conn.close()
    closed_at = time.monotonic()
    ended = await mock.state.wait_for_end(record.id, timeout=5)
    assert ended.outcome == "client_closed"
    assert ended.ended is not None and ended.ended - closed_at < 0.5


async def test_upstream_drop_mid_stream_aborts_the_client_response(
    sluice: SluiceProcess, mock: MockHandle
) -> None:
    target, headers, body = STREAMS["anthropic"]
    response = await request(
        sluice.url,
        "POST",
        target,
        {**headers, "x-mock-tokens": "10", "x-mock-drop-after": "3"},
        json.dumps(body).encode(),
    )
    assert response.status == 200
    assert not response.complete, "a cut stream must not end with the terminating chunk"
    assert mock.state.last().outcome == "dropped"
    assert b"message_stop" not in response.body
    # What did arrive is exactly what the upstream sent before it went away.
    assert response.body == mock.state.last().sent


async def test_sdk_sees_a_cut_stream_as_an_error(sluice: SluiceProcess) -> None:
    target, headers, body = STREAMS["openai-chat"]
    async with httpx.AsyncClient(base_url=sluice.url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            async with client.stream(
                "POST", target, headers={**headers, "x-mock-drop-after": "2"}, json=body
            ) as response:
                async for _ in response.aiter_raw():
                    pass


def _vm_hwm_kib(pid: int) -> int:
    return status_kib(pid, "VmHWM")


async def _body(total: int, piece: int = 256 * 1024) -> AsyncIterator[bytes]:
    block = bytes(range(256)) * (piece // 256)
    sent = 0
    while sent < total:
        chunk = block[: min(piece, total - sent)]
        sent += len(chunk)
        yield chunk


@pytest.mark.timeout(60)
async def test_50_mb_upload_streams_with_flat_memory(sluice_factory: SluiceFactory, mock: MockHandle) -> None:
    # A fresh process, so its peak RSS says what this upload cost.
    fresh = sluice_factory(**upstream_env(mock))
    total = 50 * 1024 * 1024
    expected = hashlib.sha256()
    async for chunk in _body(total):
        expected.update(chunk)
    before = _vm_hwm_kib(fresh.proc.pid)
    async with httpx.AsyncClient(base_url=fresh.url, timeout=30) as client:
        # With a Content-Length, and chunked (no length): both must stream.
        for extra in ({"content-length": str(total)}, {}):
            response = await client.post(
                "/v1/files",
                headers={**OPENAI_JSON, "content-type": "application/octet-stream", **extra},
                content=_body(total),
            )
            assert response.status_code == 200, response.text
            assert response.json()["bytes"] == total
            assert response.json()["sha256"] == expected.hexdigest()
            record = mock.state.last("/files")
            assert record.headers.get("content-length") == extra.get("content-length")
    growth_mib = (_vm_hwm_kib(fresh.proc.pid) - before) / 1024
    assert growth_mib < 20, f"peak RSS grew by {growth_mib:.1f} MiB for a 50 MiB upload"
