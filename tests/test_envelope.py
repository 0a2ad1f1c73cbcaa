"""Code Assist's envelope both ways: request bodies wrapped, answers unwrapped event by event.

The streamed transform reads real chunked responses from a loopback upstream
through the passthrough's own client (``tests/test_pump.py``'s ``upstream``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.code_assist import Envelope, EnvelopeError, code_assist_call, wrap_body
from proxy.envelope import UnwrappedBody, unwrap_document, unwrap_event
from proxy.http import ResponseBroken
from proxy.pump import pump
from proxy.usage import UsageTap
from tests.test_pump import Recorder, upstream

pytestmark = pytest.mark.timeout(20)


def _chunk(text: str, trace: str = "t1") -> dict[str, object]:
    inner = {"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}}], "modelVersion": "m"}
    return {"response": inner, "traceId": trace}


def _event(text: str, sep: bytes = b"\r\n") -> bytes:
    return b"data: " + json.dumps(_chunk(text)).encode() + sep + sep


def _text(event: bytes) -> str:
    data = next(line for line in event.splitlines() if line.startswith(b"data: "))
    return str(json.loads(data[6:])["candidates"][0]["content"]["parts"][0]["text"])


# --------------------------------------------------------------- one event
def test_an_event_is_unwrapped_keeping_its_framing() -> None:
    out = unwrap_event(_event("héllo"))
    assert out.endswith(b"\r\n\r\n") and out.count(b"\r\n") == 2
    document = json.loads(out[len(b"data: ") : -4])
    assert document["candidates"][0]["content"]["parts"][0]["text"] == "héllo"
    assert document["responseId"] == "t1"  # the traceId, as the command-line tool reads it
    assert "response" not in document
    assert unwrap_event(_event("x", b"\n")).endswith(b"}\n\n")


def test_other_fields_and_their_order_are_kept() -> None:
    event = (
        b"event: message\nid: 7\n: a comment\ndata: " + json.dumps(_chunk("a")).encode() + b"\nretry: 5\n\n"
    )
    lines = unwrap_event(event).split(b"\n")
    assert lines[:3] == [b"event: message", b"id: 7", b": a comment"]
    assert lines[3].startswith(b"data: {") and lines[4:] == [b"retry: 5", b"", b""]


def test_data_split_over_lines_is_joined_before_unwrapping() -> None:
    document = json.dumps(_chunk("split"), indent=1).encode()
    event = b"".join(b"data: " + line + b"\n" for line in document.split(b"\n")) + b"\n"
    out = unwrap_event(event)
    assert out.count(b"data: ") == 1 and _text(out) == "split"


@pytest.mark.parametrize(
    "event",
    [
        b": keepalive\r\n\r\n",
        b'data: {"error": {"code": 500, "message": "boom"}}\r\n\r\n',
        b"data: not json\n\n",
        b"data: [1, 2]\n\n",
    ],
)
def test_what_is_not_a_wrapped_response_passes_unchanged(event: bytes) -> None:
    assert unwrap_event(event) == event


def test_a_response_id_of_its_own_is_kept() -> None:
    wrapped = {"response": {"responseId": "own", "candidates": []}, "traceId": "trace"}
    assert json.loads(unwrap_document(json.dumps(wrapped).encode()) or b"")["responseId"] == "own"
    assert unwrap_document(b'{"totalTokens": 3}') is None


# ----------------------------------------------------------------- streams
async def test_each_event_is_its_own_read_however_the_events_arrive() -> None:
    events = [_event(t) for t in ("a", "b", "c", "d")]
    joined = events[0] + events[1]  # two events in one chunk
    split = len(events[2]) // 2  # one event in two chunks
    steps = [(0.0, joined), (0.0, events[2][:split]), (0.01, events[2][split:] + events[3]), (0.0, None)]
    async with upstream(steps) as response:
        body = UnwrappedBody(response, True, 1 << 20)
        reads = []
        while not body.complete:
            reads.append(await body.read())
    assert [_text(r) for r in reads if r] == ["a", "b", "c", "d"]
    assert all(r.endswith(b"\r\n\r\n") and r.count(b"data: ") == 1 for r in reads if r)


async def test_an_event_goes_out_without_waiting_for_the_next() -> None:
    # The upstream sends one event and half of the next, then stays silent.
    steps = [(0.0, _event("first") + _event("second")[:20])]
    async with upstream(steps) as response:
        body = UnwrappedBody(response, True, 1 << 20)
        assert _text(await body.read()) == "first"
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):  # the half event is not an event: nothing to send
            await body.read(loop.time() + 0.2)
        assert not body.complete


async def test_the_pump_relays_one_send_per_event_and_usage_is_read() -> None:
    usage = {"promptTokenCount": 2, "candidatesTokenCount": 3, "totalTokenCount": 5}
    last = {"response": {"candidates": [], "usageMetadata": usage}, "traceId": "t"}
    steps = [
        (0.0, _event("a") + _event("b")),
        (0.0, b"data: " + json.dumps(last).encode() + b"\r\n\r\n"),
        (0.0, None),
    ]
    async with upstream(steps) as response:
        recorder = Recorder()
        tap = UsageTap("gemini", b"text/event-stream", None)
        body = UnwrappedBody(response, True, 1 << 20)
        tail = await pump(body, recorder, tap, idle=5, deadline=None, heartbeat=None)
        tap.feed(tail)
    sent = [chunk for _, chunk in recorder.sent if chunk] + ([tail] if tail else [])
    assert len(sent) == 3 and [_text(c) for c in sent[:2]] == ["a", "b"]
    found = tap.finish()
    assert found is not None and (found.input_tokens, found.output_tokens) == (2, 3)


async def test_an_event_over_the_limit_breaks_the_stream() -> None:
    steps = [(0.0, b"data: " + b"x" * 2000)]
    async with upstream(steps) as response:
        body = UnwrappedBody(response, True, 1000)
        with pytest.raises(ResponseBroken):
            await body.read()


async def test_a_json_answer_is_unwrapped_whole() -> None:
    document = json.dumps(_chunk("whole")).encode()
    steps = [(0.0, document[:10]), (0.0, document[10:]), (0.0, None)]
    async with upstream(steps) as response:
        body = UnwrappedBody(response, False, 1 << 20)
        out = await body.read()
        assert body.complete or await body.read() == b""
    assert json.loads(out)["candidates"][0]["content"]["parts"][0]["text"] == "whole"


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=12), lf=st.booleans())
def test_any_chunking_gives_the_same_events(cuts: list[int], lf: bool) -> None:
    sep = b"\n" if lf else b"\r\n"
    stream = b"".join(_event(t, sep) for t in ("one", "two", "three")) + b": bye" + sep + sep
    chunks, start = [], 0
    for cut in sorted(set(cuts)):
        if start < cut < len(stream):
            chunks.append(stream[start:cut])
            start = cut
    chunks.append(stream[start:])

    async def run() -> list[bytes]:
        async with upstream([(0.0, c) for c in chunks] + [(0.0, None)]) as response:
            body = UnwrappedBody(response, True, 1 << 20)
            out = []
            while not body.complete:
                piece = await body.read()
                if piece:
                    out.append(piece)
            return out

    out = asyncio.run(run())
    assert out == [unwrap_event(_event(t, sep)) for t in ("one", "two", "three")] + [b": bye" + sep + sep]


# ----------------------------------------------------------- request bodies
def test_a_generate_body_is_wrapped_without_being_parsed() -> None:
    envelope = Envelope("generateContent", "gemini-x", "json")
    body, _ = wrap_body(envelope, "proj-1", b'{"contents": [{"parts": [{"text": "hi"}]}]}', None)
    assert json.loads(body) == {  # type: ignore[arg-type]
        "model": "gemini-x",
        "project": "proj-1",
        "request": {"contents": [{"parts": [{"text": "hi"}]}]},
    }
    assert json.loads(wrap_body(envelope, "p", None, None)[0])["request"] == {}  # type: ignore[arg-type]
    quoted = Envelope("generateContent", 'x"y', "json")
    assert json.loads(wrap_body(quoted, "p", b"{}", None)[0])["model"] == 'x"y'  # type: ignore[arg-type]


async def test_a_streamed_body_is_wrapped_piece_by_piece() -> None:
    async def pieces() -> AsyncIterator[bytes]:
        yield b'{"contents": '
        yield b"[]}"

    body, length = wrap_body(Envelope("streamGenerateContent", "m", "sse"), "p", pieces(), 16)
    assert not isinstance(body, bytes | None)
    out = b"".join([piece async for piece in body])
    assert json.loads(out) == {"model": "m", "project": "p", "request": {"contents": []}}
    assert length == len(out)


def test_count_tokens_gets_the_model_spliced_in() -> None:
    envelope = Envelope("countTokens", "gemini-x", "none")
    body, _ = wrap_body(envelope, "ignored", b' {"contents": [{"parts": [{"text": "hi"}]}]}', None)
    assert json.loads(body) == {  # type: ignore[arg-type]
        "request": {"model": "models/gemini-x", "contents": [{"parts": [{"text": "hi"}]}]}
    }
    assert json.loads(wrap_body(envelope, "p", b"{ }", None)[0]) == {"request": {"model": "models/gemini-x"}}  # type: ignore[arg-type]
    with pytest.raises(EnvelopeError):
        wrap_body(envelope, "p", b"[1]", None)


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        ("/v1beta/models/g:streamGenerateContent", b"alt=sse", "/v1internal:streamGenerateContent?alt=sse"),
        ("/v1beta/models/g:streamGenerateContent", b"", None),
        ("/v1/models/g:generateContent", b"", "/v1internal:generateContent"),
        ("/v1beta/models/g:countTokens", b"", "/v1internal:countTokens"),
        (
            "/v1/projects/p/locations/l/publishers/google/models/g:generateContent",
            b"",
            "/v1internal:generateContent",
        ),
        ("/v1beta/models/g:embedContent", b"", None),
        ("/v1beta/models", b"", None),
        ("/v1beta/files", b"", None),
    ],
)
def test_which_calls_code_assist_serves(path: str, query: bytes, expected: str | None) -> None:
    call = code_assist_call(path, query)
    assert (call[0] if call else None) == expected
    if call is not None:
        assert call[1].model == "g"
