"""A scripted realtime upstream on loopback: a real ``websockets`` server in a thread.

It speaks enough of OpenAI Realtime and Gemini Live for the tests of the
passthrough (``tests/test_realtime.py``), and records every session: the
handshake's path and headers, each message received (type kept), and how
and when the session closed. The model picks the script: OpenAI's from
``?model=``, Gemini's from the first (``setup``) message.

* ``echo`` (any other name too): OpenAI sends ``session.created`` first;
  every client message comes back unchanged; a message containing
  ``response.create`` (OpenAI) or ``clientContent`` (Gemini) is answered
  with :data:`OPENAI_EVENTS` / :data:`GEMINI_EVENTS`, usage included.
* ``cut``: like ``echo``, but the answer stops after two events with a close
  ``4011 "upstream exploded"``.
* ``silent``: never sends anything.
* ``big``: answers any message with one of :data:`BIG` bytes.
* ``flood``: answers a message with binary messages of :data:`CHUNK` bytes,
  as fast as they are taken, for ever (``Session.sent`` counts them).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

OPENAI_EVENTS = [
    {"type": "response.created", "event_id": "e1", "response": {"id": "resp_1", "status": "in_progress"}},
    {"type": "response.output_text.delta", "event_id": "e2", "response_id": "resp_1", "delta": "Hel"},
    {"type": "response.output_text.delta", "event_id": "e3", "response_id": "resp_1", "delta": "lo ✓"},
    {
        "type": "response.done",
        "event_id": "e4",
        "response": {
            "id": "resp_1",
            "status": "completed",
            "usage": {"total_tokens": 30, "input_tokens": 10, "output_tokens": 20},
        },
    },
]
GEMINI_EVENTS = [
    {"serverContent": {"modelTurn": {"parts": [{"text": "Hel"}]}}},
    {"serverContent": {"modelTurn": {"parts": [{"text": "lo ✓"}]}}},
    {
        "serverContent": {"turnComplete": True},
        "usageMetadata": {"promptTokenCount": 7, "responseTokenCount": 5, "totalTokenCount": 12},
    },
]
CUT_CODE, CUT_REASON = 4011, "upstream exploded"
BIG = 2 * 1024 * 1024
CHUNK = 64 * 1024


def _dump(event: dict[str, Any]) -> str:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


@dataclass
class Session:
    path: str
    headers: dict[str, str]
    subprotocols: list[str]
    model: str | None = None
    received: list[str | bytes] = field(default_factory=list)
    close_code: int | None = None  # what the upstream received from Sluice
    close_reason: str | None = None
    closed_at: float | None = None  # time.monotonic()
    closed: threading.Event = field(default_factory=threading.Event)
    sent: int = 0  # messages sent by the flood script


class WsUpstream:
    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Future[None] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> WsUpstream:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the scripted upstream did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)

    def last(self, timeout: float = 10.0) -> Session:
        deadline = time.monotonic() + timeout
        while not self.sessions:
            if time.monotonic() > deadline:
                raise AssertionError("no session reached the upstream")
            time.sleep(0.01)
        return self.sessions[-1]

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = self._loop.create_future()
        async with serve(self._handler, "127.0.0.1", 0, max_size=None, compression=None) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
            self._ready.set()
            await self._stop

    async def _handler(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        offered = request.headers.get_all("sec-websocket-protocol")
        session = Session(
            path=request.path,
            headers={k.lower(): v for k, v in request.headers.raw_items()},
            subprotocols=[p.strip() for value in offered for p in value.split(",")],
        )
        self.sessions.append(session)
        gemini = session.path.startswith("/ws/")
        if not gemini:
            query = request.path.partition("?")[2]
            session.model = dict(p.partition("=")[::2] for p in query.split("&")).get("model")
        try:
            if not gemini and session.model != "silent":
                await ws.send(_dump({"type": "session.created", "event_id": "e0", "session": {"id": "s1"}}))
            async for message in ws:
                session.received.append(message)
                if gemini and len(session.received) == 1:
                    setup = json.loads(message)["setup"]
                    session.model = setup["model"].rpartition("/")[2]
                    if session.model != "silent":
                        await ws.send(b'{"setupComplete":{}}')
                    continue
                await self._answer(ws, session, message, gemini)
        except ConnectionClosed:
            pass
        finally:
            session.close_code, session.close_reason = ws.close_code, ws.close_reason
            session.closed_at = time.monotonic()
            session.closed.set()

    async def _answer(
        self, ws: ServerConnection, session: Session, message: str | bytes, gemini: bool
    ) -> None:
        if session.model == "silent":
            return
        if session.model == "big":
            await ws.send(b"x" * BIG)
            return
        if session.model == "flood":
            chunk = b"f" * CHUNK
            while True:
                await ws.send(chunk)  # returns once the socket's buffer has room
                session.sent += 1
        text = message if isinstance(message, str) else message.decode("latin-1")
        if "response.create" not in text and "clientContent" not in text:
            await ws.send(message)  # echoed as it came, text or binary
            return
        events = GEMINI_EVENTS if gemini else OPENAI_EVENTS
        for i, event in enumerate(events):
            if session.model == "cut" and i == 2:
                await ws.close(CUT_CODE, CUT_REASON)
                return
            data = _dump(event)
            await ws.send(data.encode() if gemini else data)  # Gemini Live sends JSON in binary frames
