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
import logging
import math
import os
import stat
import sys
import time
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from ..asgi import ASGIApp, Message, Receive, Scope, Send
from ..context import RequestContext, Usage, http_context

logger = logging.getLogger("sluice.access_log")

_monotonic: Final = time.monotonic  # compiled, a C static: no lookup of `time` and its attribute (~250)

BODY_SAMPLE = 16 * 1024


# json.dumps with any non-default option builds a new encoder on every call.
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


_get_running_loop: Final = asyncio.get_running_loop  # compiled: a C static, not two lookups

# Lines are written in batches, formatted at the batch's write rather than
# as each request ends: the formatter then runs over a whole batch while its
# code and data are in the CPU's caches. One line at a time, between
# requests, the log cost a loaded worker ~3 µs a request besides its write
# (a line formats in 0.85 µs in a loop; README, Benchmarks). A batch goes
# out at most ``flush_seconds`` after its first line, or at once when it
# holds _DEFER_MAX lines.
_DEFER_MAX: Final = 128
# A pipe (stdout under systemd or a container runtime) takes a write up to
# PIPE_BUF whole, so lines from several workers never interleave inside one.
# A regular file opened O_APPEND takes each write whole at any size (Linux
# holds the inode lock for it), and there one 64 KiB write costs a third of
# the CPU a line that sixteen 4 KiB ones did (ext4 here).
_PIPE_BATCH: Final = 4096
_FILE_BATCH: Final = 65536
_ERROR_EVERY: Final = 10.0  # seconds between two reports of a failing write


class LogWriter:
    """Writes whole lines in batches, so workers sharing a file or pipe never interleave.

    Nothing is lost at :meth:`close` (what is pending is written); a worker
    killed outright loses at most the last ``flush_seconds`` of lines. With
    ``flush_seconds`` 0, a batch is what the requests ending in one event-loop
    step logged.
    """

    def __init__(self, target: str, flush_seconds: float = 0.05) -> None:
        self.target = target
        self.flush_seconds = flush_seconds
        self._fd: int | None
        self._pending: list[bytes] = []  # formatted lines, in order
        self._pending_bytes = 0
        # Requests ended and not yet formatted (they come after _pending).
        self._ctxs: list[RequestContext] = []
        self._ends: list[float] = []
        self._timer: asyncio.Handle | None = None
        self._last_error = -math.inf
        self._flush = self.flush  # bound once: scheduled for every batch
        if target == "off":
            self._fd = None
        elif target == "stdout":
            self._fd = sys.stdout.fileno()
        elif target == "stderr":
            self._fd = sys.stderr.fileno()
        else:
            self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        # stdout redirected to a file is a file; anything else may be a pipe.
        regular = self._fd is not None and stat.S_ISREG(os.fstat(self._fd).st_mode)
        self._batch = _FILE_BATCH if regular else _PIPE_BATCH

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
        if self._ctxs:
            self._format_deferred()  # they ended first: their lines go first
        self._pending.append(line)
        self._pending_bytes += len(line)
        if self._pending_bytes >= self._batch:
            self.flush()
        else:
            self._schedule()

    def log(self, ctx: RequestContext, now: float) -> None:
        """Write :func:`log_line` of ``ctx`` (``now`` ends its duration), formatted with its batch.

        ``ctx`` must not change after this: its request has ended.
        """
        if self._fd is None:
            return
        self._ctxs.append(ctx)
        self._ends.append(now)
        if len(self._ctxs) >= _DEFER_MAX:
            self.flush()
        else:
            self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None:
            return
        try:
            loop = _get_running_loop()
        except RuntimeError:  # no loop (a script, a test): write at once
            self.flush()
            return
        if self.flush_seconds > 0:
            self._timer = loop.call_later(self.flush_seconds, self._flush)
        else:
            self._timer = loop.call_soon(self._flush)

    def _format_deferred(self) -> None:
        ctxs, ends = self._ctxs, self._ends
        self._ctxs, self._ends = [], []
        pending = self._pending
        for i in range(len(ctxs)):
            line = log_line(ctxs[i], ends[i])
            pending.append(line)
            self._pending_bytes += len(line)

    def flush(self) -> None:
        """Write what is pending now (also run when a batch's time is up)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ctxs:
            self._format_deferred()
        if not self._pending:
            return
        lines = self._pending
        self._pending = []
        self._pending_bytes = 0
        fd = self._fd
        if fd is None:
            return
        try:
            # Whole lines, each write within the batch size (a longer line alone).
            batch, start, size = self._batch, 0, 0
            for i in range(len(lines)):
                n = len(lines[i])
                if size and size + n > batch:
                    _write_all(fd, b"".join(lines[start:i]))
                    start, size = i, 0
                size += n
            _write_all(fd, b"".join(lines[start:]))
        except OSError as exc:  # a full disk, a closed pipe: the requests go on, unlogged
            now = _monotonic()
            if now - self._last_error >= _ERROR_EVERY:
                self._last_error = now
                logger.error("access log %s: write failed (%s); lines are being dropped", self.target, exc)

    def close(self) -> None:
        self.flush()
        if self._fd is not None and self.target not in ("stdout", "stderr"):
            os.close(self._fd)
        self._fd = None


def _write_all(fd: int, data: bytes) -> None:
    """``data`` in one write(2) where the kernel takes it whole (it does, for a file or a pipe's PIPE_BUF)."""
    written = os.write(fd, data)
    while written < len(data):  # a short write: a signal, or a pipe past PIPE_BUF
        data = data[written:]
        written = os.write(fd, data)


class _Second:
    """The timestamp's text up to the second, kept while the second lasts:
    formatting a datetime for every line costs more than the rest of the
    record. Fields, not a global: compiled, a global is a dict entry."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""


_SECOND: Final = _Second()
_MILLIS: Final = [f"{ms:03d}" for ms in range(1000)]  # "007": one list index, not a format() call


def _timestamp(wall: float) -> str:
    """``datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")``, ``Z`` for UTC."""
    # No format spec: compiled, one in an f-string makes every part a format() call.
    second, millis = _timestamp_parts(wall)
    return f"{second}.{millis}Z"


def _timestamp_parts(wall: float) -> tuple[str, str]:
    """The timestamp's text to the second, and its milliseconds.

    ``wall`` is not negative. Compiled, this is arithmetic on C doubles and
    ints: no ``math.modf`` or ``round`` call, each a generic one (~4 k
    instructions a line together).
    """
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
    cached = _SECOND
    if cached.second != second:
        cached.second = second
        cached.text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return cached.text, _MILLIS[micros // 1000]


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

    Byte for byte what json writes for the record. Most lines hold only
    plain text (:func:`_plain_line` writes those directly). The rest go
    through orjson; what orjson refuses (a lone surrogate in a string, an
    integer past 64 bits, a custom layer's object) goes through json, with
    the surrogate written as ``?``: the line is always written, and always
    valid UTF-8.
    """
    try:
        return _plain_line(ctx, now)
    except _NotPlain:
        pass
    record = log_record(ctx, now)
    try:
        return _DUMPS(record, option=_APPEND_NEWLINE)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return _encode(record)


_DUMPS: Final = orjson.dumps
_APPEND_NEWLINE: Final = orjson.OPT_APPEND_NEWLINE


class _NotPlain(Exception):
    """A value :func:`_plain_line` does not write itself."""


# Every byte maps to itself but those a JSON string cannot hold as they are
# (controls, the quote, the backslash) and those past ASCII, which map to another byte:
# translating plain text leaves it unchanged, so one C pass over all the
# texts of a line tells whether they can go between quotes unescaped.
_PLAIN_TABLE: Final = bytes(b if 0x20 <= b < 0x7F and b not in b'"\\' else 255 - b for b in range(256))

# The decimals of n / 100 as repr writes them: ".0", ".5", ".05", ".25".
_CENTS: Final = [f".{c // 10}" if c % 10 == 0 else f".{c:02d}" for c in range(100)]


def _text(text: str | None) -> str:
    """``text`` as it goes between quotes, or ``null`` (see :func:`_q`)."""
    if text is None:
        return "null"
    if type(text) is not str:  # a custom layer's value (interpreted: nothing checked it)
        raise _NotPlain
    return text


def _str(text: str) -> str:
    if type(text) is not str:  # None too: it is never one compiled
        raise _NotPlain
    return text


def _q(text: str | None) -> str:
    """The quote around ``text``, none around ``null``.

    ``{_q(x)}{_text(x)}{_q(x)}`` puts the quotes in the line's one string
    build: concatenating ``'"' + x + '"'`` cost ~600 instructions a field.
    """
    return "" if text is None else '"'


def _number(value: object) -> str:
    # Typed object, not int: compiled, str() of an int goes through a C
    # integer and back to an object first.
    if value is None:
        return "null"
    if type(value) is not int:  # a bool, or a custom layer's value
        raise _NotPlain
    return str(value)


def _ms_parts(seconds: float | None) -> tuple[str, str]:
    """``repr(_ms(seconds))`` in two parts, its integer and its decimals; ``null`` for None.

    From integers, where repr of a float costs ~1 k instructions: below 10**11
    hundredths the double nearest n / 100 is so close to it that the shortest
    text naming that double is n / 100's own decimals. Past that (or below
    zero), :class:`_NotPlain`.
    """
    if seconds is None:
        return "null", ""
    n = int(seconds * 100_000 + 0.5)
    if not 0 <= n < 100_000_000_000:
        raise _NotPlain
    return str(n // 100), _CENTS[n % 100]


def _plain_line(ctx: RequestContext, now: float) -> bytes:
    """The line without a dict or an encoder, when every text in it is plain.

    Plain: printable ASCII but '"' and '\\', what JSON writes as it is. Raises
    :class:`_NotPlain` otherwise. About 12 k instructions a line, where the
    record's dict and orjson took 14.5 k (building the dict was a third).
    Most of what is left is the string build itself (~60 a part).
    """
    request_id, method, path, outcome = ctx.request_id, ctx.method, ctx.path, ctx.outcome
    key, provider, model, client = ctx.key_name, ctx.provider, ctx.model, ctx.client
    detail, upstream_id, credential = ctx.detail, ctx.upstream_request_id, ctx.credential
    # Decided before the line is built. Formatted here, any value is text;
    # one that is not a str or None is refused by _text/_str below.
    texts = (
        f"{request_id}{method}{path}{outcome}{key or ''}{provider or ''}{model or ''}"
        f"{client or ''}{detail or ''}{upstream_id or ''}{credential or ''}"
    ).encode("utf-8", "surrogatepass")
    if texts.translate(_PLAIN_TABLE) != texts:
        raise _NotPlain
    second, millis = _timestamp_parts(ctx.started_wall)
    ttfb_int, ttfb_cents = _ms_parts(ctx.ttfb)
    took_int, took_cents = _ms_parts(now - ctx.started)
    usage = ctx.usage
    line = (
        f'{{"ts":"{second}.{millis}Z","request_id":"{_str(request_id)}",'
        f'"key":{_q(key)}{_text(key)}{_q(key)},"provider":{_q(provider)}{_text(provider)}{_q(provider)},'
        f'"model":{_q(model)}{_text(model)}{_q(model)},"method":"{_str(method)}","path":"{_str(path)}",'
        f'"status":{_number(ctx.status)},"bytes_in":{_number(ctx.bytes_in)},"bytes_out":{_number(ctx.bytes_out)},'
        f'"ttfb_ms":{ttfb_int}{ttfb_cents},"duration_ms":{took_int}{took_cents},'
        f'"usage":{"null" if usage is None else _usage_text(usage)},"outcome":"{_str(outcome)}",'
        f'"detail":{_q(detail)}{_text(detail)}{_q(detail)},'
        f'"upstream_request_id":{_q(upstream_id)}{_text(upstream_id)}{_q(upstream_id)},'
        f'"credential":{_q(credential)}{_text(credential)}{_q(credential)},'
        f'"client":{_q(client)}{_text(client)}{_q(client)}}}\n'
    )
    return line.encode()


def _usage_text(usage: Usage) -> str:
    return (
        f'{{"input":{_number(usage.input_tokens)},"output":{_number(usage.output_tokens)},'
        f'"total":{_number(usage.total)}}}'
    )


def _encode(record: dict[str, Any]) -> bytes:
    return (_ENCODER.encode(record) + "\n").encode("utf-8", "replace")


class AccessLog:
    """Pure ASGI middleware writing :func:`log_line` for every HTTP request."""

    def __init__(self, app: ASGIApp, writer: LogWriter, log_bodies: bool = False) -> None:
        self.app = app
        self.writer = writer
        self.log_bodies = log_bodies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = http_context(scope) if self.writer.enabled else None
        if ctx is None:
            await self.app(scope, receive, send)
            return
        samples: dict[str, bytearray] | None = None
        if self.log_bodies:
            samples = {"request_body": bytearray(), "response_body": bytearray()}
            receive, send = _sampling(receive, send, samples)
        try:
            await self.app(scope, receive, send)
        finally:
            if samples is None:
                self.writer.log(ctx, _monotonic())
            else:  # debugging: the generic path will do
                record = log_record(ctx, _monotonic())
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
