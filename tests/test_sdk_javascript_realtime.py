"""The official JavaScript SDKs' realtime clients, run by node: ``openai``'s
``OpenAIRealtimeWS`` (openai/realtime/ws) and ``@google/genai``'s live client.

Both dial ``wss://`` only, so the server they reach has a throwaway
certificate that node trusts through ``NODE_EXTRA_CA_CERTS``. First straight
to the mock over TLS (the mock speaks the protocols well enough for them),
then through Sluice serving TLS itself: the events the SDK yields are exactly
the messages the mock sent, and the upstream saw the server-held key, never
the client's (which @google/genai puts in the URL, as ``?key=``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.mock import MockHandle, MockRecord, mock_audio, mock_tokens, start_mock_in_thread
from tests.conftest import CANARY_KEYS, CLIENT_KEY, SluiceFactory, SluiceProcess, upstream_env
from tests.node import run_node
from tests.realtime_clients import TlsFiles, tls_files

pytestmark = pytest.mark.timeout(120)
GEMINI_LIVE = "GenerativeService.BidiGenerateContent"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_mock(tls: TlsFiles) -> Iterator[MockHandle]:
    handle = start_mock_in_thread(ssl_context=tls.server_context())
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def tls_sluice(tls: TlsFiles, mock: MockHandle, sluice_factory: SluiceFactory) -> SluiceProcess:
    """Sluice serving https/wss itself, in front of the plain-HTTP mock."""
    args = ("--ssl-certfile", str(tls.chain), "--ssl-keyfile", str(tls.key))
    return sluice_factory(*args, **upstream_env(mock))


def run_openai(base_url: str, tls: TlsFiles, key: str, modality: str) -> dict[str, Any]:
    return run_node(  # type: ignore[no-any-return]
        "realtime_openai.mjs",
        OPENAI_BASE_URL=base_url,
        API_KEY=key,
        MODALITY=modality,
        NODE_EXTRA_CA_CERTS=str(tls.ca),
    )


def run_gemini(base_url: str, tls: TlsFiles, key: str, modality: str) -> dict[str, Any]:
    return run_node(  # type: ignore[no-any-return]
        "realtime_gemini.mjs",
        GEMINI_BASE_URL=base_url,
        API_KEY=key,
        MODALITY=modality,
        NODE_EXTRA_CA_CERTS=str(tls.ca),
    )


async def session_record(mock: MockHandle, path: str) -> MockRecord:
    return await mock.state.wait_for_end(mock.state.last(path).id, 20)


def sent(rec: MockRecord) -> list[Any]:
    return [json.loads(frame) for frame in rec.frames_out]


def check_openai(out: dict[str, Any], rec: MockRecord, modality: str, tokens: int) -> None:
    """The SDK emitted every event the mock sent, unchanged and in order."""
    assert out["events"] == sent(rec)
    assert out["close"]["code"] == 1000 and rec.close_code == 1000
    deltas = [e["delta"] for e in out["events"] if e["type"].endswith(("text.delta", "transcript.delta"))]
    assert deltas == mock_tokens(tokens)
    if modality == "audio":
        audio = [e for e in out["events"] if e["type"] == "response.output_audio.delta"]
        audio_tokens = -(-tokens * 960 // 4800)  # one per started 4,800 bytes
        assert len(audio) == tokens
        assert out["events"][-1]["response"]["usage"]["output_tokens"] == tokens + audio_tokens
    assert out["events"][-1]["response"]["usage"]["output_token_details"]["text_tokens"] == tokens


def check_gemini(out: dict[str, Any], rec: MockRecord, modality: str, tokens: int) -> None:
    assert out["messages"] == sent(rec)  # setupComplete first, turnComplete with usage last
    assert out["messages"][0] == {"setupComplete": {}}
    assert out["messages"][-1]["usageMetadata"]["totalTokenCount"] > 0
    contents = [m["serverContent"] for m in out["messages"][1:]]
    if modality == "TEXT":
        texts = [c["modelTurn"]["parts"][0]["text"] for c in contents if "modelTurn" in c]
    else:
        texts = [c["outputTranscription"]["text"] for c in contents if "outputTranscription" in c]
        blobs = [c["modelTurn"]["parts"][0]["inlineData"]["data"] for c in contents if "modelTurn" in c]
        assert blobs == [base64.b64encode(mock_audio(960)).decode()] * tokens
    assert texts == mock_tokens(tokens)


# ------------------------------------------------------------- straight to the mock
@pytest.mark.parametrize("modality", ["text", "audio"])
async def test_openai_js_against_the_mock(tls_mock: MockHandle, tls: TlsFiles, modality: str) -> None:
    out = run_openai(f"{tls_mock.url}/v1", tls, "sk-direct", modality)
    rec = await session_record(tls_mock, "/v1/realtime")
    assert rec.headers["authorization"] == "Bearer sk-direct" and rec.query == "model=gpt-realtime"
    check_openai(out, rec, modality, tls_mock.state.default_tokens)


@pytest.mark.parametrize("modality", ["TEXT", "AUDIO"])
async def test_genai_js_against_the_mock(tls_mock: MockHandle, tls: TlsFiles, modality: str) -> None:
    out = run_gemini(tls_mock.url, tls, "AIza-direct", modality)
    rec = await session_record(tls_mock, GEMINI_LIVE)
    assert rec.query == "key=AIza-direct"  # where @google/genai puts the key
    check_gemini(out, rec, modality, tls_mock.state.default_tokens)


# ------------------------------------------------------------------ through Sluice
@pytest.mark.parametrize("modality", ["text", "audio"])
async def test_openai_js_through_sluice(
    tls_sluice: SluiceProcess, mock: MockHandle, tls: TlsFiles, modality: str
) -> None:
    out = run_openai(f"{tls_sluice.url}/v1", tls, CLIENT_KEY, modality)
    rec = await session_record(mock, "/openai-prefix/v1/realtime")
    assert rec.headers["authorization"] == f"Bearer {CANARY_KEYS['OPENAI_API_KEY']}"
    assert CLIENT_KEY not in json.dumps(rec.headers) + rec.query
    check_openai(out, rec, modality, mock.state.default_tokens)
    assert CANARY_KEYS["OPENAI_API_KEY"] not in json.dumps(out)


@pytest.mark.parametrize("modality", ["TEXT", "AUDIO"])
async def test_genai_js_through_sluice(
    tls_sluice: SluiceProcess, mock: MockHandle, tls: TlsFiles, modality: str
) -> None:
    out = run_gemini(tls_sluice.url, tls, CLIENT_KEY, modality)
    rec = await session_record(mock, GEMINI_LIVE)
    assert rec.headers["x-goog-api-key"] == CANARY_KEYS["GEMINI_API_KEY"]
    assert "key=" not in rec.query  # the client's ?key= was taken off, not passed on
    assert CLIENT_KEY not in json.dumps(rec.headers) + rec.query
    check_gemini(out, rec, modality, mock.state.default_tokens)
