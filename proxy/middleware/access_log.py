"""One JSON line per request, written when the request ends.

Fields: ``ts`` (UTC, ms), ``request_id``, ``key`` (the key's *name*),
``provider``, ``model``, ``method``, ``path`` (never the query string: it may
hold a client key), ``status``, ``bytes_in``, ``bytes_out``, ``ttfb_ms``,
``duration_ms``, ``usage`` (``{"input", "output", "total"}`` or null),
``outcome``, ``detail``, ``upstream_request_id``, ``credential`` (the label of
the server-held credential that served it) and ``client``.

Bodies are not logged, unless ``SLUICE_LOG_BODIES`` turns on debugging: then
the first 16 KiB of each way are added as ``request_body``/``response_body``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from ..asgi import ASGIApp, Message, Receive, Scope, Send
from ..context import RequestContext, get_or_create_context

BODY_SAMPLE = 16 * 1024


# json.dumps with any non-default option builds a new encoder on every call.
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


# Lines ended in one event-loop step go out in one write(2), up to PIPE_BUF:
# a pipe takes a write that size whole, so lines from several workers never
# interleave even on stdout. One write(2) per line cost ~6 µs here, more than
# formatting the line.
_BATCH_MAX: Final = 4096


class LogWriter:
    """Writes whole lines, batched per event-loop step, so workers sharing a file or pipe never interleave."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._fd: int | None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._flush_scheduled = False
        if target == "off":
            self._fd = None
        elif target == "stdout":
            self._fd = sys.stdout.fileno()
        elif target == "stderr":
            self._fd = sys.stderr.fileno()
        else:
            self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def write(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one JSON line."""
        self.write_line(_encode(record))

    def write_line(self, line: bytes) -> None:
        """Write ``line``: one JSON document in UTF-8, ending in its newline."""
        if self._fd is None:
            return
        if self._pending_bytes + len(line) > _BATCH_MAX:
            self.flush()
        self._pending.append(line)
        self._pending_bytes += len(line)
        if not self._flush_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a script, a test): write at once
                self.flush()
                return
            loop.call_soon(self.flush)
            self._flush_scheduled = True

    def flush(self) -> None:
        """Write what is pending now (also run at the end of the step that queued it)."""
        self._flush_scheduled = False
        if self._pending and self._fd is not None:
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            os.write(self._fd, data)

    def close(self) -> None:
        self.flush()
        if self._fd is not None and self.target not in ("stdout", "stderr"):
            os.close(self._fd)
        self._fd = None


# The timestamp's text up to the second, kept while the second lasts: formatting
# a datetime for every line costs more than the rest of the record.
_second: tuple[int, str] = (-1, "")
_MILLIS: Final = [f"{ms:03d}" for ms in range(1000)]  # ".007": one list index, not a format() call


def _timestamp(wall: float) -> str:
    """``datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")``, ``Z`` for UTC.

    ``wall`` is not negative. Compiled, this is arithmetic on C doubles and
    ints: no ``math.modf`` or ``round`` call, each a generic one (~4 k
    instructions a line together).
    """
    global _second
    second = int(wall)
    # What datetime does: the fraction's microseconds, rounded half to even.
    # Both subtractions are exact, so the rounding is exact too.
    x = (wall - second) * 1e6
    micros = math.floor(x)
    rest = x - micros
    if rest > 0.5 or (rest == 0.5 and micros % 2 == 1):
        micros += 1
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    if _second[0] != second:
        _second = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    # No format spec: compiled, one in an f-string makes every part a format() call.
    return f"{_second[1]}.{_MILLIS[micros // 1000]}Z"


def _ms(seconds: float) -> float:
    """``seconds`` in milliseconds, to the hundredth (for a duration, never negative).

    Not ``round(x, 2)``: that converts through decimal digits, ~3 k
    instructions. ``n / 100`` is the double nearest the two-decimal number,
    so JSON writes it with at most two decimals all the same.
    """
    return int(seconds * 100_000 + 0.5) / 100


def log_record(ctx: RequestContext, now: float) -> dict[str, Any]:
    """The access-log record for ``ctx``, as a dict; ``now`` ends the duration."""
    # Typed reads: compiled, the context refused a value of another type
    # when it was stored; interpreted, nothing is checked, and a custom
    # layer's value goes to the encoder as it is.
    usage, ttfb = ctx.usage, ctx.ttfb
    return {
        "ts": _timestamp(ctx.started_wall),
        "request_id": ctx.request_id,
        "key": ctx.key_name,
        "provider": ctx.provider,
        "model": ctx.model,
        "method": ctx.method,
        "path": ctx.path,
        "status": ctx.status,
        "bytes_in": ctx.bytes_in,
        "bytes_out": ctx.bytes_out,
        "ttfb_ms": None if ttfb is None else _ms(ttfb),
        "duration_ms": _ms(now - ctx.started),
        "usage": None if usage is None else usage.as_dict(),
        "outcome": ctx.outcome,
        "detail": ctx.detail,
        "upstream_request_id": ctx.upstream_request_id,
        "credential": ctx.credential,
        "client": ctx.client,
    }


def log_line(ctx: RequestContext, now: float) -> bytes:
    """``log_record`` as one JSON line, newline included, in UTF-8.

    orjson writes it in ~7 k instructions, where a line built field by field
    with json's string escaper took ~22 k. What orjson refuses (a lone
    surrogate in a string, an integer past 64 bits, a custom layer's object)
    goes through json, with the surrogate written as ``?``: the line is
    always written, and always valid UTF-8.
    """
    record = log_record(ctx, now)
    try:
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return _encode(record)


def _encode(record: dict[str, Any]) -> bytes:
    return (_ENCODER.encode(record) + "\n").encode("utf-8", "replace")


class AccessLog:
    """Pure ASGI middleware writing :func:`log_line` for every HTTP request."""

    def __init__(self, app: ASGIApp, writer: LogWriter, log_bodies: bool = False) -> None:
        self.app = app
        self.writer = writer
        self.log_bodies = log_bodies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.writer.enabled:
            await self.app(scope, receive, send)
            return
        ctx = get_or_create_context(scope)
        samples: dict[str, bytearray] | None = None
        if self.log_bodies:
            samples = {"request_body": bytearray(), "response_body": bytearray()}
            receive, send = _sampling(receive, send, samples)
        try:
            await self.app(scope, receive, send)
        finally:
            if samples is None:
                self.writer.write_line(log_line(ctx, time.monotonic()))
            else:  # debugging: the generic path will do
                record = log_record(ctx, time.monotonic())
                record.update({k: v.decode("utf-8", "replace") for k, v in samples.items()})
                self.writer.write(record)


def _sampling(receive: Receive, send: Send, samples: dict[str, bytearray]) -> tuple[Receive, Send]:
    def keep(buffer: bytearray, data: bytes) -> None:
        room = BODY_SAMPLE - len(buffer)
        if room > 0:
            buffer += data[:room]

    async def sampled_receive() -> Message:
        message = await receive()
        keep(samples["request_body"], message.get("body", b""))
        return message

    async def sampled_send(message: Message) -> None:
        if message["type"] == "http.response.body":
            keep(samples["response_body"], message.get("body", b""))
        await send(message)

    return sampled_receive, sampled_send
