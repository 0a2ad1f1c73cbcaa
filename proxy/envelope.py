"""Code Assist's answers unwrapped into the Gemini API's, as they stream.

Code Assist wraps each ``GenerateContentResponse`` as ``{"response": {…},
"traceId": "…"}``: every SSE event of ``streamGenerateContent?alt=sse``, and
the one JSON body of ``generateContent``. :class:`UnwrappedBody` reads an
upstream :class:`~proxy.http.Response` and gives back the Gemini API's form
(the inner object, with ``responseId`` taken from ``traceId`` when it has
none, as the command-line tool does), through the same ``read(deadline)`` /
``complete`` interface, so the passthrough's pump relays it unchanged.

Guarantees of the event-stream transform:

* **One event out per event in, at once.** ``read`` returns as soon as one
  whole event (up to its blank line) is in, and returns exactly that event,
  unwrapped. Events that arrived together go out in successive reads, one per
  send: nothing is held back to batch, nothing is merged, order is kept.
* **Framing kept.** Each event keeps its own line ending (CRLF or LF), its
  other fields (``event:``, ``id:``, comments) and their order; an event
  without ``data`` (a comment, a keep-alive) passes unchanged, as does data
  that is not a wrapped object (an error in the stream passes as it came).
* **Bounded memory.** Only the bytes of the event being assembled are held
  (plus what arrived with it); an event larger than ``limit`` breaks the
  stream (:class:`~proxy.http.ResponseBroken`) instead of growing without
  end. The buffer is scanned once, never from its start on every read.
* **Failures are the upstream's.** A read that times out leaves the partial
  event buffered for the next read; a cut upstream raises as it would have
  unwrapped; the body is ``complete`` only when the upstream's was and every
  event went out.

A plain JSON answer (``generateContent``) is read whole, up to ``limit``,
then unwrapped: it is one document, and its wrapper comes first.
"""

from __future__ import annotations

from typing import Final

import orjson

from .http import Headers, Response, ResponseBroken
from .jsonread import loads

__all__ = ["MAX_WRAPPED", "UnwrappedBody", "unwrap_document", "unwrap_event"]

MAX_WRAPPED: Final = 64 * 1024 * 1024  # one event or one JSON answer (inline images are large)

_CRLF_END: Final = b"\r\n\r\n"
_LF_END: Final = b"\n\n"


def unwrap_document(document: bytes) -> bytes | None:
    """``{"response": X, "traceId": t}`` → ``X`` (with ``responseId`` t); ``None`` when not wrapped."""
    try:
        outer = loads(document)
    except ValueError:
        return None
    if not isinstance(outer, dict):
        return None
    inner = outer.get("response")
    if not isinstance(inner, dict):
        return None
    trace = outer.get("traceId")
    if isinstance(trace, str) and "responseId" not in inner:
        inner["responseId"] = trace
    return orjson.dumps(inner)


def unwrap_event(event: bytes) -> bytes:
    """One SSE event (with its terminating blank line, if any) with its data unwrapped."""
    if event.endswith(_CRLF_END):
        newline, body, end = b"\r\n", event[:-4], _CRLF_END
    elif event.endswith(_LF_END):
        newline, body, end = b"\n", event[:-2], _LF_END
    else:  # the stream's last bytes, without a blank line after them
        newline, body, end = (b"\r\n" if b"\r\n" in event else b"\n"), event, b""
    lines = body.split(newline)
    data: list[bytes] = []
    first = -1
    for index, line in enumerate(lines):
        if line.startswith(b"data:"):
            if first < 0:
                first = index
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
    if first < 0:
        return event
    unwrapped = unwrap_document(b"\n".join(data))
    if unwrapped is None:
        return event
    kept = [line for index, line in enumerate(lines) if index < first or not line.startswith(b"data:")]
    kept.insert(first, b"data: " + unwrapped)
    return newline.join(kept) + end


class UnwrappedBody:
    """An upstream Code Assist response body, read as the Gemini API's."""

    __slots__ = ("_buffer", "_ended", "_limit", "_scanned", "_sse", "headers", "response", "status")

    def __init__(self, response: Response, sse: bool, limit: int) -> None:
        self.response = response
        self.status: int = response.status
        self.headers: Headers = response.headers
        self._sse = sse
        self._limit = limit
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer known to hold no event end
        self._ended = False  # the upstream's body has ended (b"" read)

    @property
    def complete(self) -> bool:
        return self._ended and not self._buffer and self.response.complete

    async def read(self, deadline: float | None = None) -> bytes:
        """The next whole event, unwrapped (``b""`` at the end); TimeoutError past ``deadline``."""
        while True:
            if self._sse:
                event = self._next_event()
                if event is not None:
                    return unwrap_event(event)
            if self._ended:
                rest = bytes(self._buffer)
                self._buffer.clear()
                if not rest:
                    return b""
                if self._sse:
                    return unwrap_event(rest)
                unwrapped = unwrap_document(rest)
                return rest if unwrapped is None else unwrapped
            chunk = await self.response.read(deadline)
            if not chunk:
                self._ended = True
                continue
            if len(self._buffer) + len(chunk) > self._limit:
                raise ResponseBroken("a Code Assist event or answer over the size limit")
            self._buffer += chunk

    def _next_event(self) -> bytes | None:
        buffer = self._buffer
        start = self._scanned - 3 if self._scanned > 3 else 0
        crlf = buffer.find(_CRLF_END, start)
        lf = buffer.find(_LF_END, start)
        if crlf < 0 and lf < 0:
            self._scanned = len(buffer)
            return None
        end = crlf + 4 if lf < 0 or 0 <= crlf < lf else lf + 2
        event = bytes(buffer[:end])
        del buffer[:end]
        self._scanned = 0
        return event

    # The rest of the Response interface, for callers that read it as one.
    def header(self, name: bytes) -> bytes | None:
        return self.response.header(name)

    def close(self) -> None:
        self.response.close()
