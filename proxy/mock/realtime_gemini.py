"""The Gemini Live API protocol, as the mock provider speaks it (see :mod:`.realtime`).

The client's first message must be ``setup`` (else the session closes with
1007, as Google's does); the mock answers ``setupComplete``. A
``clientContent`` with ``turnComplete``, or a ``realtimeInput`` carrying
``text``, ``audioStreamEnd`` or ``activityEnd``, gets a reply: one
``serverContent`` message per scripted token, whose ``modelTurn.parts`` hold
the token's text (``responseModalities: ["TEXT"]``) or its audio as
``inlineData`` (``audio/pcm;rate=24000``, the default AUDIO modality, with an
``outputTranscription`` message per token when the setup asked for
``outputAudioTranscription``), then ``generationComplete``, then
``turnComplete`` with ``usageMetadata``. Audio chunks alone (``audio``,
``mediaChunks``) just accumulate, as speech does before the end of a turn.

Field names are read in lowerCamelCase or snake_case, as Google's parser
does (the Python SDK sends snake_case). Like Google's servers, the mock
sends its messages as binary frames of JSON.
Usage is deterministic: prompt text tokens are the client text bytes / 4 (at
least 1), prompt audio tokens 25 per second of 16 kHz PCM16 (one per 1,280
bytes); response tokens are the scripted tokens for text, one per started
1,920 bytes (24 kHz) for audio (Vertex AI calls them ``candidatesTokenCount``).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from . import formats as fmt
from .realtime import Session, mock_audio

JSON = dict[str, Any]
_IN_AUDIO_BYTES_PER_TOKEN = 1280
_OUT_AUDIO_BYTES_PER_TOKEN = 1920
_INVALID = 1007  # Google's close code for a message it cannot accept


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _camel(value: Any) -> Any:
    """Field names as lowerCamelCase: Google's JSON parser (proto3 JSON) takes
    a field's original snake_case name too, and the Python SDK sends those."""
    if isinstance(value, dict):
        return {_camel_name(k): _camel(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_camel(v) for v in value]
    return value


def _camel_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def _b64_size(data: object) -> int:
    try:
        return len(base64.b64decode(str(data or ""), validate=False))
    except (binascii.Error, ValueError):
        return 0


class GeminiLive:
    """One Gemini Live session: the setup, the turn's input, the reply script."""

    def __init__(self, session: Session, vertex: bool = False) -> None:
        self.s = session
        # Vertex AI names the reply's usage after candidates, the Gemini API after the response.
        self.out_count, self.out_details = (
            ("candidatesTokenCount", "candidatesTokensDetails")
            if vertex
            else ("responseTokenCount", "responseTokensDetails")
        )
        self.setup: JSON | None = None
        self.text_bytes = 0
        self.audio_bytes = 0

    async def opened(self) -> None:
        return None  # Google waits for the client's setup

    async def send(self, obj: JSON) -> None:
        await self.s.send(fmt.dumps(obj))

    async def invalid(self, reason: str) -> None:
        await self.s.close(_INVALID, reason, "error_injected")

    async def received(self, data: str | bytes) -> None:
        try:
            msg = _camel(json.loads(data))
        except ValueError:
            await self.invalid("Invalid JSON payload received.")
            return
        if not isinstance(msg, dict) or len(msg) != 1:
            await self.invalid("Invalid JSON payload received. Expected exactly one message field.")
            return
        ((kind, body),) = msg.items()
        if self.setup is None:
            if kind != "setup" or not isinstance(body, dict):
                await self.invalid("Request contains an invalid argument. The first message must be setup.")
                return
            self.setup = body
            await self.send({"setupComplete": {}})
            return
        if not isinstance(body, dict):
            await self.invalid(f'Invalid JSON payload received. Invalid value at "{kind}".')
            return
        if kind == "clientContent":
            self._count_turns(body.get("turns"))
            if body.get("turnComplete"):
                self._reply()
        elif kind == "realtimeInput":
            self._count_realtime(body)
            if body.get("text") or body.get("audioStreamEnd") or "activityEnd" in body:
                self._reply()
        elif kind != "toolResponse":
            await self.invalid(f'Invalid JSON payload received. Unknown name "{kind}": Cannot find field.')

    def _count_turns(self, turns: object) -> None:
        for turn in turns if isinstance(turns, list) else []:
            for part in turn.get("parts") or [] if isinstance(turn, dict) else []:
                if isinstance(part, dict):
                    self.text_bytes += len(str(part.get("text") or "").encode())
                    inline = part.get("inlineData")
                    if isinstance(inline, dict):
                        self.audio_bytes += _b64_size(inline.get("data"))

    def _count_realtime(self, body: JSON) -> None:
        self.text_bytes += len(str(body.get("text") or "").encode())
        chunks = list(body.get("mediaChunks") or [])
        chunks += [body[k] for k in ("audio", "video") if isinstance(body.get(k), dict)]
        for chunk in chunks:
            if isinstance(chunk, dict):
                self.audio_bytes += _b64_size(chunk.get("data"))

    def _reply(self) -> None:
        if not self.s.replying:  # a turn that arrives mid-reply joins the next one
            self.s.start_reply(self._respond)

    async def _respond(self) -> None:
        setup = self.setup or {}
        config = setup.get("generationConfig") or {}
        modalities = [str(m).upper() for m in config.get("responseModalities") or ["AUDIO"]]
        audio = "AUDIO" in modalities
        transcribe = audio and "outputAudioTranscription" in setup
        tokens = fmt.mock_tokens(self.s.ctl.tokens)
        frames: list[JSON] = []
        audio_sent = 0
        for token in tokens:
            if audio:
                chunk = mock_audio(self.s.ctl.audio_bytes)
                audio_sent += len(chunk)
                blob = {"mimeType": "audio/pcm;rate=24000", "data": base64.b64encode(chunk).decode()}
                frames.append({"serverContent": {"modelTurn": {"parts": [{"inlineData": blob}]}}})
                if transcribe:
                    frames.append({"serverContent": {"outputTranscription": {"text": token}}})
            else:
                frames.append({"serverContent": {"modelTurn": {"parts": [{"text": token}]}}})
        frames.append({"serverContent": {"generationComplete": True}})
        frames.append(
            {"serverContent": {"turnComplete": True}, "usageMetadata": self._usage(len(tokens), audio_sent)}
        )
        for i, frame in enumerate(frames):
            await self.s.send_reply_frame(fmt.dumps(frame), i == 0)

    def _usage(self, text_out: int, audio_out_bytes: int) -> JSON:
        text_in = max(1, self.text_bytes // 4)
        audio_in = self.audio_bytes // _IN_AUDIO_BYTES_PER_TOKEN
        out = _ceil_div(audio_out_bytes, _OUT_AUDIO_BYTES_PER_TOKEN) if audio_out_bytes else text_out
        prompt = [{"modality": "TEXT", "tokenCount": text_in}]
        if audio_in:
            prompt.append({"modality": "AUDIO", "tokenCount": audio_in})
        return {
            "promptTokenCount": text_in + audio_in,
            self.out_count: out,
            "totalTokenCount": text_in + audio_in + out,
            "promptTokensDetails": prompt,
            self.out_details: [{"modality": "AUDIO" if audio_out_bytes else "TEXT", "tokenCount": out}],
        }
