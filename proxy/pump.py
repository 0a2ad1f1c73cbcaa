"""Relaying an upstream body to the client, with heartbeats and timeouts.

Every read from the upstream runs under one deadline: the earliest of

* the idle timeout (upstream silent too long: the stream is aborted),
* the overall stream deadline, if set (a trickling upstream: aborted),
* the next heartbeat, on an event stream that sits at an event boundary.

Only the read is timed, never the send: a slow client is backpressure (the
send waits for the socket to drain and the upstream read waits with it), not
an upstream failure.

A heartbeat is only ever written between two events, so it can never split
one, and only after the upstream's status and headers went out, so it can
never commit a status the upstream did not send. It uses the stream's own
line ending (Gemini's streams use CRLF).
"""

from __future__ import annotations

import asyncio
from typing import Final, Literal, Protocol

from .asgi import Send
from .config import HeartbeatStyle
from .usage import UsageTap

StreamFailure = Literal["idle_timeout", "deadline"]

# (after an LF-terminated event, after a CRLF-terminated event)
_HEARTBEATS: Final[dict[HeartbeatStyle, tuple[bytes, bytes]]] = {
    "comment": (b": keepalive\n\n", b": keepalive\r\n\r\n"),
    "blank": (b"\n", b"\r\n"),
}


class Body(Protocol):
    async def read(self, deadline: float | None = None) -> bytes:
        """What arrived since the last read (``b""``: the end); TimeoutError past ``deadline``."""
        ...

    @property
    def complete(self) -> bool:
        """Whether the body has ended and every byte of it was read."""
        ...


class StreamTimeout(Exception):
    def __init__(self, kind: StreamFailure) -> None:
        super().__init__(kind)
        self.kind: StreamFailure = kind


class Heartbeat:
    """Where the stream stands with respect to event boundaries."""

    __slots__ = ("crlf", "interval", "lf", "tail")

    def __init__(self, style: HeartbeatStyle, interval: float) -> None:
        self.interval = interval
        self.lf, self.crlf = _HEARTBEATS[style]
        # Nothing sent yet counts as a boundary: the first event has not begun.
        self.tail = b"\n\n"

    def saw(self, chunk: bytes) -> None:
        self.tail = (self.tail + chunk[-4:])[-4:]

    def due_line(self) -> bytes | None:
        """The heartbeat to send now, or ``None`` when the stream is inside an event."""
        if self.tail.endswith(b"\r\n\r\n"):
            return self.crlf
        if self.tail.endswith(b"\n\n"):
            return self.lf
        return None


async def pump(
    body: Body,
    send: Send,
    tap: UsageTap,
    *,
    idle: float,
    deadline: float | None,
    heartbeat: Heartbeat | None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> bytes:
    """Send every upstream chunk on as it arrives, until the upstream's end of body.

    Returns the body's last piece unsent (``b""`` when the end came on its
    own), for the caller to send as the final message of the response.

    Raises :class:`StreamTimeout` when the upstream stays silent past ``idle``
    seconds or the stream runs past ``deadline`` (a ``loop.time()``), and the
    body's own error when the upstream breaks it off. ``loop``: the running
    one, if the caller has it (looking it up costs a system call).
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    last_read = last_write = loop.time()
    while True:
        line = heartbeat.due_line() if heartbeat is not None else None
        wake = last_read + idle
        if deadline is not None and deadline < wake:
            wake = deadline
        if line is not None and heartbeat is not None and last_write + heartbeat.interval < wake:
            wake = last_write + heartbeat.interval
        try:
            chunk = await body.read(wake)
        except TimeoutError:
            now = loop.time()
            if deadline is not None and now >= deadline:
                raise StreamTimeout("deadline") from None
            if now >= last_read + idle:
                raise StreamTimeout("idle_timeout") from None
            if line is not None:
                await send({"type": "http.response.body", "body": line, "more_body": True})
                last_write = loop.time()
            continue
        if body.complete:
            return chunk
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        tap.feed(chunk)  # after the send: observing never delays a byte
        if heartbeat is not None:
            heartbeat.saw(chunk)
        last_read = last_write = loop.time()
