"""Tests of the incremental SSE scanner (proxy/sse.py).

The property tests generate events, write them with every line ending the
spec allows, cut the bytes anywhere, and check that the scanner finds exactly
the generated events, and the same ones a whole-stream reference parser finds.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.mock.formats import Reply, anthropic_stream, gemini_stream, mock_tokens
from proxy.sse import SseEvent, SseScanner

BOM = b"\xef\xbb\xbf"
# Bytes some line splitters wrongly treat as line ends (str.splitlines breaks
# on all of these once decoded), and multi-byte UTF-8 to be cut in the middle.
TRICKY = [
    "\u2028".encode(),
    "\u2029".encode(),
    "\u0085".encode(),
    b"\x85",
    b"\x0b",
    b"\x0c",
    b"\x1c",
    b"\x1d",
    b"\x1e",
    "é".encode(),
    "🚀".encode(),
    " 日本語".encode(),
    b":",
    b" ",
    b"\x00",
    BOM,
]
EOLS = [b"\n", b"\r\n", b"\r"]


def reference_parse(stream: bytes) -> list[SseEvent]:
    """A plain whole-stream reading of the spec, written independently of the scanner."""
    if stream.startswith(BOM):
        stream = stream[3:]
    lines = re.split(rb"\r\n|\r|\n", stream)
    lines.pop()  # the text after the last line end is not a line (yet)
    events: list[SseEvent] = []
    name, data = b"", list[bytes]()
    for line in lines:
        if not line:
            if data:
                events.append(SseEvent(name, b"\n".join(data)))
            name, data = b"", []
            continue
        if line.startswith(b":"):
            continue
        field, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if field == b"event":
            name = value
        elif field == b"data":
            data.append(value)
    return events


def feed_all(scanner: SseScanner, pieces: list[bytes], bound: int | None = None) -> list[SseEvent]:
    out: list[SseEvent] = []
    for piece in pieces:
        out += scanner.feed(piece)
        if bound is not None:
            assert scanner.buffered <= bound
    return out


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(points), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


# ---------------------------------------------------------------- strategies
def _no_eol(b: bytes) -> bytes:
    return b.replace(b"\r", b"").replace(b"\n", b"")


piece = st.one_of(st.binary(max_size=12).map(_no_eol), st.sampled_from(TRICKY))
short = st.lists(piece, max_size=6).map(b"".join)
# Up to ~100 KB, built by repetition so hypothesis need not draw every byte.
long = st.builds(lambda p, n: (p * (n // len(p) + 1))[:n], piece.filter(bool), st.integers(1000, 100_000))
value = st.integers(0, 15).flatmap(lambda k: long if k == 0 else short)
noise = st.one_of(
    short.map(lambda s: b":" + s),  # comments
    st.sampled_from(
        [b"id: 7", b"id", b"retry: 100", b"foo: bar", b"foo", b"Data: x", b"datax: y", b"events: z"]
    ),
)


@dataclass
class Block:
    lines: list[bytes]
    expected: SseEvent | None


@st.composite
def blocks(draw: st.DrawFn) -> Block:
    name = draw(st.none() | short)
    data = draw(st.lists(value, max_size=4))
    lines = [_data_line(draw, d) for d in data]
    if name is not None:
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, _field_line(draw, b"event", name))
        if draw(st.booleans()):  # an earlier event line is overridden by the later one
            lines.insert(draw(st.integers(0, at)), b"event: decoy")
    for extra in draw(st.lists(noise, max_size=3)):
        lines.insert(draw(st.integers(0, len(lines))), extra)
    lines += [b""] * draw(st.integers(1, 3))  # the blank line(s) ending the event
    expected = SseEvent(name or b"", b"\n".join(data)) if data else None
    return Block(lines, expected)


def _data_line(draw: st.DrawFn, d: bytes) -> bytes:
    if not d and draw(st.booleans()):
        return b"data"  # a field without a colon: an empty data line
    return _field_line(draw, b"data", d)


def _field_line(draw: st.DrawFn, field: bytes, v: bytes) -> bytes:
    # One space after the colon is optional, unless the value itself starts with one.
    space = b" " if v.startswith(b" ") or draw(st.booleans()) else b""
    return field + b":" + space + v


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[SseEvent]]:
    generated = draw(st.lists(blocks(), max_size=6))
    out, prev = [BOM] if draw(st.booleans()) else [], b""
    for line in (ln for block in generated for ln in block.lines):
        choices = EOLS
        if prev == b"\r" and not line:
            choices = [b"\r\n", b"\r"]  # CR then a bare LF would read as one CRLF
        prev = draw(st.sampled_from(choices))
        out += [line, prev]
    expected = [b.expected for b in generated if b.expected is not None]
    return b"".join(out), expected


# ------------------------------------------------------------ property tests
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.data())
def test_any_split_gives_the_generated_events(
    case: tuple[bytes, list[SseEvent]], data: st.DataObject
) -> None:
    stream, expected = case
    assert reference_parse(stream) == expected
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=40))
    if data.draw(st.booleans()):  # a cut between every CR and what follows it
        points += [m.end() for m in re.finditer(rb"\r", stream)]
    assert feed_all(SseScanner(), cut(stream, points), bound=1 << 20) == expected


@settings(max_examples=40, deadline=None)
@given(streams().filter(lambda c: len(c[0]) < 4000))
def test_one_byte_chunks(case: tuple[bytes, list[SseEvent]]) -> None:
    stream, expected = case
    pieces = [stream[i : i + 1] for i in range(len(stream))]
    assert feed_all(SseScanner(), pieces) == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=30))
def test_garbage_never_raises_and_stays_bounded(pieces: list[bytes]) -> None:
    scanner = SseScanner(max_event_bytes=256)
    events = feed_all(scanner, pieces, bound=256)
    if not scanner.overflowed:
        assert events == reference_parse(b"".join(pieces))


# ------------------------------------------------------------- examples
def test_bytes_splitlines_breaks_only_on_cr_lf_crlf() -> None:
    # The scanner relies on this; str.splitlines would break on all of these.
    tricky = b"a" + b"b".join(TRICKY) + b"z"
    assert tricky.splitlines() == [tricky]
    assert b"a\rb\nc\r\nd".splitlines() == [b"a", b"b", b"c", b"d"]


def test_unicode_line_separators_inside_json_do_not_split() -> None:
    line = 'data: {"text": "a\u2028b\u2029c\u0085d"}\n\n'.encode()
    assert SseScanner().feed(line) == [SseEvent(b"", line[6:-2])]


def test_cr_at_chunk_end_then_lf_is_one_line_end() -> None:
    s = SseScanner()
    assert s.feed(b"data: a\r") == []
    assert s.feed(b"") == []  # an empty read in between changes nothing
    assert s.feed(b"\n") == []  # the second half of CRLF, not a blank line
    assert s.feed(b"\r\n") == [SseEvent(b"", b"a")]


def test_cr_cr_is_a_line_then_a_blank_line() -> None:
    s = SseScanner()
    assert s.feed(b"data: a\r") == []
    assert s.feed(b"\rdata: b\r") == [SseEvent(b"", b"a")]
    assert s.feed(b"\n\n") == [SseEvent(b"", b"b")]


def test_field_forms() -> None:
    s = SseScanner()
    assert s.feed(b"data:x\n\n") == [SseEvent(b"", b"x")]  # no space after the colon
    assert s.feed(b"data:  x\n\n") == [SseEvent(b"", b" x")]  # only one space is dropped
    assert s.feed(b"data\n\n") == [SseEvent(b"", b"")]  # no colon: empty value
    assert s.feed(b"event: a\nevent\ndata: y\n\n") == [SseEvent(b"", b"y")]  # "event" alone resets it
    assert s.feed(b"data: a\ndata:\ndata: b\n\n") == [SseEvent(b"", b"a\n\nb")]
    assert s.feed(b": comment\nid: 1\nretry: 5\nevent: e\ndata: z\n\n") == [SseEvent(b"e", b"z")]


def test_event_without_data_is_not_dispatched_and_its_name_does_not_leak() -> None:
    s = SseScanner()
    assert s.feed(b"event: ping\n\n") == []
    assert s.feed(b"data: x\n\n") == [SseEvent(b"", b"x")]


def test_bom_dropped_only_at_stream_start() -> None:
    s = SseScanner()
    assert s.feed(BOM[:2]) == []
    assert s.feed(BOM[2:] + b"data: a\n\n" + BOM + b"data: b\n\n") == [SseEvent(b"", b"a")]


def test_unfinished_event_at_end_is_not_dispatched() -> None:
    assert SseScanner().feed(b"data: a\n") == []


def test_real_mock_streams() -> None:
    r = Reply(model="m", tokens=mock_tokens(5), input_tokens=3, rid="x", created=0)
    for plan, n in ((anthropic_stream(r), 11), (gemini_stream(r, True), 5)):
        stream = b"".join([*plan.head, *plan.tokens, *plan.tail])
        events = SseScanner().feed(stream)
        assert len(events) == n and events == reference_parse(stream)


# -------------------------------------------------------------- overflow
def test_oversized_event_is_dropped_and_memory_stays_bounded() -> None:
    limit = 1000
    s = SseScanner(max_event_bytes=limit)
    big = b"event: big\ndata: " + b"x" * 5000 + b"\ndata: more\n\n"
    stream = b"data: before\n\n" + big + b"data: after\n\n"
    pieces = [stream[i : i + 100] for i in range(0, len(stream), 100)]
    assert feed_all(s, pieces, bound=limit) == [SseEvent(b"", b"before"), SseEvent(b"", b"after")]
    assert s.overflowed == 1 and s.buffered == 0


def test_oversized_event_in_one_chunk_and_by_many_lines() -> None:
    s = SseScanner(max_event_bytes=1000)
    many = b"".join(b"data: 0123456789\n" for _ in range(200)) + b"\n"
    whole = b"data: " + b"y" * 2000 + b"\n\n"
    assert s.feed(many + whole + b"event: e\ndata: ok\n\n") == [SseEvent(b"e", b"ok")]
    assert s.overflowed == 2 and s.buffered == 0


def test_oversized_event_name_is_dropped() -> None:
    s = SseScanner(max_event_bytes=1000)
    stream = b"event: " + b"n" * 5000 + b"\ndata: x\n\nevent: ok\ndata: y\n\n"
    assert s.feed(stream) == [SseEvent(b"ok", b"y")]
    assert s.overflowed == 1


def test_endless_line_is_discarded_as_it_arrives() -> None:
    s = SseScanner(max_event_bytes=4096)
    for _ in range(1000):  # 1 MB without a line end
        assert s.feed(b"data: " + b"z" * 1024) == []
        assert s.buffered <= 4096
    assert s.overflowed == 1
    # The end of the dropped line is not mistaken for a blank line.
    assert s.feed(b"\ndata: lost\n") == []
    assert s.feed(b"\ndata: kept\n\n") == [SseEvent(b"", b"kept")]
    assert s.overflowed == 1
