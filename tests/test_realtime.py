"""Realtime sessions (WebSockets) through Sluice, with the official OpenAI SDK and raw clients.

The upstream is a scripted ``websockets`` server (``tests/ws_upstream.py``)
speaking enough of OpenAI Realtime and Gemini Live; it records what reached
it. Runs in both transport modes (``BOTH_MODES``). Gemini Live is driven
with the ``websockets`` client here: google-genai's live client always dials
``wss://``, so it is tested where Sluice serves TLS.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from proxy.keybook import create_key, revoke_key
from proxy.limits import Limits
from proxy.mock import MockHandle
from tests.accesslog import read_lines, wait_for_line
from tests.conftest import CANARIES, CANARY_KEYS, SluiceFactory, SluiceProcess
from tests.procfs import status_kib
from tests.service_account import vertex_config
from tests.ws_upstream import (
    BIG,
    CHUNK,
    CUT_CODE,
    CUT_REASON,
    GEMINI_EVENTS,
    OPENAI_EVENTS,
    WsUpstream,
    _dump,
)

pytestmark = pytest.mark.timeout(60)

GEMINI_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
VERTEX_PATH = "/ws/google.cloud.aiplatform.v1beta1.LlmBidiService/BidiGenerateContent"
MAX_MESSAGE = 1024 * 1024


@dataclass
class Realtime:
    sluice: SluiceProcess
    upstream: WsUpstream
    keys_file: Path
    access_log: Path
    keys: dict[str, str]

    @property
    def ws(self) -> str:
        return self.sluice.url.replace("http://", "ws://")

    def openai(self, key: str = "") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.sluice.url}/v1", api_key=key or self.keys["open"], max_retries=0
        )


@pytest.fixture(scope="module")
def upstream() -> Iterator[WsUpstream]:
    server = WsUpstream().start()
    yield server
    server.stop()


def _keys(keys_file: Path) -> dict[str, str]:
    return {
        "open": create_key(keys_file, "open", Limits()),
        "revoked": create_key(keys_file, "revoked", Limits()),
        "gpt-only": create_key(keys_file, "gpt-only", Limits(), ("openai",), ("gpt-allowed",)),
        "gemini-only": create_key(keys_file, "gemini-only", Limits(), ("gemini",), ("gemini-allowed",)),
        "tpm": create_key(keys_file, "tpm", Limits(tpm=25)),
        "single": create_key(keys_file, "single", Limits(concurrency=1)),
        "rpm": create_key(keys_file, "rpm", Limits(rpm=2)),
    }


@pytest.fixture(scope="module")
def rt(
    tmp_path_factory: pytest.TempPathFactory, upstream: WsUpstream, sluice_factory: SluiceFactory
) -> Iterator[Realtime]:
    base = tmp_path_factory.mktemp("realtime")
    keys_file, access_log = base / "keys.toml", base / "access.log"
    keys = _keys(keys_file)
    revoke_key(keys_file, "revoked")
    process = sluice_factory(
        **CANARY_KEYS,
        SLUICE_OPENAI_UPSTREAM=upstream.url,
        SLUICE_GEMINI_UPSTREAM=upstream.url,
        SLUICE_KEYS_FILE=str(keys_file),
        SLUICE_ACCESS_LOG=str(access_log),
        SLUICE_REALTIME_MAX_MESSAGE=str(MAX_MESSAGE),
    )
    yield Realtime(process, upstream, keys_file, access_log, keys)
    everything = process.log() + access_log.read_text()
    for secret in (*CANARIES, *keys.values()):
        assert secret not in everything, "a secret reached a log"


async def _close_of(conn: ClientConnection, timeout: float = 10.0) -> tuple[int, str]:
    """Read until the session closes; its close code and reason as the client received them."""
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(timeout):
            while True:
                await conn.recv()
    assert closed.value.rcvd is not None, "closed without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


def _assert_clean_upstream(rt: Realtime, session_headers: dict[str, str], path: str) -> None:
    """The upstream saw a server-held key and never any client key."""
    seen = json.dumps(session_headers) + path
    for secret in rt.keys.values():
        assert secret not in seen, "a client key reached the upstream"


# --- OpenAI Realtime, through the official SDK ------------------------------------------------


async def test_openai_sdk_events_are_exactly_the_upstreams(rt: Realtime) -> None:
    async with rt.openai().realtime.connect(model="gpt-echo") as conn:
        assert json.loads(await conn.recv_bytes())["type"] == "session.created"
        await conn.response.create()
        raw = [await conn.recv_bytes() for _ in OPENAI_EVENTS]
        assert raw == [_dump(event).encode() for event in OPENAI_EVENTS]
        parsed = conn.parse_event(raw[1])
        assert parsed.type == "response.output_text.delta" and parsed.delta == "Hel"  # type: ignore[union-attr]
        await conn.send({"type": "input_audio_buffer.append", "audio": "AAAA"})
        echoed = await conn.recv()
        assert echoed.type == "input_audio_buffer.append"
    session = rt.upstream.last()
    assert session.headers["authorization"] == f"Bearer {CANARY_KEYS['OPENAI_API_KEY']}"
    assert session.path == "/v1/realtime?model=gpt-echo"
    assert json.loads(session.received[0]) == {"type": "response.create"}
    _assert_clean_upstream(rt, session.headers, session.path)
    assert session.closed.wait(5) and session.close_code == 1000  # the SDK's close, passed on


async def test_iterating_the_sdk_connection_yields_the_events_then_ends(rt: Realtime) -> None:
    async with rt.openai().realtime.connect(model="gpt-echo") as conn:
        await conn.response.create()
        types = []
        async for event in conn:
            types.append(event.type)
            if event.type == "response.done":
                assert event.response.usage is not None and event.response.usage.total_tokens == 30
                break
    assert types == ["session.created", *(e["type"] for e in OPENAI_EVENTS)]


async def test_upstream_closing_mid_response_reaches_the_sdk_with_its_code(rt: Realtime) -> None:
    async with rt.openai().realtime.connect(model="cut") as conn:
        await conn.response.create()
        received = []
        with pytest.raises(ConnectionClosedError) as closed:
            async with asyncio.timeout(10):  # a hang is a failure
                async for event in conn:
                    received.append(event.type)
    assert received == ["session.created", "response.created", "response.output_text.delta"]
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (CUT_CODE, CUT_REASON)
    line = _log_line(rt, "cut")
    assert line["outcome"] == "upstream_error" and line["close_code"] == CUT_CODE
    assert line["closed_by"] == "upstream"


async def _sdk_refusal(rt: Realtime, key: str, model: str = "gpt-echo") -> ConnectionClosedError:
    async with rt.openai(key).realtime.connect(model=model) as conn:
        with pytest.raises(ConnectionClosedError) as closed:
            async with asyncio.timeout(10):
                await conn.recv()
    return closed.value


async def test_a_revoked_key_is_refused_with_a_policy_close_and_a_reason(rt: Realtime) -> None:
    before = len(rt.upstream.sessions)
    closed = await _sdk_refusal(rt, rt.keys["revoked"])
    assert closed.rcvd is not None and closed.rcvd.code == 1008
    assert re.fullmatch(r"This Sluice key was revoked at [0-9T:Z-]+\.", closed.rcvd.reason or "")
    closed = await _sdk_refusal(rt, "sk-not-a-key")
    assert closed.rcvd is not None and closed.rcvd.code == 1008
    assert len(rt.upstream.sessions) == before, "a refused session reached the upstream"


async def test_a_model_the_key_may_not_use_is_refused(rt: Realtime) -> None:
    closed = await _sdk_refusal(rt, rt.keys["gpt-only"], model="gpt-other")
    assert closed.rcvd is not None and closed.rcvd.code == 1008
    assert closed.rcvd.reason == "This key may not use the model 'gpt-other'."
    async with rt.openai(rt.keys["gpt-only"]).realtime.connect(model="gpt-allowed") as conn:
        assert json.loads(await conn.recv_bytes())["type"] == "session.created"
    closed = await _sdk_refusal(rt, rt.keys["gemini-only"], model="gpt-allowed")
    assert closed.rcvd is not None and (closed.rcvd.code, closed.rcvd.reason) == (
        1008,
        "This key may not use the openai API.",
    )


async def test_a_provider_without_a_credential_is_refused(
    rt: Realtime, sluice_factory: SluiceFactory
) -> None:
    keyless = sluice_factory(
        GEMINI_API_KEY=CANARY_KEYS["GEMINI_API_KEY"], SLUICE_GEMINI_UPSTREAM=rt.upstream.url
    )
    client = openai.AsyncOpenAI(base_url=f"{keyless.url}/v1", api_key="unused", max_retries=0)
    async with client.realtime.connect(model="gpt-echo") as conn:
        with pytest.raises(ConnectionClosedError) as closed:
            await conn.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
        1011,
        "Sluice has no openai API key configured; set OPENAI_API_KEY.",
    )
    # Gemini Live in Vertex AI's form needs a Vertex credential, which this Sluice lacks.
    async with connect(keyless.url.replace("http", "ws") + VERTEX_PATH) as ws:
        code, reason = await _close_of(ws)
    assert code == 1011 and "Vertex AI service account" in reason


# --- the browser's form, other routes, and raw frames --------------------------------------------


async def test_a_browser_key_in_the_subprotocol_is_answered_realtime_never_forwarded(
    rt: Realtime,
) -> None:
    key = rt.keys["open"]
    offered = ["realtime", f"openai-insecure-api-key.{key}", "openai-beta.realtime-v1"]
    async with connect(f"{rt.ws}/v1/realtime?model=gpt-echo", subprotocols=offered) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "realtime"
        assert key not in str(ws.response.headers)
        assert json.loads(await ws.recv())["type"] == "session.created"
        await ws.send(b"\x00\xff binary")
        assert await ws.recv() == b"\x00\xff binary"  # binary stays binary
        await ws.send("text ✓")
        assert await ws.recv() == "text ✓"
    session = rt.upstream.last()
    assert session.subprotocols == ["realtime", "openai-beta.realtime-v1"]
    assert session.received == [b"\x00\xff binary", "text ✓"]
    _assert_clean_upstream(rt, session.headers, session.path)


@pytest.mark.parametrize("path", ["/openai/v1/realtime", "/v1/realtime/"])
async def test_the_prefixed_route(rt: Realtime, path: str) -> None:
    headers = {"api-key": rt.keys["open"]}
    async with connect(f"{rt.ws}{path}?model=gpt-echo&call_id=c1", additional_headers=headers) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
    assert rt.upstream.last().path == "/v1/realtime?model=gpt-echo&call_id=c1"


async def test_any_other_websocket_is_closed_naming_the_route(rt: Realtime) -> None:
    headers = {"authorization": f"Bearer {rt.keys['open']}"}
    for path in ("/v1/chat/completions", "/gemini/v1/realtime", "/ws/elsewhere"):
        async with connect(rt.ws + path, additional_headers=headers) as ws:
            code, reason = await _close_of(ws)
        assert code == 1008 and path in reason and reason.startswith("No realtime route at")


async def test_a_message_over_the_limit_is_refused_either_way(rt: Realtime) -> None:
    headers = {"authorization": f"Bearer {rt.keys['open']}"}
    async with connect(f"{rt.ws}/v1/realtime?model=big", additional_headers=headers, max_size=None) as ws:
        await ws.recv()  # session.created
        await ws.send("anything")
        code, _ = await _close_of(ws)
    assert code == 1009  # the upstream's message was too big for Sluice
    async with connect(f"{rt.ws}/v1/realtime?model=gpt-echo", additional_headers=headers) as ws:
        await ws.recv()
        await ws.send("x" * (MAX_MESSAGE + 1))
        code, _ = await _close_of(ws)
    assert code == 1009
    session = rt.upstream.last()
    assert session.closed.wait(5) and session.close_code == 1009
    assert BIG > MAX_MESSAGE


async def test_a_client_that_vanishes_closes_the_upstream_within_a_second(rt: Realtime) -> None:
    headers = {"authorization": f"Bearer {rt.keys['open']}"}
    ws = await connect(f"{rt.ws}/v1/realtime?model=silent", additional_headers=headers)
    session = rt.upstream.last()
    while session.path != "/v1/realtime?model=silent":
        await asyncio.sleep(0.01)
        session = rt.upstream.last()
    gone = time.monotonic()
    ws.transport.abort()  # no close frame: the TCP connection just ends
    assert await asyncio.to_thread(session.closed.wait, 5)
    assert session.closed_at is not None and session.closed_at - gone < 1.0
    assert session.close_code == 1001
    line = _log_line(rt, "silent")
    # uvicorn reports a connection lost after the handshake as 1005, as it does a close without a code.
    assert line["closed_by"] == "client" and line["close_code"] in (1005, 1006)


# --- Gemini Live (raw client: google-genai dials wss:// only) -------------------------------------


async def _gemini(ws: ClientConnection, model: str) -> None:
    await ws.send(json.dumps({"setup": {"model": f"models/{model}"}}))
    assert await ws.recv() == b'{"setupComplete":{}}'


async def test_gemini_live_frames_pass_untouched_and_the_key_is_swapped(rt: Realtime) -> None:
    headers = {"x-goog-api-key": rt.keys["open"]}
    async with connect(rt.ws + GEMINI_PATH, additional_headers=headers) as ws:
        await _gemini(ws, "gemini-echo")
        await ws.send(
            json.dumps({"clientContent": {"turns": [{"parts": [{"text": "hi"}]}], "turnComplete": True}})
        )
        frames = [await ws.recv() for _ in GEMINI_EVENTS]
    assert frames == [_dump(event).encode() for event in GEMINI_EVENTS]
    session = rt.upstream.last()
    assert session.path == GEMINI_PATH
    assert session.headers["x-goog-api-key"] == CANARY_KEYS["GEMINI_API_KEY"]
    assert json.loads(session.received[0]) == {"setup": {"model": "models/gemini-echo"}}
    _assert_clean_upstream(rt, session.headers, session.path)
    line = _log_line(rt, "gemini-echo")
    assert line["usage"] == {"input": 7, "output": 5, "total": 12}
    assert line["frames_in"] == 2 and line["frames_out"] == 4


async def test_gemini_key_in_the_query_and_the_prefixed_route(rt: Realtime) -> None:
    path = GEMINI_PATH.replace("v1beta", "v1alpha") + "Constrained"
    async with connect(f"{rt.ws}/gemini{path}?key={rt.keys['open']}&alt=x") as ws:
        await _gemini(ws, "gemini-echo")
    session = rt.upstream.last()
    assert session.path == f"{path}?alt=x"
    _assert_clean_upstream(rt, session.headers, session.path)


async def test_gemini_setup_naming_a_model_the_key_may_not_use_is_refused(rt: Realtime) -> None:
    before = len(rt.upstream.sessions)
    headers = {"x-goog-api-key": rt.keys["gemini-only"]}
    async with connect(rt.ws + GEMINI_PATH, additional_headers=headers) as ws:
        await ws.send(json.dumps({"setup": {"model": "models/gemini-other"}}))
        code, reason = await _close_of(ws)
    assert (code, reason) == (1008, "This key may not use the model 'gemini-other'.")
    assert len(rt.upstream.sessions) == before
    async with connect(rt.ws + GEMINI_PATH, additional_headers=headers) as ws:
        await _gemini(ws, "gemini-allowed")


# --- accounting: the access log, metrics, limits ---------------------------------------------------


def _log_line(rt: Realtime, model: str, timeout: float = 5.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in read_lines(rt.access_log) if line.get("model") == model]
        if lines:
            return lines[-1]
        time.sleep(0.05)
    raise AssertionError(f"no access-log line for model {model!r}")


async def test_one_access_log_line_per_session_and_metrics(rt: Realtime) -> None:
    async with rt.openai().realtime.connect(model="gpt-logged") as conn:
        request_id = conn._connection.response.headers["x-request-id"]  # type: ignore[attr-defined]
        await conn.recv_bytes()
        await conn.response.create()
        for _ in OPENAI_EVENTS:
            await conn.recv_bytes()
    line = wait_for_line([rt.access_log], request_id)
    assert line["provider"] == "openai" and line["model"] == "gpt-logged" and line["key"] == "open"
    assert line["path"] == "/v1/realtime" and line["status"] == 101 and line["outcome"] == "ok"
    assert line["usage"] == {"input": 10, "output": 20, "total": 30}
    assert (line["frames_in"], line["frames_out"]) == (1, 1 + len(OPENAI_EVENTS))
    assert line["bytes_out"] == sum(len(_dump(e).encode()) for e in OPENAI_EVENTS) + len(
        _dump({"type": "session.created", "event_id": "e0", "session": {"id": "s1"}}).encode()
    )
    assert (line["close_code"], line["closed_by"]) == (1000, "client")
    assert isinstance(line["duration_ms"], float) and line["credential"] == "OPENAI_API_KEY"
    metrics = httpx.get(f"{rt.sluice.url}/metrics").text
    assert 'sluice_realtime_sessions_total{provider="openai",outcome="ok",close_code="1000"}' in metrics
    assert 'sluice_realtime_messages_total{provider="openai",direction="out"}' in metrics
    assert 'sluice_realtime_sessions{provider="openai"} 0' in metrics
    assert 'sluice_tokens_total{provider="openai",key="open",direction="output"}' in metrics
    assert not any(secret in metrics for secret in rt.keys.values())


async def test_tokens_the_provider_reported_count_against_tpm(rt: Realtime) -> None:
    async with rt.openai(rt.keys["tpm"]).realtime.connect(model="gpt-echo") as conn:
        await conn.recv_bytes()
        await conn.response.create()
        for _ in OPENAI_EVENTS:
            await conn.recv_bytes()  # 30 tokens, over the key's 25 a minute
    closed = await _sdk_refusal(rt, rt.keys["tpm"])
    assert closed.rcvd is not None and closed.rcvd.code == 1013
    assert closed.rcvd.reason.startswith("Rate limit reached for this key (tpm")


async def test_a_session_holds_its_concurrency_slot_while_open(rt: Realtime) -> None:
    async with rt.openai(rt.keys["single"]).realtime.connect(model="gpt-echo") as conn:
        await conn.recv_bytes()
        headers = conn._connection.response.headers  # type: ignore[attr-defined]
        assert headers["ratelimit-limit"] == "1"  # the limiter's headers on the handshake's answer
        closed = await _sdk_refusal(rt, rt.keys["single"])
        assert closed.rcvd is not None and closed.rcvd.code == 1013
    async with rt.openai(rt.keys["single"]).realtime.connect(model="gpt-echo") as conn:
        await conn.recv_bytes()  # the slot came back at close


async def test_a_session_is_one_request_against_rpm(rt: Realtime) -> None:
    headers = {"authorization": f"Bearer {rt.keys['rpm']}"}
    async with connect(f"{rt.ws}/v1/realtime?model=gpt-echo", additional_headers=headers) as ws:
        await ws.recv()
        for _ in range(5):  # messages within a session are not requests
            await ws.send("ping")
            assert await ws.recv() == "ping"
    async with connect(f"{rt.ws}/v1/realtime?model=gpt-echo", additional_headers=headers) as ws:
        await ws.recv()
    async with connect(f"{rt.ws}/v1/realtime?model=gpt-echo", additional_headers=headers) as ws:
        code, reason = await _close_of(ws)
    assert code == 1013 and reason.startswith("Rate limit reached for this key (rpm")


async def test_a_client_close_code_and_reason_reach_the_upstream(rt: Realtime) -> None:
    headers = {"authorization": f"Bearer {rt.keys['open']}"}
    async with connect(f"{rt.ws}/v1/realtime?model=gpt-echo", additional_headers=headers) as ws:
        await ws.recv()
        await ws.close(4321, "the user hung up")
    session = rt.upstream.last()
    assert session.closed.wait(5) and (session.close_code, session.close_reason) == (4321, "the user hung up")


async def test_a_client_that_stops_reading_holds_the_upstream_back(rt: Realtime) -> None:
    """Backpressure, not buffering: an upstream flooding a client that reads nothing is held back."""
    headers = {"authorization": f"Bearer {rt.keys['open']}"}
    pid = rt.sluice.proc.pid
    before = status_kib(pid, "VmRSS")
    async with connect(
        f"{rt.ws}/v1/realtime?model=flood", additional_headers=headers, max_queue=1, max_size=None
    ) as ws:
        await ws.recv()  # session.created
        await ws.send("go")
        session = rt.upstream.last()
        await asyncio.sleep(3)  # reading nothing
        stalled = session.sent
        await asyncio.sleep(1)
        assert session.sent == stalled, "the upstream kept sending to a client that reads nothing"
        grown_mib = (status_kib(pid, "VmRSS") - before) / 1024
        # Socket buffers on loopback hold a few MiB; without backpressure it would be gigabytes.
        assert stalled * CHUNK < 64 * 1024 * 1024 and grown_mib < 32
        for _ in range(stalled):  # reading again lets it go on
            assert len(await ws.recv()) == CHUNK
            if session.sent > stalled:
                break
        assert session.sent > stalled
    print(f"flood held back after {stalled} messages of 64 KiB; Sluice's RSS grew {grown_mib:.1f} MiB")


# --- idle timeout and drain ------------------------------------------------------------------------


async def test_an_idle_session_is_closed(upstream: WsUpstream, sluice_factory: SluiceFactory) -> None:
    sluice = sluice_factory(
        **CANARY_KEYS, SLUICE_OPENAI_UPSTREAM=upstream.url, SLUICE_REALTIME_IDLE_TIMEOUT="1.5"
    )
    async with connect(sluice.url.replace("http", "ws") + "/v1/realtime?model=silent") as ws:
        started = time.monotonic()
        code, reason = await _close_of(ws)
    assert (code, reason) == (1000, "idle for 1.5 s")
    assert time.monotonic() - started >= 1.4
    session = upstream.last()
    assert session.closed.wait(5) and session.close_code == 1000


async def test_sigterm_drains_sessions_then_closes_them_with_1001(
    upstream: WsUpstream, sluice_factory: SluiceFactory
) -> None:
    sluice = sluice_factory(**CANARY_KEYS, SLUICE_OPENAI_UPSTREAM=upstream.url, SLUICE_DRAIN_TIMEOUT="2")
    async with connect(sluice.url.replace("http", "ws") + "/v1/realtime?model=gpt-echo") as ws:
        await ws.recv()
        sluice.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        await ws.send("still here")  # the session lives on through the drain window
        assert await ws.recv() == "still here"
        code, reason = await _close_of(ws)
    assert (code, reason) == (1001, "Sluice is shutting down")
    session = upstream.last()
    assert session.closed.wait(5) and session.close_code == 1001
    assert sluice.proc.wait(30) in (0, -signal.SIGTERM)


# --- Gemini Live on Vertex AI --------------------------------------------------------------------------


async def test_the_vertex_form_is_served_by_a_vertex_service_account(
    upstream: WsUpstream, mock: MockHandle, sluice_factory: SluiceFactory, tmp_path: Path
) -> None:
    config = vertex_config(mock, tmp_path, endpoint=upstream.url)  # its token_uri is the mock's
    sluice = sluice_factory(**CANARY_KEYS, SLUICE_GEMINI_UPSTREAM=upstream.url, SLUICE_CONFIG=str(config))
    ws_url = sluice.url.replace("http", "ws")
    model = "projects/mock-project/locations/us-central1/publishers/google/models/gemini-echo"
    async with connect(
        f"{ws_url}/vertex{VERTEX_PATH}", additional_headers={"authorization": "Bearer c"}
    ) as ws:
        await ws.send(json.dumps({"setup": {"model": model}}))
        assert await ws.recv() == b'{"setupComplete":{}}'
    session = upstream.last()
    assert session.path == VERTEX_PATH
    token = session.headers["authorization"].removeprefix("Bearer ")
    assert token in mock.state.issued_tokens and "x-goog-api-key" not in session.headers
    # The Gemini API form on the same Sluice is served by the API key.
    async with connect(ws_url + GEMINI_PATH) as ws:
        await _gemini(ws, "gemini-echo")
    assert upstream.last().headers["x-goog-api-key"] == CANARY_KEYS["GEMINI_API_KEY"]
