"""Incremental Server-Sent-Events scanning over bytes.

The scanner sees a response body in whatever pieces the network delivers and
reports each event as soon as its terminating blank line arrives. It follows
the WHATWG event-stream grammar, with these guarantees:

* Lines end in CRLF, LF or CR and nothing else. ``bytes.splitlines`` breaks on
  exactly those three (unlike ``str.splitlines``, which also breaks on U+2028,
  U+0085, form feeds… and so cuts JSON strings apart); the tests pin that down.
* Bytes are never decoded, so a UTF-8 sequence split across chunks is harmless.
* A CR that ends a chunk may be the first half of a CRLF: a LF opening the next
  chunk is then part of the same line ending, not an empty line.
* Memory is bounded: an event whose ``event`` and ``data`` lines (as received,
  without line ends) or unfinished line exceed ``max_event_bytes`` is dropped,
  counted in :attr:`SseScanner.overflowed`, and its remaining bytes are
  discarded as they arrive, up to the next blank line.
* Only ``event`` and ``data`` are kept; ``id``, ``retry``, unknown fields and
  comments are skipped. As the spec says, an event with no ``data`` line is not
  dispatched, and an unfinished event at the end of the stream is never seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["SseEvent", "SseScanner"]

_BOM: Final = b"\xef\xbb\xbf"  # the spec drops one UTF-8 BOM at the start of the stream
_CR, _LF = 13, 10


# Its own __init__ (init=False): made for every event, and a hand-written
# one is much cheaper than the one @dataclass generates (proxy/http/README.md).
@dataclass(slots=True, init=False)
class SseEvent:
    """One dispatched event. ``event`` is ``b""`` when the stream named none
    (a browser would call it "message"); ``data`` is its ``data:`` lines joined
    with LF."""

    event: bytes
    data: bytes

    def __init__(self, event: bytes, data: bytes) -> None:
        self.event = event
        self.data = data


class SseScanner:
    """Turns a byte stream, fed in arbitrary pieces, into :class:`SseEvent` objects."""

    __slots__ = (
        "_buf",
        "_cr",
        "_data",
        "_event",
        "_max",
        "_overflowed",
        "_partial",
        "_size",
        "_skipping",
        "_start",
    )

    def __init__(self, max_event_bytes: int = 1 << 20) -> None:
        self._max = max_event_bytes
        self._buf = bytearray()  # the unterminated line received so far
        self._cr = False  # the last chunk ended in CR: a LF opening the next one completes a CRLF
        self._start = True  # no line finished yet: a leading BOM is still to be dropped
        self._event = b""
        self._data: list[bytes] = []
        self._size = 0  # bytes held for the current event, outside _buf
        self._skipping = False  # inside an oversized event: discard everything up to its blank line
        self._partial = False  # while skipping: the current line had bytes, so it is not blank
        self._overflowed = 0

    @property
    def overflowed(self) -> int:
        """How many events were dropped because they exceeded ``max_event_bytes``."""
        return self._overflowed

    @property
    def buffered(self) -> int:
        """Bytes held between calls: the unfinished line plus the unfinished event."""
        return len(self._buf) + self._size

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Scan the next piece of the stream; return the events it completes."""
        if not chunk:
            return []  # and keep a pending CR pending
        if self._cr:
            self._cr = False
            if chunk[0] == _LF:
                chunk = chunk[1:]
                if not chunk:
                    return []
        # One C-level pass finds every line end (bytes.splitlines knows only
        # CR, LF and CRLF). A chunk without one comes back whole, as the same
        # object, and only extends the pending line: the fast path.
        lines = chunk.splitlines()
        last = chunk[-1]
        if last in (10, 13):  # the chunk ends with LF or CR
            tail = b""
            self._cr = last == _CR
        else:
            tail = lines.pop()
        events: list[SseEvent] = []
        if lines:
            self._lines(lines, events)
        if tail:
            self._hold(tail)
        return events

    def _hold(self, tail: bytes) -> None:
        """Keep the start of a line whose end has not arrived yet."""
        if self._skipping:
            self._partial = True
        elif len(self._buf) + len(tail) + self._size > self._max:
            self._overflow()
            self._partial = True
        else:
            self._buf += tail

    def _lines(self, lines: list[bytes], events: list[SseEvent]) -> None:
        if self._partial:  # lines[0] ends a line already dropped: never blank, never kept
            self._partial = False
            del lines[0]
        elif self._buf:
            self._buf += lines[0]
            lines[0] = bytes(self._buf)
            self._buf.clear()
        if self._start and lines:
            self._start = False
            if lines[0].startswith(_BOM):
                lines[0] = lines[0][3:]
        # This loop runs for every line of every stream: data lines and blank
        # lines, nearly all of them, are handled inline.
        data = self._data
        for line in lines:
            if not line:
                # A blank line ends the event: dispatched, empty or dropped.
                if data:  # never while skipping: an overflow empties it
                    events.append(SseEvent(self._event, b"\n".join(data)))
                    data = self._data = []
                self._skipping = False
                self._event = b""
                self._size = 0
            elif self._skipping:
                continue  # inside a dropped event
            elif line.startswith(b"data:"):
                self._size += len(line)
                if self._size > self._max:
                    self._overflow()
                    data = self._data
                else:
                    data.append(line[6:] if line.startswith(b"data: ") else line[5:])
            elif line.startswith(b"event:"):
                self._size += len(line)
                if self._size > self._max:
                    self._overflow()
                    data = self._data
                else:
                    self._event = line[7:] if line.startswith(b"event: ") else line[6:]
            else:
                self._field(line)
                data = self._data

    def _field(self, line: bytes) -> None:
        """The rare lines: a field name alone, a comment, or a field Sluice ignores."""
        if line == b"data":  # an empty data line
            self._size += len(line)
            if self._size > self._max:
                self._overflow()
            else:
                self._data.append(b"")
        elif line == b"event":
            self._event = b""
        # id, retry and unknown fields change nothing Sluice reads.

    def _overflow(self) -> None:
        self._overflowed += 1
        self._skipping = True
        self._start = False
        self._event = b""
        self._data = []
        self._size = 0
        self._buf.clear()  # frees the bytes, not just the length
