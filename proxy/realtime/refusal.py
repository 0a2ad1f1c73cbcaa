"""A refusal on a WebSocket: accepted, then closed with a code and a reason a person can read.

The layers (auth, rate limit, your own) refuse a request with
``proxy.errors.send_error``: an HTTP status and a message in the provider's
error format. A browser cannot read an HTTP answer to a WebSocket handshake
(it sees only "failed"), and the SDKs show a close's code and reason but not
a refused handshake's body. So on a WebSocket, :class:`SessionSend` turns
that error into an accepted handshake (answering the ``realtime``
subprotocol a browser offered, so it does not fail the handshake first)
followed by a close:

========================================  =======================
refusal                                   close code
========================================  =======================
400, 401, 403, 404, 413 (key, model, path) 1008 policy violation
429, 503 with ``retry-after`` (overload)  1013 try again later
502, 504 (upstream unreachable, refused)  1014 bad gateway
503 without it (no provider key), other   1011 internal error
========================================  =======================

The reason is the error's message, cut to the 123 bytes a close frame holds.
A Gemini Live session is refused once its client has sent its first message
(or 5 s have passed), which is when google-genai reads.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from ..asgi import Message, Receive, Send
from ..context import RequestContext
from ..jsonread import loads
from .stats import SessionStats

SETUP_WAIT: Final = 5.0  # seconds a refused Gemini Live client has to send its setup
MAX_REASON: Final = 123  # bytes: a close frame's payload is 125, two of them the code

POLICY: Final = 1008
TRY_AGAIN_LATER: Final = 1013
BAD_GATEWAY: Final = 1014
INTERNAL_ERROR: Final = 1011


def close_code(status: int, retry_after: bool) -> int:
    if status in (400, 401, 403, 404, 413):
        return POLICY
    if status == 429 or (status == 503 and retry_after):
        return TRY_AGAIN_LATER
    if status in (502, 504):
        return BAD_GATEWAY
    return INTERNAL_ERROR


def reason_text(text: str) -> str:
    """``text`` cut to fit a close frame (at a character boundary)."""
    data = text.encode()
    if len(data) <= MAX_REASON:
        return text
    return data[: MAX_REASON - 3].decode("utf-8", "ignore") + "..."


def error_message(body: bytes) -> str:
    """The message of an error body in any provider's format (all put it at ``error.message``)."""
    try:
        document = loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")
    error = document.get("error") if isinstance(document, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else "refused"


def chosen_subprotocol(offered: list[str]) -> str | None:
    """What a browser expects back: ``realtime`` when it offered it; never the key it sent as one."""
    return "realtime" if "realtime" in offered else None


class SessionSend:
    """The ``send`` the layers and the realtime endpoint get for a WebSocket.

    Data messages pass straight on. The accept gets the request id header,
    the layers' ``ctx.response_headers`` and the subprotocol; an HTTP error
    response becomes accept + close.
    """

    def __init__(
        self, send: Send, ctx: RequestContext, stats: SessionStats, offered: list[str], receive: Receive
    ) -> None:
        self.send = send
        self.ctx = ctx
        self.stats = stats
        # Gemini Live clients send their setup at once and only then read: a
        # close that arrives first fails google-genai's send, which hides the
        # reason; one that answers the setup comes out as APIError(code, reason).
        self.receive = receive if ctx.provider == "gemini" else None
        self.offered = offered
        self.accepted = False
        self.closed = False
        self.status = 0
        self.retry_after = False
        self.body = b""

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "websocket.send":
            await self.send(message)
        elif kind == "websocket.accept":
            await self._accept(message.get("subprotocol"), list(message.get("headers", ())))
        elif kind == "websocket.close":
            self.closed = True
            await self.send(message)
        elif kind == "http.response.start":
            self.status = message["status"]
            self.retry_after = any(name.lower() == b"retry-after" for name, _ in message.get("headers", ()))
        elif kind == "http.response.body":
            self.body += message.get("body", b"")
            if not message.get("more_body", False):
                await self.refuse(
                    close_code(self.status, self.retry_after), error_message(self.body), self.status
                )
        else:
            await self.send(message)

    async def _accept(self, subprotocol: str | None, headers: list[tuple[bytes, bytes]]) -> None:
        self.accepted = True
        self.ctx.status = 101
        headers.append((b"x-request-id", self.ctx.request_id.encode()))
        if self.ctx.response_headers:  # the layers' (RateLimit-*), as the gate adds them to HTTP answers
            headers += self.ctx.response_headers
        chosen = subprotocol or chosen_subprotocol(self.offered)
        await self.send({"type": "websocket.accept", "subprotocol": chosen, "headers": headers})

    async def refuse(self, code: int, reason: str, status: int) -> None:
        """Close with ``code`` and ``reason``, accepting first if need be; ``status`` goes to the log."""
        if self.closed:
            return
        try:
            if not self.accepted:
                await self._accept(None, [])
                if self.receive is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.receive(), SETUP_WAIT)
            self.ctx.status = status
            self.stats.close_code, self.stats.closed_by = code, "sluice"
            self.closed = True
            await self.send({"type": "websocket.close", "code": code, "reason": reason_text(reason)})
        except OSError:
            pass  # the client has gone already
