"""The mock provider's realtime WebSocket endpoints on their own (no Sluice in between).

The official Python SDKs (``openai``'s ``client.realtime.connect``,
``google-genai``'s ``client.aio.live.connect``) are pointed straight at the
mock: if they run a session against it, the mock speaks the protocols well
enough to test the proxy with. Raw ``websockets`` clients drive the fault
controls, which SDKs would retry or hide.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import google.auth.transport.requests
import pytest
import requests
import websockets
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from google.oauth2 import service_account
from websockets.asyncio.client import connect

from proxy.mock import MockHandle, MockRecord, mock_audio, mock_tokens, start_mock_in_thread
from tests.realtime_clients import GUARD, TlsFiles, gemini_session, genai_client, openai_session, tls_files
from tests.service_account import make_service_account

GEMINI_WS = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def mock(tls: TlsFiles) -> Iterator[MockHandle]:
    """The mock over TLS: google-genai dials wss:// only. The OpenAI SDK takes https too."""
    handle = start_mock_in_thread(default_tokens=5, ssl_context=tls.server_context())
    yield handle
    handle.stop()


@pytest.fixture(autouse=True)
def _fresh(mock: MockHandle) -> None:
    mock.state.reset()


def ws_url(mock: MockHandle, path: str) -> str:
    return mock.url.replace("https://", "wss://") + path


def events(frames: list[str | bytes]) -> list[dict[str, object]]:
    return [json.loads(f) for f in frames]


async def ended(mock: MockHandle, path: str) -> MockRecord:
    rec = mock.state.last(path)
    return await mock.state.wait_for_end(rec.id, GUARD)


# ------------------------------------------------------------ OpenAI Realtime
async def test_openai_text_turn(mock: MockHandle, tls: TlsFiles) -> None:
    turn = await asyncio.wait_for(
        openai_session(
            f"{mock.url}/v1",
            "sk-server",
            modalities=["text"],
            prompt="hello there!",
            tls=tls.client_context(),
        ),
        GUARD,
    )
    tokens = mock_tokens(5)
    assert turn.types == [
        "session.created",
        "session.updated",
        "conversation.item.added",
        "conversation.item.done",
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 5,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    assert turn.text == tokens
    done = turn.raw[-1].response
    assert done.status == "completed" and done.output[0].content[0].text == "".join(tokens)
    assert turn.usage.output_tokens == 5 and turn.usage.input_tokens == len("hello there!") // 4
    assert turn.usage.output_token_details.text_tokens == 5
    rec = await ended(mock, "/v1/realtime")
    # The handshake the upstream saw, and every frame both ways, in order.
    assert rec.headers["authorization"] == "Bearer sk-server" and rec.query == "model=gpt-realtime"
    assert [e["type"] for e in events(rec.frames_in)] == [
        "session.update",
        "conversation.item.create",
        "response.create",
    ]
    assert [e["type"] for e in events(rec.frames_out)] == turn.types
    assert rec.status == 101 and rec.outcome == "completed" and rec.close_code == 1000


async def test_openai_audio_turn(mock: MockHandle, tls: TlsFiles) -> None:
    turn = await asyncio.wait_for(
        openai_session(f"{mock.url}/v1", "sk-server", modalities=["audio"], tls=tls.client_context()), GUARD
    )
    assert turn.text == mock_tokens(5)  # the transcript deltas
    assert turn.audio == [mock_audio(960)] * 5
    assert (
        "response.output_audio.done" in turn.types and "response.output_audio_transcript.done" in turn.types
    )
    assert turn.raw[-1].response.output[0].content[0].transcript == "".join(mock_tokens(5))
    details = turn.usage.output_token_details
    assert (details.text_tokens, details.audio_tokens) == (5, 1)  # 4,800 bytes: one audio token


async def test_openai_controls_by_header_and_query(mock: MockHandle, tls: TlsFiles) -> None:
    turn = await asyncio.wait_for(
        openai_session(
            f"{mock.url}/openai-prefix",
            "sk-server",
            modalities=["audio"],
            headers={"x-mock-tokens": "2"},
            query={"x-mock-audio-bytes": "3000000"},  # a ~4 MB frame each
            tls=tls.client_context(),
        ),
        GUARD,
    )
    assert turn.text == mock_tokens(2) and turn.audio == [mock_audio(3_000_000)] * 2
    assert mock.state.last("/openai-prefix/realtime").headers["x-mock-tokens"] == "2"


async def test_openai_input_audio_cancel_and_errors(mock: MockHandle, tls: TlsFiles) -> None:
    url = ws_url(mock, "/v1/realtime?model=gpt-realtime&x-mock-delay-ms=50&x-mock-tokens=40")
    async with connect(url, ssl=tls.client_context(), additional_headers={"Authorization": "Bearer k"}) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        err = json.loads(await ws.recv())
        assert err["type"] == "error" and err["error"]["code"] == "input_audio_buffer_commit_empty"
        audio = base64.b64encode(b"\0" * 9600).decode()
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        kinds = [json.loads(await ws.recv())["type"] for _ in range(3)]
        assert kinds == ["input_audio_buffer.committed", "conversation.item.added", "conversation.item.done"]
        await ws.send(json.dumps({"type": "response.create"}))
        assert json.loads(await ws.recv())["type"] == "response.created"
        await ws.send(json.dumps({"type": "response.create"}))  # one at a time, as the real API
        await ws.send(json.dumps({"type": "response.cancel"}))
        await ws.send(json.dumps({"type": "no.such.event", "event_id": "e1"}))
        seen: list[dict[str, object]] = []
        while not seen or seen[-1]["type"] != "error" or len([s for s in seen if s["type"] == "error"]) < 2:
            seen.append(json.loads(await asyncio.wait_for(ws.recv(), GUARD)))
        errors = [s["error"] for s in seen if s["type"] == "error"]
        assert [e["code"] for e in errors] == ["conversation_already_has_active_response", "invalid_value"]  # type: ignore[index]
        done = next(s for s in seen if s["type"] == "response.done")
        assert done["response"]["status"] == "cancelled"  # type: ignore[index]
        assert len([s for s in seen if s["type"] == "response.output_audio.delta"]) < 40
    rec = await ended(mock, "/v1/realtime")
    assert rec.outcome == "completed"


async def test_openai_beta_event_names(mock: MockHandle, tls: TlsFiles) -> None:
    url = ws_url(mock, "/v1/realtime?model=gpt-4o-realtime-preview&x-mock-tokens=1")
    headers = {"Authorization": "Bearer k", "OpenAI-Beta": "realtime=v1"}
    async with connect(url, ssl=tls.client_context(), additional_headers=headers) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "response.create", "response": {"modalities": ["text"]}}))
        kinds = []
        while not kinds or kinds[-1] != "response.done":
            kinds.append(json.loads(await asyncio.wait_for(ws.recv(), GUARD))["type"])
    assert "response.text.delta" in kinds and "conversation.item.created" in kinds
    assert "conversation.item.done" not in kinds


# ---------------------------------------------------------------- Gemini Live
@pytest.mark.parametrize("modality", ["TEXT", "AUDIO"])
async def test_gemini_turn(mock: MockHandle, tls: TlsFiles, modality: str) -> None:
    client = genai_client(mock.url, "AIza-server", tls.client_context())
    turn = await asyncio.wait_for(gemini_session(client, modalities=[modality], prompt="hello there!"), GUARD)
    tokens = mock_tokens(5)
    assert turn.text == tokens
    if modality == "TEXT":
        assert turn.types == ["text"] * 5 + ["generationComplete", "turnComplete"]
        assert turn.usage.response_token_count == 5
    else:
        assert turn.types == ["audio", "transcription"] * 5 + ["generationComplete", "turnComplete"]
        assert turn.audio == [mock_audio(960)] * 5
        assert turn.usage.response_token_count == 3  # 4,800 bytes at 1,920 a token, rounded up
    assert turn.usage.prompt_token_count == len("hello there!") // 4
    rec = await ended(mock, "GenerativeService.BidiGenerateContent")
    assert rec.path == "/ws/google.ai.generativelanguage.v1.GenerativeService.BidiGenerateContent"
    assert rec.headers["x-goog-api-key"] == "AIza-server" and "key=" not in rec.query
    setup = json.loads(rec.frames_in[0])["setup"]
    assert setup["model"] == "models/gemini-live-2.5-flash"
    assert all(isinstance(f, bytes) for f in rec.frames_out)  # Google sends binary frames
    assert json.loads(rec.frames_out[0]) == {"setupComplete": {}}
    assert rec.outcome == "completed" and rec.close_code == 1000


async def test_gemini_realtime_input_and_protocol_errors(mock: MockHandle, tls: TlsFiles) -> None:
    url = ws_url(mock, GEMINI_WS + "?x-mock-tokens=2")
    async with connect(url, ssl=tls.client_context(), additional_headers={"x-goog-api-key": "k"}) as ws:
        await ws.send(
            json.dumps(
                {"setup": {"model": "models/m", "generation_config": {"response_modalities": ["TEXT"]}}}
            )
        )
        assert json.loads(await ws.recv()) == {"setupComplete": {}}
        chunk = {"data": base64.b64encode(b"\0" * 12800).decode(), "mimeType": "audio/pcm;rate=16000"}
        await ws.send(json.dumps({"realtimeInput": {"audio": chunk}}))  # speech: no reply yet
        await ws.send(json.dumps({"realtimeInput": {"audioStreamEnd": True}}))
        got = [json.loads(await asyncio.wait_for(ws.recv(), GUARD)) for _ in range(4)]
        assert [g["serverContent"]["modelTurn"]["parts"][0]["text"] for g in got[:2]] == mock_tokens(2)
        usage = got[3]["usageMetadata"]
        assert got[3]["serverContent"] == {"turnComplete": True}
        assert {d["modality"]: d["tokenCount"] for d in usage["promptTokensDetails"]} == {
            "TEXT": 1,
            "AUDIO": 10,
        }
        await ws.send(json.dumps({"bogus": {}}))
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            await asyncio.wait_for(ws.recv(), GUARD)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
    assert 'Unknown name "bogus"' in closed.value.rcvd.reason


async def test_gemini_first_message_must_be_setup(mock: MockHandle, tls: TlsFiles) -> None:
    async with connect(ws_url(mock, GEMINI_WS), ssl=tls.client_context()) as ws:
        await ws.send(json.dumps({"clientContent": {"turnComplete": True}}))
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            await asyncio.wait_for(ws.recv(), GUARD)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
    rec = await ended(mock, "BidiGenerateContent")
    assert rec.outcome == "error_injected" and rec.close_code == 1007


async def test_vertex_live_behind_an_issued_token(mock: MockHandle, tls: TlsFiles, tmp_path: Path) -> None:
    """google-genai in Vertex AI mode: a service account's token from the mock, then a session."""
    session = requests.Session()
    session.verify, session.trust_env = str(tls.ca), False  # trust_env: REQUESTS_CA_BUNDLE would win
    creds = service_account.Credentials.from_service_account_file(
        str(make_service_account(mock, tmp_path)), scopes=["https://www.googleapis.com/auth/cloud-platform"]
    )
    creds.refresh(google.auth.transport.requests.Request(session))
    options = genai_types.HttpOptions(base_url=mock.url, async_client_args={"ssl": tls.client_context()})
    client = genai.Client(
        vertexai=True, credentials=creds, project="p", location="us-central1", http_options=options
    )
    turn = await asyncio.wait_for(gemini_session(client, modalities=["TEXT"]), GUARD)
    assert turn.text == mock_tokens(5) and turn.usage.response_token_count == 5  # candidatesTokenCount
    rec = await ended(mock, "BidiGenerateContent")
    assert rec.path.endswith("/ws/google.cloud.aiplatform.v1beta1.LlmBidiService/BidiGenerateContent")
    assert rec.headers["authorization"] == f"Bearer {creds.token}"
    assert json.loads(rec.frames_in[0])["setup"]["model"] == (
        "projects/p/locations/us-central1/publishers/google/models/gemini-live-2.5-flash"
    )
    with pytest.raises(websockets.InvalidStatus) as refused:  # a token the mock never issued
        bogus = {"authorization": "Bearer ya29.bogus"}
        async with connect(ws_url(mock, rec.path), ssl=tls.client_context(), additional_headers=bogus):
            pass
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body)["error"]["status"] == "UNAUTHENTICATED"


# ------------------------------------------------------------------- controls
async def test_close_after_sends_code_and_reason(mock: MockHandle, tls: TlsFiles) -> None:
    headers = {
        "x-mock-close-after": "3",
        "x-mock-close-code": "4001",
        "x-mock-close-reason": "going away now",
    }
    client = genai_client(mock.url, "AIza-server", tls.client_context(), headers=headers)
    with pytest.raises(genai_errors.APIError) as raised:
        await asyncio.wait_for(gemini_session(client, modalities=["TEXT"]), GUARD)
    assert raised.value.code == 4001 and "going away now" in str(raised.value)
    rec = await ended(mock, "BidiGenerateContent")
    assert len(rec.frames_out) == 1 + 3  # setupComplete, then three messages of the reply
    assert (rec.outcome, rec.close_code, rec.close_reason) == ("error_injected", 4001, "going away now")


async def test_drop_after_aborts_without_close_frame(mock: MockHandle, tls: TlsFiles) -> None:
    url = ws_url(mock, "/v1/realtime?model=m&x-mock-drop-after=2")
    async with connect(url, ssl=tls.client_context()) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "response.create"}))
        kinds = []
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            while True:
                kinds.append(json.loads(await asyncio.wait_for(ws.recv(), GUARD))["type"])
    assert kinds == ["response.created", "response.output_item.added"]
    assert closed.value.rcvd is None  # no close frame: an abnormal closure (1006)
    rec = await ended(mock, "/v1/realtime")
    assert rec.outcome == "dropped" and rec.close_code == 1006


async def test_pacing_spreads_a_reply(mock: MockHandle, tls: TlsFiles) -> None:
    url = ws_url(mock, "/v1/realtime?model=m&x-mock-delay-ms=40&x-mock-tokens=3")
    async with connect(url, ssl=tls.client_context()) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
        start, kinds = time.monotonic(), [""]
        while kinds[-1] != "response.done":
            kinds.append(json.loads(await asyncio.wait_for(ws.recv(), GUARD))["type"])
    # A lower bound only: 12 frames, 11 pauses of 40 ms between them.
    assert time.monotonic() - start >= 11 * 0.04 * 0.9


@pytest.mark.parametrize(
    ("path", "credential", "error_code"),
    [
        ("/v1/realtime?model=m", "authorization", {429: "rate_limit_exceeded", 401: "invalid_api_key"}),
        (GEMINI_WS, "x-goog-api-key", {429: 429, 401: 401}),
    ],
)
async def test_refused_upgrade_in_the_providers_error_format(
    mock: MockHandle, tls: TlsFiles, path: str, credential: str, error_code: dict[int, object]
) -> None:
    mock.state.set_key_rule("bad-key", 401)
    prefix = "Bearer " if credential == "authorization" else ""
    cases = [
        ({"x-mock-status": "429", credential: f"{prefix}k"}, 429),
        ({credential: f"{prefix}bad-key"}, 401),
    ]
    for headers, status in cases:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with connect(ws_url(mock, path), ssl=tls.client_context(), additional_headers=headers):
                pass
        response = refused.value.response
        assert response.status_code == status
        assert json.loads(response.body)["error"]["code"] == error_code[status]
    assert [r.outcome for r in mock.state.records] == ["error_injected", "error_injected"]


async def test_echo_sends_every_frame_back(mock: MockHandle, tls: TlsFiles) -> None:
    headers = {"x-mock-echo": "1"}
    async with connect(ws_url(mock, GEMINI_WS), ssl=tls.client_context(), additional_headers=headers) as ws:
        frames: list[str | bytes] = ['{"a": 1}', b"\x00\xffbinary", "é" * 70_000]
        for frame in frames:
            await ws.send(frame)
            assert await asyncio.wait_for(ws.recv(), GUARD) == frame
    rec = await ended(mock, "BidiGenerateContent")
    assert rec.frames_in == rec.frames_out and len(rec.frames_in) == 3


async def test_client_vanishing_is_recorded(mock: MockHandle, tls: TlsFiles) -> None:
    url = ws_url(mock, "/v1/realtime?model=m")
    ws = await connect(url, ssl=tls.client_context())
    await ws.recv()
    ws.transport.abort()  # no close frame
    rec = await ended(mock, "/v1/realtime")
    assert rec.outcome == "client_closed" and rec.close_code == 1006


def test_plain_http_mock_serves_realtime_too() -> None:
    handle = start_mock_in_thread(default_tokens=2)
    try:
        turn = asyncio.run(
            asyncio.wait_for(openai_session(f"{handle.url}/v1", "sk", modalities=["text"]), GUARD)
        )
        assert turn.text == mock_tokens(2) and handle.url.startswith("http://")
    finally:
        handle.stop()
