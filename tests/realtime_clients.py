"""Helpers for the realtime (WebSocket) tests: TLS for wss://, and SDK sessions.

google-genai dials Gemini Live only over ``wss://``, so a test that points it
at a server on loopback needs TLS: :func:`tls_files` makes a throwaway CA and
a certificate for 127.0.0.1 (``ca`` is what a client must trust: Python via
:func:`client_context`, node via ``NODE_EXTRA_CA_CERTS``).

:func:`openai_session` and :func:`gemini_session` run one scripted turn with
the official Python SDKs and return what they yielded, so tests of the mock
alone and of Sluice in between compare the same things.
"""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import openai
from google import genai
from google.genai import types as genai_types
from openai.types.websocket_connection_options import WebSocketConnectionOptions

from tests.scripted_upstream import make_certificates

GUARD = 20.0  # seconds: hang guard for one realtime session


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # PEM of the CA that signed ``chain``
    chain: Path  # a server certificate for 127.0.0.1
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.chain, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def tls_files(directory: Path) -> TlsFiles:
    certs = make_certificates(directory)
    ca = directory / "ca.pem"
    ca.write_bytes(certs.ca)
    return TlsFiles(ca, certs.chain, certs.key)


@dataclass
class Turn:
    """What an SDK yielded for one turn."""

    types: list[str] = field(default_factory=list)  # event types (OpenAI) or message kinds (Gemini)
    text: list[str] = field(default_factory=list)  # text or transcript deltas
    audio: list[bytes] = field(default_factory=list)  # decoded audio chunks
    usage: Any = None
    raw: list[Any] = field(default_factory=list)  # the SDK's event objects


async def openai_session(
    base_url: str,
    api_key: str,
    *,
    modalities: list[str],
    prompt: str = "hello",
    model: str = "gpt-realtime",
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    websocket_base_url: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> Turn:
    """session.update, one user item, response.create; the events up to response.done."""
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key=api_key, max_retries=0, websocket_base_url=websocket_base_url
    )
    turn = Turn()
    # ssl is passed on to websockets' connect, though the SDK's TypedDict does not name it.
    options = cast("WebSocketConnectionOptions", {"ssl": tls} if tls else {})
    async with client.realtime.connect(
        model=model,
        extra_headers=headers or {},
        extra_query=query or {},
        websocket_connection_options=options,
    ) as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": modalities})  # type: ignore[typeddict-item]
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": prompt}]}
        )
        await conn.response.create()
        async for event in conn:
            turn.types.append(event.type)
            turn.raw.append(event)
            if event.type in ("response.output_text.delta", "response.output_audio_transcript.delta"):
                turn.text.append(event.delta)
            elif event.type == "response.output_audio.delta":
                turn.audio.append(base64.b64decode(event.delta))
            elif event.type == "response.done":
                turn.usage = event.response.usage
                break
    return turn


def genai_client(
    base_url: str, api_key: str, tls: ssl.SSLContext, headers: dict[str, str] | None = None
) -> genai.Client:
    options = genai_types.HttpOptions(base_url=base_url, headers=headers, async_client_args={"ssl": tls})
    return genai.Client(api_key=api_key, http_options=options)


async def gemini_session(
    client: genai.Client,
    *,
    modalities: list[str],
    prompt: str = "hello",
    model: str = "gemini-live-2.5-flash",
) -> Turn:
    """One clientContent turn; the messages up to turnComplete."""
    transcribe = genai_types.AudioTranscriptionConfig() if modalities == ["AUDIO"] else None
    config = genai_types.LiveConnectConfig(
        response_modalities=[genai_types.Modality(m) for m in modalities],
        output_audio_transcription=transcribe,
    )
    turn = Turn()
    async with client.aio.live.connect(model=model, config=config) as session:
        await session.send_client_content(turns={"role": "user", "parts": [{"text": prompt}]})
        async for message in session.receive():  # ends after turnComplete
            turn.raw.append(message)
            content = message.server_content
            if content is None:
                continue
            if content.model_turn:
                for part in content.model_turn.parts or []:
                    if part.text:
                        turn.types.append("text")
                        turn.text.append(part.text)
                    if part.inline_data and part.inline_data.data:
                        turn.types.append("audio")
                        turn.audio.append(part.inline_data.data)
            if content.output_transcription and content.output_transcription.text:
                turn.types.append("transcription")
                turn.text.append(content.output_transcription.text)
            if content.generation_complete:
                turn.types.append("generationComplete")
            if content.turn_complete:
                turn.types.append("turnComplete")
                turn.usage = message.usage_metadata
    return turn
