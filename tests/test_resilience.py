"""Long silences, timeouts, slow readers, overload and shutdown, against real servers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import signal
import time
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from proxy.config import load_settings
from proxy.mock import MockHandle, mock_tokens
from proxy.mock.formats import pattern_chunks
from tests.accesslog import wait_for_line
from tests.conftest import SluiceFactory, SluiceProcess, upstream_env
from tests.nginx_server import free_port, start_nginx
from tests.procfs import status_kib
from tests.rawhttp import RawConnection, RawResponse, request

pytestmark = pytest.mark.timeout(60)

OPENAI = {"authorization": "Bearer x", "content-type": "application/json"}
CHAT_STREAM = json.dumps(
    {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
).encode()
KEEPALIVE = b": keepalive\n\n"


@pytest.fixture(scope="module")
def beating(
    mock: MockHandle, sluice_factory: SluiceFactory, tmp_path_factory: pytest.TempPathFactory
) -> SluiceProcess:
    """A Sluice whose heartbeats come every 0.2 s, with short timeouts around them."""
    log = tmp_path_factory.mktemp("beating") / "access.log"
    return sluice_factory(
        **upstream_env(mock),
        SLUICE_HEARTBEAT_INTERVAL="0.2",
        SLUICE_HEADERS_TIMEOUT="1.5",
        SLUICE_ACCESS_LOG=str(log),
    )


def _silence(after: int, ms: int, tokens: int = 6) -> dict[str, str]:
    return {"x-mock-tokens": str(tokens), "x-mock-silence-after": str(after), "x-mock-silence-ms": str(ms)}


def _tokens(body: bytes) -> int:
    """Non-empty content deltas in an OpenAI chat stream."""
    return len(re.findall(rb'"content":"[^"]', body))


def _heartbeats_only_between_events(body: bytes) -> None:
    start = 0
    while (at := body.find(KEEPALIVE, start)) != -1:
        assert at == 0 or body[:at].endswith(b"\n\n"), f"heartbeat inside an event at byte {at}"
        start = at + 1


# --- heartbeats ----------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_a_40_second_silence_arrives_as_heartbeats_then_the_tokens(
    mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    sluice = sluice_factory(**upstream_env(mock), SLUICE_HEARTBEAT_INTERVAL="1")
    response = await asyncio.wait_for(
        request(sluice.url, "POST", "/v1/chat/completions", {**OPENAI, **_silence(3, 40_000)}, CHAT_STREAM),
        80,
    )
    assert response.status == 200 and response.complete
    beats = response.body.count(KEEPALIVE)
    assert 35 <= beats <= 41, beats
    _heartbeats_only_between_events(response.body)
    # Remove the heartbeats and what is left is the upstream's stream, byte for byte.
    assert response.body.replace(KEEPALIVE, b"") == mock.state.last().sent
    # And they were spread over the silence, not sent in a burst at its end.
    beat_times = [t for t, data in response.chunks if data == KEEPALIVE]
    assert beat_times[-1] - beat_times[0] > 30


@pytest.mark.timeout(30)
def test_official_sdks_stream_through_heartbeats(beating: SluiceProcess, mock: MockHandle) -> None:
    headers = _silence(2, 1500)
    expected = "".join(mock_tokens(6))
    oa = openai.OpenAI(base_url=f"{beating.url}/v1", api_key="x", default_headers=headers, max_retries=0)
    chat = oa.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chat if c.choices) == expected
    with oa.responses.stream(model="m", input="hi") as events:
        assert events.get_final_response().output_text == expected
    an = anthropic.Anthropic(base_url=beating.url, api_key="x", default_headers=headers, max_retries=0)
    with an.messages.stream(model="c", max_tokens=9, messages=[{"role": "user", "content": "hi"}]) as s:
        assert "".join(s.text_stream) == expected
    options = genai_types.HttpOptions(base_url=beating.url, headers=headers)
    ge = genai.Client(api_key="x", http_options=options)
    assert (
        "".join(c.text or "" for c in ge.models.generate_content_stream(model="g", contents="hi")) == expected
    )


async def test_async_gemini_sdk_streams_through_heartbeats(beating: SluiceProcess) -> None:
    options = genai_types.HttpOptions(base_url=beating.url, headers=_silence(2, 1500))
    client = genai.Client(api_key="x", http_options=options)
    chunks = await asyncio.wait_for(client.aio.models.generate_content_stream(model="g", contents="hi"), 10)
    text = "".join([c.text or "" async for c in chunks])
    assert text == "".join(mock_tokens(6))


async def test_the_heartbeats_the_sdks_saw_were_really_there(beating: SluiceProcess) -> None:
    openai_stream = await request(
        beating.url, "POST", "/v1/chat/completions", {**OPENAI, **_silence(2, 1500)}, CHAT_STREAM
    )
    assert openai_stream.body.count(KEEPALIVE) >= 5
    gemini = await request(
        beating.url, "POST", "/v1beta/models/g:streamGenerateContent?alt=sse",
        {"x-goog-api-key": "x", **_silence(2, 1500)}, b"{}",
    )  # fmt: skip
    # Gemini's heartbeat is a blank line in the stream's CRLF style: google-genai
    # cannot parse comment lines (see the next test).
    assert b"keepalive" not in gemini.body
    assert b"\r\n\r\n\r\n" in gemini.body


def test_google_genai_cannot_take_comment_heartbeats(mock: MockHandle, sluice_factory: SluiceFactory) -> None:
    """Why Gemini's default heartbeat is a blank line. If this starts passing, the default can change."""
    sluice = sluice_factory(
        **upstream_env(mock), SLUICE_HEARTBEAT_INTERVAL="0.2", SLUICE_GEMINI_HEARTBEAT="comment"
    )
    options = genai_types.HttpOptions(base_url=sluice.url, headers=_silence(2, 1000))
    client = genai.Client(api_key="x", http_options=options)
    with pytest.raises(Exception):  # noqa: B017 - whatever the SDK raises on ": keepalive"
        list(client.models.generate_content_stream(model="g", contents="hi"))


async def test_a_heartbeat_never_commits_a_status_the_upstream_did_not_send(
    beating: SluiceProcess, mock: MockHandle
) -> None:
    started = time.monotonic()
    conn = await RawConnection.open(beating.url)
    await conn.send_request(
        "POST", "/v1/chat/completions",
        {**OPENAI, "x-mock-headers-delay-ms": "1000", "x-mock-status": "429"}, CHAT_STREAM,
    )  # fmt: skip
    response = await conn.read_head()
    first_byte = time.monotonic() - started
    await conn.read_body(response)
    conn.close()
    assert response.status == 429
    assert first_byte > 0.9
    assert response.body == mock.state.last().sent  # the error body exactly, no heartbeat in it


# --- timeouts ----------------------------------------------------------------


def _log_line(path: Path, request_id: str) -> dict[str, object]:
    return wait_for_line([path], request_id)


async def test_a_stalled_upstream_before_headers_is_a_504(beating: SluiceProcess, mock: MockHandle) -> None:
    started = time.monotonic()
    response = await request(
        beating.url, "POST", "/v1/messages",
        {"x-api-key": "x", "anthropic-version": "2023-06-01", "x-mock-headers-delay-ms": "10000"}, b"{}",
    )  # fmt: skip
    assert response.status == 504
    assert 1.4 < time.monotonic() - started < 3
    assert json.loads(response.body)["error"]["type"] == "api_error"
    record = await mock.state.wait_for_end(mock.state.last().id, timeout=2)
    assert record.outcome == "client_closed"  # Sluice hung up on the stalled upstream


async def _timed_out(
    mock: MockHandle,
    sluice_factory: SluiceFactory,
    tmp_path: Path,
    env: dict[str, str],
    headers: dict[str, str],
) -> tuple[RawResponse, float, dict[str, object]]:
    log = tmp_path / "access.log"
    sluice = sluice_factory(**upstream_env(mock), SLUICE_ACCESS_LOG=str(log), **env)
    started = time.monotonic()
    response = await request(
        sluice.url, "POST", "/v1/chat/completions", {**OPENAI, **headers, "x-request-id": "cut"}, CHAT_STREAM
    )
    elapsed = time.monotonic() - started
    record = await mock.state.wait_for_end(mock.state.last().id, timeout=2)
    assert record.outcome == "client_closed", "the upstream call must be closed too"
    return response, elapsed, _log_line(log, "cut")


async def test_idle_upstream_mid_stream_is_cut_after_the_idle_timeout(
    mock: MockHandle, sluice_factory: SluiceFactory, tmp_path: Path
) -> None:
    env = {"SLUICE_READ_TIMEOUT": "0.6", "SLUICE_HEARTBEAT_INTERVAL": "0.2"}
    response, elapsed, line = await _timed_out(mock, sluice_factory, tmp_path, env, _silence(2, 10_000))
    assert response.status == 200 and not response.complete
    assert response.body.count(KEEPALIVE) >= 1  # heartbeats do not count as upstream activity
    assert 0.5 < elapsed < 2.5
    assert (line["outcome"], line["detail"]) == ("upstream_error", "idle_timeout")


async def test_a_trickling_upstream_hits_the_overall_deadline(
    mock: MockHandle, sluice_factory: SluiceFactory, tmp_path: Path
) -> None:
    env = {"SLUICE_STREAM_DEADLINE": "1.0", "SLUICE_READ_TIMEOUT": "5"}
    trickle = {"x-mock-tokens": "40", "x-mock-delay-ms": "150"}  # never idle, never done
    response, elapsed, line = await _timed_out(mock, sluice_factory, tmp_path, env, trickle)
    assert response.status == 200 and not response.complete
    assert 0.9 < elapsed < 2.5
    assert (line["outcome"], line["detail"]) == ("upstream_error", "deadline")


async def test_client_leaving_during_silence_with_heartbeats_cancels_upstream(
    beating: SluiceProcess, mock: MockHandle
) -> None:
    conn = await RawConnection.open(beating.url)
    await conn.send_request("POST", "/v1/chat/completions", {**OPENAI, **_silence(1, 30_000)}, CHAT_STREAM)
    response = await conn.read_head()
    while response.body.count(KEEPALIVE) < 2:  # well into the silence, heartbeats flowing
        await conn.read_chunk(response)
    record = mock.state.last()
    conn.close()
    closed_at = time.monotonic()
    ended = await mock.state.wait_for_end(record.id, timeout=5)
    assert ended.outcome == "client_closed"
    assert ended.ended is not None and ended.ended - closed_at < 0.5


# --- backpressure and overload -----------------------------------------------------


def _rss_kib(pid: int) -> int:
    return status_kib(pid, "VmRSS")


@pytest.mark.timeout(60)
async def test_a_slow_reader_of_100_mb_keeps_sluice_memory_bounded(
    mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    size, piece = 100 * 1024 * 1024, 64 * 1024
    sluice = sluice_factory(**upstream_env(mock))
    pid = sluice.proc.pid
    baseline = _rss_kib(pid)
    conn = await RawConnection.open(sluice.url)
    await conn.send_request(
        "GET", f"/v1/_mock/bytes?size={size}&chunk={piece}", {"authorization": "Bearer x"}
    )
    response = await conn.read_head()
    assert response.status == 200
    digest, received, peak = hashlib.sha256(), 0, baseline
    # About 1 MB/s for six seconds: the mock could have sent all 100 MB by now.
    started = time.monotonic()
    while time.monotonic() - started < 6:
        data = await conn.reader.read(piece)
        digest.update(data)
        received += len(data)
        peak = max(peak, _rss_kib(pid))
        await asyncio.sleep(piece / (1024 * 1024))
    assert received < 12 * 1024 * 1024, "the reader was meant to be slow"
    # Then drain the rest at full speed and check every byte.
    while received < size:
        data = await conn.reader.read(1 << 20)
        assert data, "the response ended early"
        digest.update(data)
        received += len(data)
    conn.close()
    expected = hashlib.sha256()
    for chunk in pattern_chunks(size, piece):
        expected.update(chunk)
    assert digest.hexdigest() == expected.hexdigest()
    growth_mib = (peak - baseline) / 1024
    print(f"slow reader: peak RSS growth {growth_mib:.1f} MiB")
    assert growth_mib < 16, f"Sluice RSS grew by {growth_mib:.1f} MiB while the client read slowly"


async def test_at_the_upstream_concurrency_cap_requests_get_503_with_retry_after(
    mock: MockHandle, sluice_factory: SluiceFactory
) -> None:
    sluice = sluice_factory(**upstream_env(mock), SLUICE_POOL_SIZE="2")
    anthropic_headers = {"x-api-key": "x", "anthropic-version": "2023-06-01"}
    slow = {**anthropic_headers, "x-mock-headers-delay-ms": "800"}
    held = [asyncio.create_task(request(sluice.url, "POST", "/v1/messages", slow, b"{}")) for _ in range(2)]
    await asyncio.sleep(0.3)
    refused = await request(sluice.url, "POST", "/v1/messages", anthropic_headers, b"{}")
    assert refused.status == 503
    assert refused.header("retry-after") == "1"
    assert json.loads(refused.body)["type"] == "error"  # Anthropic's shape
    assert [r.status for r in await asyncio.gather(*held)] == [200, 200]
    assert (await request(sluice.url, "POST", "/v1/messages", anthropic_headers, b"{}")).status == 200


# --- graceful drain ---------------------------------------------------------------


async def _stream(sluice: SluiceProcess, tokens: int, request_id: str) -> RawResponse:
    headers = {**OPENAI, "x-mock-tokens": str(tokens), "x-mock-delay-ms": "100", "x-request-id": request_id}
    return await request(sluice.url, "POST", "/v1/chat/completions", headers, CHAT_STREAM)


@pytest.mark.timeout(30)
async def test_sigterm_lets_streams_finish_and_cuts_those_that_outlive_the_window(
    mock: MockHandle, sluice_factory: SluiceFactory, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    sluice = sluice_factory(**upstream_env(mock), SLUICE_DRAIN_TIMEOUT="1.5", SLUICE_ACCESS_LOG=str(log))
    short = asyncio.create_task(_stream(sluice, 8, "short"))  # about 0.8 s
    long = asyncio.create_task(_stream(sluice, 50, "long"))  # about 5 s
    await asyncio.sleep(0.3)
    sluice.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    await asyncio.sleep(0.3)
    with pytest.raises(OSError):  # no longer accepting
        await request(sluice.url, "GET", "/healthz")
    finished, cut = await short, await long
    cut_after = time.monotonic() - signalled
    assert finished.complete and _tokens(finished.body) == 8
    assert finished.body.endswith(b"data: [DONE]\n\n")
    assert not cut.complete, "a stream cut at shutdown must not look complete"
    assert 1.3 < cut_after < 3.0
    assert sluice.proc.wait(10) in (0, -signal.SIGTERM)
    assert _log_line(log, "short")["outcome"] == "ok"
    assert (_log_line(log, "long")["outcome"], _log_line(log, "long")["detail"]) == (
        "aborted",
        "drain_timeout",
    )
    assert "draining: 2 request(s) in flight" in sluice.log()
    assert "drain timeout: aborting 1 request(s)" in sluice.log()


async def test_readyz_turns_503_when_draining_starts() -> None:
    from proxy.app import create_app

    app = create_app(load_settings({}))
    services = app.state.services
    await services.upstream.open()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://sluice"
        ) as client:
            assert (await client.get("/readyz")).status_code == 200
            services.drain.begin()
            draining = await client.get("/readyz")
        assert draining.status_code == 503
        assert draining.json()["checks"] == {"draining": "shutting down"}
    finally:
        await services.upstream.close()


# --- through nginx -----------------------------------------------------------------

_NGINX = """
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{sluice_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 2s;  # stands in for the usual 60 s
        }}
    }}
"""


@pytest.mark.timeout(40)
async def test_through_nginx_a_long_silence_survives_with_heartbeats_and_fails_without(
    mock: MockHandle, sluice_factory: SluiceFactory, tmp_path: Path
) -> None:
    with_beats = sluice_factory(**upstream_env(mock), SLUICE_HEARTBEAT_INTERVAL="0.5")
    without = sluice_factory(**upstream_env(mock), SLUICE_OPENAI_HEARTBEAT="off")
    ports = free_port(), free_port()
    blocks = "".join(
        _NGINX.format(port=port, sluice_port=int(sluice.url.rsplit(":", 1)[1]))
        for port, sluice in zip(ports, (with_beats, without), strict=True)
    )
    nginx = start_nginx(tmp_path / "nginx", blocks, ports[0])
    try:
        silence = {**OPENAI, **_silence(2, 5000)}  # 5 s: longer than nginx's 2 s read timeout
        kept = await request(
            f"http://127.0.0.1:{ports[0]}", "POST", "/v1/chat/completions", silence, CHAT_STREAM
        )
        dropped = await request(
            f"http://127.0.0.1:{ports[1]}", "POST", "/v1/chat/completions", silence, CHAT_STREAM
        )
    finally:
        nginx.stop()
    assert kept.status == 200 and kept.complete
    assert _tokens(kept.body.replace(KEEPALIVE, b"")) == 6
    assert dropped.status == 200 and not dropped.complete, "nginx should have cut the silent stream"
    assert "upstream timed out" in nginx.error_log()
