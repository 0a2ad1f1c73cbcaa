"""The OpenAI Realtime API protocol, as the mock provider speaks it (see :mod:`.realtime`).

The GA event names the official SDKs type (``response.output_audio.delta``,
``conversation.item.added``, …), or the beta ones when the client sends
``OpenAI-Beta: realtime=v1``. A session opens with ``session.created``;
``session.update`` is merged and answered with ``session.updated``;
``conversation.item.create`` adds an item; ``input_audio_buffer.append`` /
``commit`` / ``clear`` keep an audio buffer; ``response.create`` streams a
reply (one delta per scripted token, with one audio delta per token when the
output modality is audio) ending in ``response.done`` with usage;
``response.cancel`` stops it (``status: cancelled``). Anything else gets an
``error`` event, as the real API answers.

Usage is deterministic: input text tokens are the conversation's client text
bytes / 4 (at least 1), input audio tokens one per 100 ms of 24 kHz PCM16
(4,800 bytes) appended; output text tokens are the scripted tokens, output
audio tokens one per started 4,800 bytes sent.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from . import formats as fmt
from .realtime import Session, mock_audio

JSON = dict[str, Any]
_AUDIO_BYTES_PER_TOKEN = 4800
# GA name -> beta name, for clients that still ask for the beta protocol.
_BETA_NAMES = {
    "conversation.item.added": "conversation.item.created",
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
}
_BETA_ONLY_DROPPED = {"conversation.item.done"}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class OpenAIRealtime:
    """One OpenAI Realtime session: conversation state and the reply script."""

    def __init__(self, session: Session, model: str) -> None:
        self.s = session
        self.beta = "realtime=v1" in session.rec.headers.get("openai-beta", "")
        rid = session.rec.id
        self.prefix = f"mock{rid}"
        self._n = 0
        self.last_item: str | None = None
        self.text_bytes = 0  # client text in the conversation (instructions excluded)
        self.audio_bytes = 0  # committed and pending input audio
        self.buffer_bytes = 0
        self._cancelled: JSON = {}  # the response.done a response.cancel answers
        self.config: JSON = {
            "type": "realtime",
            "object": "realtime.session",
            "id": f"sess_{self.prefix}",
            "model": model,
            "output_modalities": ["audio"],
            "instructions": "",
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "tracing": None,
            "prompt": None,
            "expires_at": int(time.time()) + 3600,
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": None,
                    "noise_reduction": None,
                    "turn_detection": None,
                },
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy", "speed": 1.0},
            },
            "include": None,
        }

    def _id(self, kind: str) -> str:
        self._n += 1
        return f"{kind}_{self.prefix}_{self._n}"

    def event(self, kind: str, **body: Any) -> str | None:
        """One server event as the text frame it travels in (None: not in the beta protocol)."""
        if self.beta:
            if kind in _BETA_ONLY_DROPPED:
                return None
            kind = _BETA_NAMES.get(kind, kind)
        return fmt.dumps({"type": kind, "event_id": self._id("event"), **body}).decode()

    async def emit(self, kind: str, **body: Any) -> None:
        frame = self.event(kind, **body)
        if frame is not None:
            await self.s.send(frame)

    async def error(self, message: str, code: str, param: str | None = None, event_id: object = None) -> None:
        err = {
            "type": "invalid_request_error",
            "code": code,
            "message": message,
            "param": param,
            "event_id": event_id,
        }
        await self.emit("error", error=err)

    # --------------------------------------------------------------- protocol
    async def opened(self) -> None:
        await self.emit("session.created", session=self.config)

    async def received(self, data: str | bytes) -> None:
        try:
            ev = json.loads(data)
        except ValueError:
            await self.error("We could not parse the JSON body of your request.", "invalid_json")
            return
        if not isinstance(ev, dict):
            await self.error("The event must be a JSON object.", "invalid_json")
            return
        kind = ev.get("type")
        handler = {
            "session.update": self._session_update,
            "conversation.item.create": self._item_create,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
        }.get(str(kind))
        if handler is None:
            await self.error(
                f"Invalid value: '{kind}'. Unsupported event type.",
                "invalid_value",
                "type",
                ev.get("event_id"),
            )
            return
        await handler(ev)

    async def _session_update(self, ev: JSON) -> None:
        update = ev.get("session")
        if not isinstance(update, dict):
            await self.error(
                "Missing required parameter: 'session'.",
                "missing_required_parameter",
                "session",
                ev.get("event_id"),
            )
            return
        if not self.beta and update.get("type") not in ("realtime", None):
            message = f"Invalid value: '{update.get('type')}'. Supported values are: 'realtime'."
            await self.error(message, "invalid_value", "session.type", ev.get("event_id"))
            return
        _merge(self.config, update)
        await self.emit("session.updated", session=self.config)

    async def _item_create(self, ev: JSON) -> None:
        item = ev.get("item")
        if not isinstance(item, dict):
            await self.error(
                "Missing required parameter: 'item'.",
                "missing_required_parameter",
                "item",
                ev.get("event_id"),
            )
            return
        item = {"id": self._id("item"), **item, "object": "realtime.item", "status": "completed"}
        for part in item.get("content") or []:
            if isinstance(part, dict):
                self.text_bytes += len(str(part.get("text") or "").encode())
        await self._add_item(item)

    async def _add_item(self, item: JSON) -> None:
        previous, self.last_item = self.last_item, item["id"]
        await self.emit("conversation.item.added", previous_item_id=previous, item=item)
        await self.emit("conversation.item.done", previous_item_id=previous, item=item)

    async def _append(self, ev: JSON) -> None:
        self.buffer_bytes += len(base64.b64decode(str(ev.get("audio") or ""), validate=False))

    async def _commit(self, ev: JSON) -> None:
        if not self.buffer_bytes:
            message = (
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio."
            )
            await self.error(message, "input_audio_buffer_commit_empty", None, ev.get("event_id"))
            return
        item_id, previous = self._id("item"), self.last_item
        self.audio_bytes += self.buffer_bytes
        self.buffer_bytes = 0
        await self.emit("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        content = [{"type": "input_audio", "transcript": None}]
        await self._add_item(
            {
                "id": item_id,
                "type": "message",
                "role": "user",
                "content": content,
                "object": "realtime.item",
                "status": "completed",
            }
        )

    async def _clear(self, ev: JSON) -> None:
        self.buffer_bytes = 0
        await self.emit("input_audio_buffer.cleared")

    async def _response_create(self, ev: JSON) -> None:
        if self.s.replying:
            message = "Conversation already has an active response in progress."
            await self.error(message, "conversation_already_has_active_response", None, ev.get("event_id"))
            return
        params = ev.get("response") if isinstance(ev.get("response"), dict) else {}
        assert isinstance(params, dict)
        key = "modalities" if self.beta else "output_modalities"
        modalities = params.get(key) or self.config.get(key) or ["audio"]
        self.s.start_reply(lambda: self._respond("audio" in modalities, params))

    async def _response_cancel(self, ev: JSON) -> None:
        if not await self.s.cancel_reply():
            await self.error(
                "Cancellation failed: no active response found.",
                "response_cancel_not_active",
                None,
                ev.get("event_id"),
            )
            return
        await self.emit("response.done", response=self._cancelled)

    # ------------------------------------------------------------------ reply
    async def _respond(self, audio: bool, params: JSON) -> None:
        tokens = fmt.mock_tokens(self.s.ctl.tokens)
        rid, item_id = self._id("resp"), self._id("item")
        response: JSON = {
            "object": "realtime.response",
            "id": rid,
            "status": "in_progress",
            "status_details": None,
            "output": [],
            "conversation_id": f"conv_{self.prefix}",
            "output_modalities": ["audio"] if audio else ["text"],
            "max_output_tokens": params.get("max_output_tokens", "inf"),
            "audio": {"output": self.config["audio"]["output"]} if audio else None,
            "usage": None,
            "metadata": params.get("metadata"),
        }
        self._cancelled = {
            **response,
            "status": "cancelled",
            "status_details": {"type": "cancelled", "reason": "client_cancelled"},
        }
        item: JSON = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        at = {"response_id": rid, "item_id": item_id, "output_index": 0, "content_index": 0}
        text = "".join(tokens)
        part: JSON = {"type": "audio", "transcript": ""} if audio else {"type": "text", "text": ""}
        done_part: JSON = {"type": "audio", "transcript": text} if audio else {"type": "text", "text": text}
        frames: list[str | None] = [
            self.event("response.created", response=response),
            self.event("response.output_item.added", response_id=rid, output_index=0, item=item),
            self.event("conversation.item.added", previous_item_id=self.last_item, item=item),
            self.event("response.content_part.added", **at, part=part),
        ]
        audio_sent = 0
        for token in tokens:
            if audio:
                chunk = mock_audio(self.s.ctl.audio_bytes)
                audio_sent += len(chunk)
                frames.append(
                    self.event("response.output_audio.delta", **at, delta=base64.b64encode(chunk).decode())
                )
                frames.append(self.event("response.output_audio_transcript.delta", **at, delta=token))
            else:
                frames.append(self.event("response.output_text.delta", **at, delta=token))
        content: JSON = (
            {"type": "output_audio", "transcript": text} if audio else {"type": "output_text", "text": text}
        )
        final_item = {**item, "status": "completed", "content": [content]}
        if audio:
            frames.append(self.event("response.output_audio.done", **at))
            frames.append(self.event("response.output_audio_transcript.done", **at, transcript=text))
        else:
            frames.append(self.event("response.output_text.done", **at, text=text))
        frames += [
            self.event("response.content_part.done", **at, part=done_part),
            self.event("response.output_item.done", response_id=rid, output_index=0, item=final_item),
            self.event("conversation.item.done", previous_item_id=self.last_item, item=final_item),
        ]
        usage = self._usage(len(tokens), audio_sent)
        done = {**response, "status": "completed", "output": [final_item], "usage": usage}
        frames.append(self.event("response.done", response=done))
        self.last_item = item_id
        first = True
        for frame in frames:
            if frame is not None:
                await self.s.send_reply_frame(frame, first)
                first = False

    def _usage(self, text_out: int, audio_out_bytes: int) -> JSON:
        text_in = max(1, self.text_bytes // 4)
        audio_in = self.audio_bytes // _AUDIO_BYTES_PER_TOKEN
        audio_out = _ceil_div(audio_out_bytes, _AUDIO_BYTES_PER_TOKEN)
        return {
            "total_tokens": text_in + audio_in + text_out + audio_out,
            "input_tokens": text_in + audio_in,
            "output_tokens": text_out + audio_out,
            "input_token_details": {
                "text_tokens": text_in,
                "audio_tokens": audio_in,
                "image_tokens": 0,
                "cached_tokens": 0,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }


def _merge(into: JSON, update: JSON) -> None:
    """session.update semantics: nested objects merge, everything else replaces."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
