"""The access log's record shape, without a server."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import proxy.http.native
from proxy.accesslog.line import (
    _ms,
    _ms_parts,
    _NotPlain,
    _plain_line,
    _timestamp,
    log_line,
    log_record,
)
from proxy.context import RequestContext, Usage


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
@example(1 / 128)  # 7812.5 microseconds: a tie, rounded to the even 7812
@example(1_700_000_000 + 3 / 128)  # 23437.5: a tie, rounded up to the even 23438
@example(1_700_000_000.9999996)  # rounds into the next second
def test_timestamps_match_isoformat_to_the_millisecond(wall: float) -> None:
    # The cached-second formatter must print what datetime.isoformat would.
    expected = datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert _timestamp(wall) == expected


# Plain text (written as it is) most of the time, else any code point:
# quotes, backslashes, controls, DEL, past ASCII, lone surrogates.
plain = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
texts = st.none() | plain | st.text()
counts = st.none() | st.integers(min_value=0, max_value=10**12)


@st.composite
def contexts(draw: st.DrawFn) -> RequestContext:
    ctx = RequestContext(request_id=draw(plain | st.text()), method=draw(plain), path=draw(plain | st.text()))
    ctx.started = draw(st.floats(min_value=0, max_value=1e6))
    ctx.started_wall = draw(st.floats(min_value=0, max_value=4_102_444_800))
    ctx.client, ctx.provider, ctx.model, ctx.key_name = draw(texts), draw(texts), draw(texts), draw(texts)
    ctx.detail, ctx.upstream_request_id, ctx.credential = draw(texts), draw(texts), draw(texts)
    ctx.status = draw(st.none() | st.integers(min_value=100, max_value=599))
    ctx.bytes_in, ctx.bytes_out = draw(st.integers(0, 10**12)), draw(st.integers(0, 10**12))
    ctx.ttfb = draw(st.none() | st.floats(min_value=0, max_value=1e5))
    ctx.outcome = draw(st.sampled_from(["ok", "client_disconnected", "upstream_error", "aborted"]))
    if draw(st.booleans()):
        ctx.usage = Usage(draw(counts), draw(counts), draw(counts))
    ctx.cost_usd = draw(st.none() | st.floats(min_value=0, max_value=1e6))  # what proxy/spend sets
    return ctx


@settings(max_examples=500)
@given(ctx=contexts(), elapsed=st.floats(min_value=0, max_value=1e5))
def test_the_written_line_is_what_json_writes_for_the_record(ctx: RequestContext, elapsed: float) -> None:
    now = ctx.started + elapsed
    line = log_line(ctx, now)
    record = log_record(ctx, now)
    # Byte for byte what json writes (orjson's shortcut changes nothing a
    # reader can see), a lone surrogate included: replaced by "?", so the
    # line stays valid UTF-8.
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    assert line == (text + "\n").encode("utf-8", "replace")
    assert line.count(b"\n") == 1 and line.endswith(b"\n")  # one line, whatever the strings held
    assert list(json.loads(line)) == list(record)


@pytest.mark.parametrize("odd", ["\x00", "\x1f", '"', "\\", "\x7f", "é", "\ud800", "\u2028"])
def test_text_that_needs_escaping_leaves_the_plain_path_and_is_still_exact(odd: str) -> None:
    ctx = RequestContext(request_id="r", method="POST", path="/v1/chat/completions")
    assert json.loads(_plain_line(ctx, ctx.started + 0.25))["duration_ms"] == 250.0  # plain: taken
    for field in ("path", "model", "client", "detail", "upstream_request_id", "credential", "key_name"):
        ctx = RequestContext(request_id="r", method="POST", path="/v1/chat/completions")
        setattr(ctx, field, f"a{odd}b")
        with pytest.raises(_NotPlain):
            _plain_line(ctx, ctx.started)
        expected = json.dumps(log_record(ctx, ctx.started), ensure_ascii=False, separators=(",", ":"))
        assert log_line(ctx, ctx.started) == (expected + "\n").encode("utf-8", "replace")


@given(st.floats(min_value=0, max_value=1e9) | st.floats(min_value=0, max_value=10.0))
@example(0.0)
@example(0.0000049999)
@example(999_999.999995)  # the last value written from integers, rounded up past it
def test_milliseconds_are_written_as_repr_writes_them(seconds: float) -> None:
    if seconds * 100_000 + 0.5 >= 10**11:
        with pytest.raises(_NotPlain):  # left to orjson
            _ms_parts(seconds)
    else:
        assert "".join(_ms_parts(seconds)) == repr(_ms(seconds))


@given(st.floats(min_value=0, max_value=1e7))
def test_milliseconds_are_rounded_to_the_hundredth(seconds: float) -> None:
    ms = _ms(seconds)
    assert abs(ms - seconds * 1000) <= 0.005 + 1e-9 * seconds * 1000
    assert len(repr(ms).partition(".")[2]) <= 2  # written with two decimals at most


def test_a_field_a_custom_layer_filled_with_a_non_string_still_makes_valid_json() -> None:
    ctx = RequestContext(request_id="r", method="POST", path="/v1/x")
    if proxy.http.native.COMPILED:  # the compiled context refuses the value where it is stored
        with pytest.raises(TypeError):
            ctx.model = 5  # type: ignore[assignment]
        with pytest.raises(TypeError):
            ctx.status = "teapot"  # type: ignore[assignment]
        return
    ctx.model = 5  # type: ignore[assignment]
    ctx.detail = {"why": "custom"}  # type: ignore[assignment]
    record = json.loads(log_line(ctx, ctx.started))
    assert (record["model"], record["detail"]) == (5, {"why": "custom"})
    ctx.model, ctx.status = "gpt", "teapot"  # type: ignore[assignment]
    assert json.loads(log_line(ctx, ctx.started))["status"] == "teapot"
