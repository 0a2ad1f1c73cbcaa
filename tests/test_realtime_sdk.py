"""Realtime sessions with the official Python SDKs, through Sluice (over TLS) to the mock.

``openai`` (``client.realtime.connect``) and ``google-genai``
(``client.aio.live.connect``, which dials only ``wss://``) run the same
scripted turns through Sluice as ``tests/test_mock_realtime.py`` runs
against the mock alone: what the SDK yields must be exactly what the mock
sent, the mock must have seen the server-held key and never the client's,
and refusals must reach the SDK as a close code and a reason. Both
transport modes (``BOTH_MODES``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.genai import errors as genai_errors
from websockets.exceptions import ConnectionClosedError

from proxy.keybook import create_key, revoke_key
from proxy.limits import Limits
from proxy.mock import MockHandle, MockRecord, mock_audio, mock_tokens, start_mock_in_thread
from tests.accesslog import read_lines
from tests.conftest import CANARIES, CANARY_KEYS, SluiceFactory, SluiceProcess
from tests.realtime_clients import GUARD, TlsFiles, gemini_session, genai_client, openai_session, tls_files

pytestmark = pytest.mark.timeout(90)


@dataclass
class Through:
    sluice: SluiceProcess
    mock: MockHandle
    tls: TlsFiles
    access_log: Path
    keys: dict[str, str]

    async def openai(self, key: str = "", **kwargs: object) -> object:
        return await asyncio.wait_for(
            openai_session(
                f"{self.sluice.url}/v1",
                key or self.keys["open"],
                tls=self.tls.client_context(),
                **kwargs,  # type: ignore[arg-type]
            ),
            GUARD,
        )

    async def gemini(self, key: str = "", **kwargs: object) -> object:
        client = genai_client(self.sluice.url, key or self.keys["open"], self.tls.client_context())
        return await asyncio.wait_for(gemini_session(client, **kwargs), GUARD)  # type: ignore[arg-type]

    async def ended(self, path_part: str) -> MockRecord:
        return await self.mock.state.wait_for_end(self.mock.state.last(path_part).id, GUARD)


@pytest.fixture(scope="module")
def mock() -> Iterator[MockHandle]:
    handle = start_mock_in_thread(default_tokens=5)  # plain: Sluice dials ws:// to it
    yield handle
    handle.stop()


@pytest.fixture(autouse=True)
def _fresh(mock: MockHandle) -> None:
    mock.state.reset()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return tls_files(tmp_path_factory.mktemp("tls"))


def _tls_env(tls: TlsFiles) -> dict[str, str]:
    return {"SLUICE_SSL_CERTFILE": str(tls.chain), "SLUICE_SSL_KEYFILE": str(tls.key)}


@pytest.fixture(scope="module")
def through(
    tmp_path_factory: pytest.TempPathFactory, mock: MockHandle, tls: TlsFiles, sluice_factory: SluiceFactory
) -> Iterator[Through]:
    base = tmp_path_factory.mktemp("realtime-sdk")
    keys_file, access_log = base / "keys.toml", base / "access.log"
    keys = {
        "open": create_key(keys_file, "open", Limits()),
        "revoked": create_key(keys_file, "revoked", Limits()),
        "flash-only": create_key(
            keys_file, "flash-only", Limits(), None, ("gemini-live-2.5-flash", "gpt-mini")
        ),
        "tpm": create_key(keys_file, "tpm", Limits(tpm=5)),
    }
    revoke_key(keys_file, "revoked")
    process = sluice_factory(
        **CANARY_KEYS,
        **_tls_env(tls),
        SLUICE_OPENAI_UPSTREAM=mock.url,
        SLUICE_GEMINI_UPSTREAM=mock.url,
        SLUICE_KEYS_FILE=str(keys_file),
        SLUICE_ACCESS_LOG=str(access_log),
    )
    assert process.url.startswith("https://")
    yield Through(process, mock, tls, access_log, keys)
    everything = process.log() + access_log.read_text()
    for secret in (*CANARIES, *keys.values()):
        assert secret not in everything, "a secret reached a log"


def _frames(frames: list[str | bytes]) -> list[dict[str, object]]:
    return [json.loads(f) for f in frames]


def _no_client_key(through: Through, rec: MockRecord) -> None:
    seen = json.dumps(rec.headers) + rec.path + rec.query
    assert not any(secret in seen for secret in through.keys.values()), "a client key reached the upstream"


# --- OpenAI Realtime ---------------------------------------------------------------------------------


@pytest.mark.parametrize("modality", ["text", "audio"])
async def test_openai_sdk_yields_exactly_the_mocks_events(through: Through, modality: str) -> None:
    turn = await through.openai(modalities=[modality], prompt="hello there!")
    rec = await through.ended("/v1/realtime")
    # Every event the SDK yielded is the mock's, field for field, in order.
    assert [event.to_dict() for event in turn.raw] == _frames(rec.frames_out)  # type: ignore[attr-defined]
    assert turn.text == mock_tokens(5)  # type: ignore[attr-defined]
    if modality == "audio":
        assert turn.audio == [mock_audio(960)] * 5  # type: ignore[attr-defined]
    assert [e["type"] for e in _frames(rec.frames_in)] == [
        "session.update",
        "conversation.item.create",
        "response.create",
    ]
    assert rec.headers["authorization"] == f"Bearer {CANARY_KEYS['OPENAI_API_KEY']}"
    assert rec.query == "model=gpt-realtime"
    _no_client_key(through, rec)
    assert rec.close_code == 1000 and rec.outcome == "completed"


async def test_openai_sdk_refusals_are_closes_with_reasons(through: Through) -> None:
    with pytest.raises(ConnectionClosedError) as revoked:
        await through.openai(through.keys["revoked"], modalities=["text"])
    assert revoked.value.rcvd is not None and revoked.value.rcvd.code == 1008
    assert revoked.value.rcvd.reason == "Invalid API key: this Sluice key is unknown or revoked."
    with pytest.raises(ConnectionClosedError) as model:
        await through.openai(through.keys["flash-only"], modalities=["text"], model="gpt-realtime")
    assert model.value.rcvd is not None and model.value.rcvd.code == 1008
    assert model.value.rcvd.reason == "This key may not use the model 'gpt-realtime'."
    assert not through.mock.state.records, "a refused session reached the upstream"


async def test_the_mock_closing_mid_response_reaches_the_sdk_with_its_code(through: Through) -> None:
    headers = {"x-mock-close-after": "3", "x-mock-close-code": "4500", "x-mock-close-reason": "kaput"}
    with pytest.raises(ConnectionClosedError) as closed:
        await through.openai(modalities=["text"], headers=headers)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4500, "kaput")


async def test_the_mock_vanishing_mid_response_is_a_1014_not_a_hang(through: Through) -> None:
    with pytest.raises(ConnectionClosedError) as closed:
        await through.openai(modalities=["text"], headers={"x-mock-drop-after": "3"})
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1014, "the upstream connection was lost")


async def test_usage_from_response_done_counts_against_tpm_and_in_the_log(through: Through) -> None:
    turn = await through.openai(through.keys["tpm"], modalities=["text"], prompt="hello there!")
    usage = turn.usage  # type: ignore[attr-defined]
    deadline = time.monotonic() + 5
    lines: list[dict[str, object]] = []
    while not lines and time.monotonic() < deadline:
        lines = [line for line in read_lines(through.access_log) if line.get("key") == "tpm"]
        time.sleep(0.05)
    assert lines and lines[-1]["usage"] == {
        "input": usage.input_tokens,
        "output": usage.output_tokens,
        "total": usage.total_tokens,
    }
    with pytest.raises(ConnectionClosedError) as limited:
        await through.openai(through.keys["tpm"], modalities=["text"])
    assert limited.value.rcvd is not None and limited.value.rcvd.code == 1013
    assert "tpm" in limited.value.rcvd.reason


# --- Gemini Live -------------------------------------------------------------------------------------


@pytest.mark.parametrize("modality", ["TEXT", "AUDIO"])
async def test_gemini_sdk_yields_exactly_the_mocks_messages(through: Through, modality: str) -> None:
    turn = await through.gemini(modalities=[modality], prompt="hello there!")
    rec = await through.ended("BidiGenerateContent")
    assert turn.text == mock_tokens(5)  # type: ignore[attr-defined]
    if modality == "AUDIO":
        assert turn.audio == [mock_audio(960)] * 5  # type: ignore[attr-defined]
    # Each message the SDK yielded is one the mock sent (after setupComplete), in order, whole.
    sent = _frames(rec.frames_out)
    assert sent[0] == {"setupComplete": {}}
    yielded = [m.model_dump(mode="json", exclude_none=True) for m in turn.raw]  # type: ignore[attr-defined]
    assert len(yielded) == len(sent) - 1
    assert all(isinstance(f, bytes) for f in rec.frames_out)  # binary frames stay binary
    assert turn.usage.response_token_count == sent[-1]["usageMetadata"]["responseTokenCount"]  # type: ignore[attr-defined,index]
    assert rec.headers["x-goog-api-key"] == CANARY_KEYS["GEMINI_API_KEY"] and "key=" not in rec.query
    _no_client_key(through, rec)
    assert rec.close_code == 1000


async def test_gemini_sdk_refusals_are_closes_with_reasons(through: Through) -> None:
    with pytest.raises(genai_errors.APIError) as revoked:
        await through.gemini(through.keys["revoked"], modalities=["TEXT"])
    assert revoked.value.code == 1008
    # google-genai puts a close's reason in the error's text: "1008 None. <reason>".
    assert str(revoked.value) == "1008 None. Invalid API key: this Sluice key is unknown or revoked."
    with pytest.raises(genai_errors.APIError) as model:
        await through.gemini(through.keys["flash-only"], modalities=["TEXT"], model="gemini-other")
    assert model.value.code == 1008
    assert str(model.value) == "1008 None. This key may not use the model 'gemini-other'."
    assert not through.mock.state.records, "a refused session reached the upstream"


async def test_gemini_without_a_server_key_is_refused(
    mock: MockHandle, tls: TlsFiles, sluice_factory: SluiceFactory
) -> None:
    keyless = sluice_factory(
        OPENAI_API_KEY=CANARY_KEYS["OPENAI_API_KEY"], SLUICE_OPENAI_UPSTREAM=mock.url, **_tls_env(tls)
    )
    client = genai_client(keyless.url, "anything", tls.client_context())
    with pytest.raises(genai_errors.APIError) as refused:
        await asyncio.wait_for(gemini_session(client, modalities=["TEXT"]), GUARD)
    assert refused.value.code == 1011
    assert str(refused.value) == "1011 None. Sluice has no gemini API key configured; set GEMINI_API_KEY."


# --- the upstream's refusals at the handshake ----------------------------------------------------------


async def test_a_refused_credential_fails_over_to_the_next_one(
    mock: MockHandle, tls: TlsFiles, sluice_factory: SluiceFactory
) -> None:
    refused, good = "sk-refused-0123456789abcdef", "sk-good-0123456789abcdef"
    mock.state.set_key_rule(refused, 401)
    sluice = sluice_factory(
        OPENAI_API_KEY=f"{refused},{good}", SLUICE_OPENAI_UPSTREAM=mock.url, **_tls_env(tls)
    )
    for _ in range(2):
        turn = await asyncio.wait_for(
            openai_session(f"{sluice.url}/v1", "client", modalities=["text"], tls=tls.client_context()), GUARD
        )
        assert turn.text == mock_tokens(5)
    sessions = [r for r in mock.state.records if r.path == "/v1/realtime"]
    # The refused key was tried once; then the pool stayed on the good one (sticky, as for HTTP).
    assert [r.headers["authorization"] for r in sessions] == [f"Bearer {k}" for k in (refused, good, good)]
    assert refused not in sluice.log() and good not in sluice.log()


async def test_an_upstream_4xx_at_the_handshake_reaches_the_sdk_with_its_message(through: Through) -> None:
    with pytest.raises(ConnectionClosedError) as closed:
        await through.openai(modalities=["text"], headers={"x-mock-status": "404"})
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert closed.value.rcvd.reason.startswith("The openai upstream answered HTTP 404: ")
