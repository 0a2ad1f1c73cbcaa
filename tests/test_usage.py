"""Tests of UsageTap (proxy/usage.py): token usage read from response bytes.

Bodies come from the mock provider, both from its wire-format builders and
captured over real sockets, and are cut at arbitrary points before feeding.
"""

from __future__ import annotations

import gc
import gzip
import itertools
import struct
import sys
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import proxy.usage as usage_module
from proxy.context import Usage
from proxy.mock import MockHandle
from proxy.mock import formats as fmt
from proxy.sse import SseScanner
from proxy.usage import UsageTap

GUARD = 10.0
SSE = b"text/event-stream; charset=utf-8"
JSON = b"application/json; charset=utf-8"


def reply(n: int = 12, inp: int = 42, model: str = "gpt-x", include_usage: bool = True) -> fmt.Reply:
    return fmt.Reply(model, fmt.mock_tokens(n), inp, "mock1", 1700000000, include_usage)


def joined(plan: fmt.StreamPlan) -> bytes:
    return b"".join([*plan.head, *plan.tokens, *plan.tail])


def run_tap(
    provider: str,
    ctype: bytes | None,
    body: bytes,
    cuts: Sequence[int] = (),
    encoding: bytes | None = None,
    **kw: int,
) -> UsageTap:
    tap = UsageTap(provider, ctype, encoding, **kw)  # type: ignore[arg-type]
    bounds = [0, *sorted(cuts), len(body)]
    for a, b in itertools.pairwise(bounds):
        tap.feed(body[a:b])
    return tap


def full(r: fmt.Reply) -> Usage:
    return Usage(r.input_tokens, r.output_tokens, r.input_tokens + r.output_tokens)


# (provider, content type, body builder, expected usage)
Builder = Callable[[fmt.Reply], bytes]
FORMATS: dict[str, tuple[str, bytes, Builder, Callable[[fmt.Reply], Usage | None]]] = {
    "chat-stream": ("openai", SSE, lambda r: joined(fmt.chat_stream(r)), full),
    "chat-stream-no-usage": (
        "openai",
        SSE,
        lambda r: joined(fmt.chat_stream(replace(r, include_usage=False))),
        lambda r: None,
    ),
    "chat": ("openai", JSON, lambda r: fmt.dumps(fmt.chat_completion(r)), full),
    "responses-stream": ("openai", SSE, lambda r: joined(fmt.responses_stream(r)), full),
    "responses": ("openai", JSON, lambda r: fmt.dumps(fmt.response_object(r)), full),
    "embeddings": (
        "openai",
        JSON,
        lambda r: fmt.dumps(fmt.openai_embeddings({"input": ["a", "b"]}, r)),
        lambda r: Usage(r.input_tokens, None, r.input_tokens),
    ),
    "gemini-sse": ("gemini", SSE, lambda r: joined(fmt.gemini_stream(r, True)), full),
    "gemini-array": ("gemini", JSON, lambda r: joined(fmt.gemini_stream(r, False)), full),
    "gemini": ("gemini", JSON, lambda r: fmt.dumps(fmt.gemini_response(r)), full),
    "anthropic-stream": ("anthropic", SSE, lambda r: joined(fmt.anthropic_stream(r)), full),
    "anthropic": ("anthropic", JSON, lambda r: fmt.dumps(fmt.anthropic_message(r)), full),
}


# ------------------------------------------------------- every format, any cut
@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(FORMATS)),
    st.integers(0, 40),
    st.integers(1, 10**7),
    st.text(min_size=1, max_size=12),  # any model name, U+2028 and emoji included
    st.data(),
)
def test_builder_formats_cut_anywhere(name: str, n: int, inp: int, model: str, data: st.DataObject) -> None:
    provider, ctype, build, expect = FORMATS[name]
    r = reply(n, inp, model)
    body = build(r)
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=30))
    tap = run_tap(provider, ctype, body, cuts)
    assert tap.finish() == expect(r)
    assert tap.model == model


def test_one_byte_chunks_and_one_piece() -> None:
    r = reply(7, 9)
    for name, (provider, ctype, build, expect) in FORMATS.items():
        body = build(r)
        assert run_tap(provider, ctype, body, list(range(len(body)))).finish() == expect(r), name
        assert run_tap(provider, ctype, body).finish() == expect(r), name


def test_observing_scanned_events_reads_what_feeding_bytes_reads() -> None:
    """The chat API scans a stream once and shows the tap its events (UsageTap.observe)."""
    r = reply(7, 9, "model-x")
    for name, (provider, ctype, build, expect) in FORMATS.items():
        if ctype != SSE:
            continue
        tap = UsageTap(provider, ctype, None)  # type: ignore[arg-type]
        for event in SseScanner(max_event_bytes=4 << 20).feed(build(r)):
            tap.observe(event)
        assert tap.finish() == expect(r), name
        assert tap.model == "model-x", name


def test_finish_is_idempotent() -> None:
    tap = run_tap("gemini", SSE, joined(fmt.gemini_stream(reply(), True)))
    assert tap.finish() == tap.finish() == full(reply())


# --------------------------------------------------------- real mock bytes
@dataclass
class Captured:
    name: str
    provider: str
    ctype: bytes | None
    encoding: bytes | None
    raw: bytes
    expected: Usage | None
    model: str


def _capture(mock: MockHandle) -> Iterator[Captured]:
    chat = {"model": "gpt-real", "messages": [{"role": "user", "content": "hi"}]}
    gem = {"contents": [{"parts": [{"text": "hi"}]}]}
    msg = {"model": "claude-real", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    # (name, provider, path, JSON body, extra headers)
    requests: list[tuple[str, str, str, dict[str, Any], dict[str, str]]] = [
        (
            "chat-stream",
            "openai",
            "/v1/chat/completions",
            {**chat, "stream": True, "stream_options": {"include_usage": True}},
            {},
        ),
        ("chat-stream-no-usage", "openai", "/v1/chat/completions", {**chat, "stream": True}, {}),
        ("chat", "openai", "/v1/chat/completions", chat, {}),
        ("chat-gzip", "openai", "/v1/chat/completions", chat, {"x-mock-gzip": "1"}),
        (
            "responses-stream",
            "openai",
            "/v1/responses",
            {"model": "gpt-real", "input": "hi", "stream": True},
            {},
        ),
        ("responses", "openai", "/v1/responses", {"model": "gpt-real", "input": "hi"}, {}),
        ("embeddings", "openai", "/v1/embeddings", {"model": "gpt-real", "input": "hi"}, {}),
        ("gemini-sse", "gemini", "/v1beta/models/gemini-real:streamGenerateContent?alt=sse", gem, {}),
        ("gemini-array", "gemini", "/v1beta/models/gemini-real:streamGenerateContent", gem, {}),
        ("gemini", "gemini", "/v1beta/models/gemini-real:generateContent", gem, {}),
        ("gemini-gzip", "gemini", "/v1beta/models/gemini-real:generateContent", gem, {"x-mock-gzip": "1"}),
        ("anthropic-stream", "anthropic", "/v1/messages", {**msg, "stream": True}, {}),
        ("anthropic", "anthropic", "/v1/messages", msg, {"x-mock-gzip": "1"}),
        ("openai-error", "openai", "/v1/chat/completions", chat, {"x-mock-status": "429"}),
    ]
    with httpx.Client(base_url=mock.url, timeout=GUARD) as client:
        for name, provider, path, body, headers in requests:
            with client.stream("POST", path, json=body, headers={"x-mock-tokens": "9", **headers}) as resp:
                raw = b"".join(resp.iter_raw())  # the bytes as on the wire, still compressed
                ctype, enc = resp.headers.get("content-type"), resp.headers.get("content-encoding")
            inp = max(1, mock.state.last().body_bytes // 4)
            expected: Usage | None = Usage(inp, 9, inp + 9)
            if name == "embeddings":
                expected = Usage(inp, None, inp)
            elif name in ("chat-stream-no-usage", "openai-error"):
                expected = None
            model = "gemini-real" if provider == "gemini" else str(body.get("model"))
            yield Captured(name, provider, _b(ctype), _b(enc), raw, expected, model)


def _b(header: str | None) -> bytes | None:
    return header.encode() if header is not None else None


@pytest.fixture(scope="module")
def captured(mock: MockHandle) -> list[Captured]:
    return list(_capture(mock))


def test_captured_bodies_are_what_the_formats_say(captured: list[Captured]) -> None:
    names = {c.name: c for c in captured}
    assert names["chat-gzip"].encoding == b"gzip" and names["chat-gzip"].raw[:2] == b"\x1f\x8b"
    assert names["gemini-sse"].raw.endswith(b"\r\n\r\n")
    assert names["gemini-array"].raw.startswith(b"[")


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_real_mock_bytes_cut_anywhere(captured: list[Captured], data: st.DataObject) -> None:
    c = data.draw(st.sampled_from(captured))
    cuts = data.draw(st.lists(st.integers(0, len(c.raw)), max_size=30))
    tap = run_tap(c.provider, c.ctype, c.raw, cuts, c.encoding)
    assert tap.finish() == c.expected, c.name
    if c.expected is not None or c.name == "chat-stream-no-usage":
        assert tap.model == c.model, c.name


# ------------------------------------------------------------- compression
def gzip_sse(body: bytes, wbits: int = 31) -> bytes:
    """Compressed the way a server streams it: flushed after every event."""
    c = zlib.compressobj(6, zlib.DEFLATED, wbits)
    events = body.split(b"\n\n")
    return b"".join(c.compress(e + b"\n\n") + c.flush(zlib.Z_SYNC_FLUSH) for e in events[:-1]) + c.flush()


@pytest.mark.parametrize(
    "wbits, encoding", [(31, b"gzip"), (15, b"deflate"), (-15, b"deflate"), (31, b"X-Gzip")]
)
def test_compressed_streams_and_bodies(wbits: int, encoding: bytes) -> None:
    r = reply(30)
    stream = gzip_sse(joined(fmt.anthropic_stream(r)), wbits)
    c = zlib.compressobj(6, zlib.DEFLATED, wbits)
    body = c.compress(fmt.dumps(fmt.chat_completion(r))) + c.flush()
    for cuts in ([], [1], list(range(0, len(stream), 3))):
        assert run_tap("anthropic", SSE, stream, cuts, encoding).finish() == full(r)
        assert run_tap("openai", JSON, body, [c for c in cuts if c < len(body)], encoding).finish() == full(r)


def test_long_compressed_stream_beyond_max_body_bytes_is_not_a_bomb() -> None:
    r = reply(1000)
    stream = gzip_sse(joined(fmt.chat_stream(r)))
    assert len(zlib.decompress(stream, 31)) > 64 * 1024
    tap = run_tap("openai", SSE, stream, list(range(0, len(stream), 1000)), b"gzip", max_body_bytes=64 * 1024)
    assert tap.finish() == full(r)


def gzip_zeros(mib: int) -> bytes:
    """A valid gzip of ``mib`` MiB of zeros, built from one repeated 1 MiB block
    (a full flush makes each block byte-aligned and identical): fast to make."""
    zeros = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    end = c.flush()
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    head = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    return head + block * mib + end + struct.pack("<II", crc, (mib << 20) & 0xFFFFFFFF)


def test_gzip_zeros_is_valid() -> None:
    assert gzip.decompress(gzip_zeros(3)) == bytes(3 << 20)


@pytest.mark.parametrize("ctype", [JSON, SSE])
def test_gzip_bomb_stays_bounded_and_gives_up_quickly(ctype: bytes) -> None:
    bomb = gzip_zeros(1024)  # 1 GiB of zeros in ~1 MB
    assert len(bomb) < 2 << 20
    tracemalloc.start()
    try:
        started = time.perf_counter()
        tap = run_tap("openai", ctype, bomb, list(range(0, len(bomb), 64 * 1024)), b"gzip")
        result = tap.finish()
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result is None
    assert elapsed < 2.0  # inflating it all would take seconds
    assert peak < 16 << 20  # max_body_bytes (4 MiB) plus working space, never the gigabyte


def test_brotli_missing_or_unbounded_means_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "brotli", None)  # import brotli now raises ImportError
    assert run_tap("openai", JSON, fmt.dumps(fmt.chat_completion(reply())), [], b"br").finish() is None


def test_brotli() -> None:
    brotli = pytest.importorskip("brotli")
    r = reply()
    body = brotli.compress(fmt.dumps(fmt.chat_completion(r)))
    assert run_tap("openai", JSON, body, list(range(len(body))), b"br").finish() == full(r)
    bomb = brotli.compress(bytes(256 << 20), quality=1)
    assert run_tap("openai", JSON, bomb, [], b"br").finish() is None


def test_zstd() -> None:
    zstandard = pytest.importorskip("zstandard")
    r = reply()
    body = zstandard.ZstdCompressor().compress(fmt.dumps(fmt.chat_completion(r)))
    assert run_tap("openai", JSON, body, list(range(len(body))), b"zstd").finish() == full(r)
    bomb = zstandard.ZstdCompressor().compress(bytes(256 << 20))
    assert run_tap("openai", SSE, bomb, [], b"zstd").finish() is None


@pytest.mark.parametrize("encoding", [b"compress", b"gzip, br", b"snappy"])
def test_unknown_encodings_are_unknown_usage(encoding: bytes) -> None:
    body = fmt.dumps(fmt.chat_completion(reply()))
    assert run_tap("openai", JSON, body, [], encoding).finish() is None


# ------------------------------------------------------- what is not read
@pytest.mark.parametrize(
    "ctype", [None, b"", b"audio/mpeg", b"application/octet-stream", b"text/plain", b"text/html"]
)
def test_other_content_types_are_not_read(ctype: bytes | None) -> None:
    body = fmt.dumps(fmt.chat_completion(reply()))
    tap = run_tap("openai", ctype, body)
    assert tap.finish() is None and tap.model is None


def test_oversized_json_body_gives_up() -> None:
    body = fmt.dumps(fmt.chat_completion(reply(5000)))
    assert run_tap("openai", JSON, body, max_body_bytes=1000).finish() is None
    assert run_tap("openai", JSON, body, max_body_bytes=len(body)).finish() == full(reply(5000))


@pytest.mark.parametrize(
    "provider, ctype, body",
    [
        ("openai", JSON, b'{"usage": {"prompt_tokens": 3'),  # truncated
        ("openai", JSON, b"\xff\xfe not json"),
        ("gemini", JSON, b'[{"usageMetadata": {"promptTokenCount": 1}},'),  # array cut short
        ("openai", SSE, b'data: {"usage": {"prompt_tokens": \n\n'),
        ("anthropic", SSE, b"event: message_start\ndata: [1, 2]\n\n"),
        ("openai", JSON, b'{"usage": {"prompt_tokens": "3", "completion_tokens": true}}'),
        ("openai", JSON, b'{"error": {"message": "Rate limited", "type": "requests"}}'),
    ],
)
def test_malformed_and_error_bodies_never_raise(provider: str, ctype: bytes, body: bytes) -> None:
    assert run_tap(provider, ctype, body, list(range(len(body)))).finish() is None


def test_corrupt_compression_never_raises() -> None:
    assert run_tap("openai", JSON, b"\x1f\x8b garbage", [3], b"gzip").finish() is None


def test_chunks_are_not_kept() -> None:
    for provider, ctype, build, _ in FORMATS.values():
        chunk = bytes(bytearray(build(reply())))  # a fresh object only this test refers to
        before = sys.getrefcount(chunk)
        tap = UsageTap(provider, ctype, None)  # type: ignore[arg-type]
        tap.feed(chunk)
        tap.finish()
        assert sys.getrefcount(chunk) == before


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _live_taps() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is UsageTap)


@pytest.mark.parametrize("ctype", [JSON, SSE])
@pytest.mark.parametrize("encoding", [None, b"gzip", b"deflate", b"br", b"zstd"])
@pytest.mark.usefixtures("no_automatic_gc")
def test_a_finished_tap_is_freed_without_the_garbage_collector(ctype: bytes, encoding: bytes | None) -> None:
    # A tap made a reference cycle (a bound method of itself kept in an
    # attribute, and its decoder's): ~1.8 k instructions of collection a
    # request. A zstd tap was worse, a leak: zstandard's writer is invisible
    # to the collector, and its file was the tap's decoder.
    r = reply()
    plain = fmt.dumps(fmt.chat_completion(r)) if ctype == JSON else fmt.sse(fmt.chat_completion(r))
    body = compress(plain, encoding)
    before = _live_taps()
    for _ in range(20):
        tap = UsageTap("openai", ctype, encoding)
        tap.feed(body[:9])
        tap.feed(body[9:])
        tap.finish()
        del tap
    # Counted, not gc.collect()'s return: other threads of the session
    # (the mock's, a server's) may leave garbage of their own meanwhile.
    assert _live_taps() == before, "a finished tap waits for the cyclic collector"
    gc.collect()
    assert _live_taps() == before, "a finished tap is never freed"


@pytest.mark.parametrize("encoding", [b"gzip", b"zstd"])
@pytest.mark.usefixtures("no_automatic_gc")
def test_an_unfinished_tap_is_still_freed(encoding: bytes) -> None:
    """A response cut before its end is never finished: the collector must still free its tap."""
    body = compress(fmt.dumps(fmt.chat_completion(reply())), encoding)
    before = _live_taps()
    for _ in range(20):
        tap = UsageTap("openai", JSON, encoding)
        tap.feed(body[:9])
        del tap
    gc.collect()
    assert _live_taps() == before


def compress(data: bytes, encoding: bytes | None) -> bytes:
    if encoding is None:
        return data
    if encoding == b"gzip":
        return gzip.compress(data)
    if encoding == b"deflate":
        return zlib.compress(data)
    if encoding == b"br":
        return pytest.importorskip("brotli").compress(data)
    return pytest.importorskip("zstandard").ZstdCompressor().compress(data)


# ------------------------------------------------------ provider details
def sse(*events: tuple[str | None, object]) -> bytes:
    return b"".join(fmt.sse(obj, event=name) for name, obj in events)


def test_gemini_thoughts_count_as_output_and_last_event_wins() -> None:
    meta = {"promptTokenCount": 10, "candidatesTokenCount": 1, "totalTokenCount": 11}
    last = {
        "promptTokenCount": 10,
        "candidatesTokenCount": 5,
        "thoughtsTokenCount": 20,
        "totalTokenCount": 35,
    }
    body = sse((None, {"usageMetadata": meta, "modelVersion": "g1"}), (None, {"usageMetadata": last}))
    tap = run_tap("gemini", SSE, body)
    assert tap.finish() == Usage(10, 25, 35) and tap.model == "g1"


def test_anthropic_cache_tokens_count_as_input() -> None:
    start = {
        "model": "c1",
        "usage": {
            "input_tokens": 5,
            "cache_creation_input_tokens": 100,
            "cache_read_input_tokens": 1000,
            "output_tokens": 1,
        },
    }
    body = sse(
        ("message_start", {"type": "message_start", "message": start}),
        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 7}}),
        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 30}}),
    )
    assert run_tap("anthropic", SSE, body).finish() == Usage(1105, 30, 1135, 1000, 100)
    # A message_delta that restates input tokens is believed.
    restated = body + sse(
        ("message_delta", {"type": "message_delta", "usage": {"input_tokens": 8, "output_tokens": 31}})
    )
    assert run_tap("anthropic", SSE, restated).finish() == Usage(8, 31, 39)
    doc = {"model": "c1", "usage": {"input_tokens": 5, "cache_read_input_tokens": 10, "output_tokens": 2}}
    assert run_tap("anthropic", JSON, fmt.dumps(doc)).finish() == Usage(15, 2, 17, 10)


def test_cached_prompt_tokens_are_read_apart() -> None:
    """What each provider reports of its prompt cache, for pricing (a part of the input tokens)."""
    chat = {"model": "m", "usage": {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55,
            "prompt_tokens_details": {"cached_tokens": 40, "audio_tokens": 0}}}  # fmt: skip
    assert run_tap("openai", JSON, fmt.dumps(chat)).finish() == Usage(50, 5, 55, 40)
    responses = {"type": "response.completed", "response": {"model": "m", "usage": {
        "input_tokens": 50, "output_tokens": 5, "total_tokens": 55,
        "input_tokens_details": {"cached_tokens": 32}}}}  # fmt: skip
    body = sse(("response.completed", responses))
    assert run_tap("openai", SSE, body).finish() == Usage(50, 5, 55, 32)
    meta = {"promptTokenCount": 70, "candidatesTokenCount": 3, "totalTokenCount": 73,
            "cachedContentTokenCount": 64}  # fmt: skip
    body = sse((None, {"usageMetadata": meta, "modelVersion": "g1"}))
    assert run_tap("gemini", SSE, body).finish() == Usage(70, 3, 73, 64)
    # Zero cached tokens (what OpenAI reports without a cache hit) is no cache use.
    chat["usage"]["prompt_tokens_details"] = {"cached_tokens": 0}  # type: ignore[index]
    assert run_tap("openai", JSON, fmt.dumps(chat)).finish() == Usage(50, 5, 55)


def test_anthropic_stream_cut_before_message_delta() -> None:
    body = joined(fmt.anthropic_stream(reply(5, 11)))
    cut = body[: body.index(b"event: message_delta")]
    assert run_tap("anthropic", SSE, cut).finish() == Usage(11, 1, 12)  # what message_start said


@pytest.mark.parametrize("kind", ["response.incomplete", "response.failed"])
def test_responses_incomplete_or_failed_with_usage(kind: str) -> None:
    obj = fmt.response_object(reply(3, 4), True)
    body = sse((kind, {"type": kind, "response": obj, "sequence_number": 1}))
    assert run_tap("openai", SSE, body).finish() == Usage(4, 3, 7)


def test_token_events_are_not_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []
    real = usage_module._loads

    def counting(data: bytes) -> object:
        parsed.append(data)
        return real(data)

    monkeypatch.setattr(usage_module, "_loads", counting)
    for name in ("chat-stream", "responses-stream", "gemini-sse", "anthropic-stream"):
        provider, ctype, build, expect = FORMATS[name]
        parsed.clear()
        r = reply(500)
        assert run_tap(provider, ctype, build(r)).finish() == expect(r)
        # At most: one event for the model name, the usage event(s).
        assert len(parsed) <= 3, (name, len(parsed))


def test_events_without_a_model_name_are_not_all_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Azure's first chunk says "model": ""; a stream that never names its
    # model must not cost a parse per event.
    parsed: list[bytes] = []
    real = usage_module._loads

    def counting(data: bytes) -> object:
        parsed.append(data)
        return real(data)

    monkeypatch.setattr(usage_module, "_loads", counting)
    tap = run_tap("openai", SSE, joined(fmt.chat_stream(reply(300, model="", include_usage=False))))
    assert tap.finish() is None and tap.model is None
    assert len(parsed) <= 3


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(rb'"half an emoji: \ud83d"', id="lone-surrogate-escape"),
        pytest.param(b"NaN", id="nan"),
        pytest.param(b"123456789012345678901234567890", id="integer-past-64-bits-elsewhere"),
    ],
)
def test_a_body_orjson_refuses_still_gives_its_usage(content: bytes) -> None:
    # Read by json instead (proxy/jsonread.py): the usage is not lost.
    body = (
        b'{"model":"gpt-x","choices":[{"message":{"content":' + content + b"}}],"
        b'"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}'
    )
    tap = run_tap("openai", JSON, body)
    assert tap.finish() == Usage(3, 4, 7)
    assert tap.model == "gpt-x"
