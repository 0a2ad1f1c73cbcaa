"""An access-log line: one JSON document per request.

Fields: ``ts`` (UTC, ms), ``request_id``, ``key`` (the key's *name*),
``provider``, ``model``, ``method``, ``path`` (never the query string: it may
hold a client key), ``status``, ``bytes_in``, ``bytes_out``, ``ttfb_ms``,
``duration_ms``, ``usage`` (``{"input", "output", "total"}`` or null),
``cost_usd`` (the request's price in USD, proxy/spend; null when unknown),
``outcome``, ``detail``, ``upstream_request_id``, ``credential`` (the label of
the server-held credential that served it) and ``client``.

Formatting a line is most of what the access log costs, so :func:`log_line`
writes the common line (every text plain ASCII) itself, and hands the rest to
orjson, or to ``json`` for what orjson refuses. The tests hold its output to
``json.dumps`` of :func:`log_record`, byte for byte.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from ..context import RequestContext, Usage

# json.dumps with any non-default option builds a new encoder on every call.
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class _Second:
    """The timestamp's text up to the second, kept while the second lasts:
    formatting a datetime for every line costs more than the rest of the line."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""


_SECOND: Final = _Second()
_MILLIS: Final = [f"{ms:03d}" for ms in range(1000)]  # "007"


def _timestamp(wall: float) -> str:
    """``datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")``, ``Z`` for UTC."""
    second, millis = _timestamp_parts(wall)
    return f"{second}.{millis}Z"


def _timestamp_parts(wall: float) -> tuple[str, str]:
    """The timestamp's text to the second, and its milliseconds (``wall`` is not negative)."""
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

    Not ``round(x, 2)``, which converts through decimal digits: ``n / 100``
    is the double nearest the two-decimal number, so JSON writes it with at
    most two decimals all the same.
    """
    return int(seconds * 100_000 + 0.5) / 100


def log_record(ctx: RequestContext, now: float) -> dict[str, Any]:
    """The access-log record for ``ctx``, as a dict; ``now`` ends the duration."""
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
        "cost_usd": ctx.cost_usd,
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
    if ctx.cost_usd is not None:  # orjson writes some floats unlike json (1e-06 as 1e-6)
        return encode_record(record)
    try:
        return _DUMPS(record, option=_APPEND_NEWLINE)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return encode_record(record)


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
    if type(text) is not str:  # a custom layer's value
        raise _NotPlain
    return text


def _str(text: str) -> str:
    if type(text) is not str:  # None included
        raise _NotPlain
    return text


def _q(text: str | None) -> str:
    """The quote around ``text``, none around ``null``.

    ``{_q(x)}{_text(x)}{_q(x)}`` puts the quotes in the line's one string
    build instead of concatenating a string per field.
    """
    return "" if text is None else '"'


def _number(value: object) -> str:
    if value is None:
        return "null"
    if type(value) is not int:  # a bool, or a custom layer's value
        raise _NotPlain
    return str(value)


def _ms_parts(seconds: float | None) -> tuple[str, str]:
    """``repr(_ms(seconds))`` in two parts, its integer and its decimals; ``null`` for None.

    From integers rather than ``repr`` of a float: below 10**11 hundredths the
    double nearest n / 100 is so close to it that the shortest text naming
    that double is n / 100's own decimals. Past that (or below zero),
    :class:`_NotPlain`.
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
    :class:`_NotPlain` otherwise.
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
        f'"usage":{"null" if usage is None else _usage_text(usage)},"cost_usd":{_cost(ctx.cost_usd)},'
        f'"outcome":"{_str(outcome)}",'
        f'"detail":{_q(detail)}{_text(detail)}{_q(detail)},'
        f'"upstream_request_id":{_q(upstream_id)}{_text(upstream_id)}{_q(upstream_id)},'
        f'"credential":{_q(credential)}{_text(credential)}{_q(credential)},'
        f'"client":{_q(client)}{_text(client)}{_q(client)}}}\n'
    )
    return line.encode()


def _cost(value: float | None) -> str:
    """A cost as json writes it (``repr``); None as ``null``."""
    if value is None:
        return "null"
    if type(value) is not float or not math.isfinite(value):
        raise _NotPlain
    return repr(value)


def _usage_text(usage: Usage) -> str:
    return (
        f'{{"input":{_number(usage.input_tokens)},"output":{_number(usage.output_tokens)},'
        f'"total":{_number(usage.total)}}}'
    )


def encode_record(record: dict[str, Any]) -> bytes:
    """``record`` as one JSON line (json's encoder: any value it can write)."""
    return (_ENCODER.encode(record) + "\n").encode("utf-8", "replace")
