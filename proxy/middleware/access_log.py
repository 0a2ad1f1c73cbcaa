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
from json.encoder import encode_basestring
from typing import Any

from ..asgi import ASGIApp, Message, Receive, Scope, Send
from ..context import RequestContext, get_or_create_context

BODY_SAMPLE = 16 * 1024


# json.dumps with any non-default option builds a new encoder on every call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


# Lines ended in one event-loop step go out in one write(2), up to PIPE_BUF:
# a pipe takes a write that size whole, so lines from several workers never
# interleave even on stdout. One write(2) per line cost ~6 µs here, more than
# formatting the line.
_BATCH_MAX = 4096


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
        self.write_line(_ENCODER.encode(record))

    def write_line(self, text: str) -> None:
        """Write ``text`` (one JSON document, no newline) as one line."""
        if self._fd is None:
            return
        line = (text + "\n").encode("utf-8", "replace")
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
_MILLIS = [f"{ms:03d}" for ms in range(1000)]  # ".007": one list index, not a format() call


def _timestamp(wall: float) -> str:
    """``datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")``, ``Z`` for UTC."""
    global _second
    frac, whole = math.modf(wall)
    second, micros = int(whole), round(frac * 1e6)  # as datetime rounds
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    if _second[0] != second:
        _second = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second[1]}.{_MILLIS[micros // 1000]}Z"  # no format spec: see _line


def log_record(ctx: RequestContext, now: float) -> dict[str, Any]:
    """The access-log record for ``ctx``, as a dict; ``now`` ends the duration."""
    # Read as Any: interpreted, a custom layer may have stored anything in a
    # field, and compiled code checks the type of every typed read.
    c: Any = ctx
    return {
        "ts": _timestamp(c.started_wall),
        "request_id": c.request_id,
        "key": c.key_name,
        "provider": c.provider,
        "model": c.model,
        "method": c.method,
        "path": c.path,
        "status": c.status,
        "bytes_in": c.bytes_in,
        "bytes_out": c.bytes_out,
        "ttfb_ms": None if c.ttfb is None else round(c.ttfb * 1000, 2),
        "duration_ms": round((now - c.started) * 1000, 2),
        "usage": c.usage.as_dict() if c.usage is not None else None,
        "outcome": c.outcome,
        "detail": c.detail,
        "upstream_request_id": c.upstream_request_id,
        "credential": c.credential,
        "client": c.client,
    }


def log_line(ctx: RequestContext, now: float) -> str:
    """``log_record`` as one JSON line (no newline), written field by field.

    Building the dict and handing it to json walked 18 keys and escaped each
    name on every request: ~90 k of the ~640 k instructions a request through
    the default chain cost. Strings go through the escaper that
    ``json.dumps(ensure_ascii=False)`` itself uses, so the text is what json
    would write (milliseconds as ``12.50`` rather than ``12.5``: the same
    number). tests/test_access_log_record.py holds the two to each other.
    """
    try:
        return _line(ctx, now)
    except (TypeError, ValueError):  # a custom layer stored a value of another type (interpreted)
        return _ENCODER.encode(log_record(ctx, now))


def _line(ctx: RequestContext, now: float) -> str:
    q = encode_basestring  # raises TypeError for anything but a str; int() for "abc" ValueError
    usage, key, provider, model = ctx.usage, ctx.key_name, ctx.provider, ctx.model
    detail, upstream_id, credential, client = ctx.detail, ctx.upstream_request_id, ctx.credential, ctx.client
    status, ttfb = ctx.status, ctx.ttfb
    # The floats are formatted apart. Compiled, an f-string whose parts are
    # all str or int is concatenated in place, but a single format spec in it
    # turns every part into a generic format() call: 23 k instructions more
    # per line, measured.
    ttfb_text = "null" if ttfb is None else format(ttfb * 1000, ".2f")
    duration_text = format((now - ctx.started) * 1000, ".2f")
    if usage is None:
        usage_text = "null"
    else:
        i, o = usage.input_tokens, usage.output_tokens
        usage_text = (
            f'{{"input":{"null" if i is None else int(i)},"output":{"null" if o is None else int(o)}'
            f',"total":{int(usage.total)}}}'
        )
    return (
        f'{{"ts":"{_timestamp(ctx.started_wall)}","request_id":{q(ctx.request_id)}'
        f',"key":{"null" if key is None else q(key)},"provider":{"null" if provider is None else q(provider)}'
        f',"model":{"null" if model is None else q(model)},"method":{q(ctx.method)},"path":{q(ctx.path)}'
        f',"status":{"null" if status is None else int(status)}'
        f',"bytes_in":{int(ctx.bytes_in)},"bytes_out":{int(ctx.bytes_out)}'
        f',"ttfb_ms":{ttfb_text},"duration_ms":{duration_text},"usage":{usage_text},"outcome":{q(ctx.outcome)}'
        f',"detail":{"null" if detail is None else q(detail)}'
        f',"upstream_request_id":{"null" if upstream_id is None else q(upstream_id)}'
        f',"credential":{"null" if credential is None else q(credential)}'
        f',"client":{"null" if client is None else q(client)}}}'
    )


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
