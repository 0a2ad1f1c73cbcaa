"""Token usage read from a response body as it passes through.

:class:`UsageTap` is handed every body chunk the proxy forwards, in order, and
reads the usage the provider itself reported: from the SSE events of a stream,
or from the JSON body of a plain response. It only observes: the chunks are
never changed, and none is kept after ``feed`` returns.

Guarantees:

* ``feed`` and ``finish`` never raise. Anything unexpected (corrupt
  compression, a body past the bounds, a bug) turns the tap off and
  ``finish`` returns ``None``: usage unknown, the response untouched.
* Memory is bounded by ``max_body_bytes``: a JSON body is kept up to that size,
  an SSE event up to that size, and decompressed output is produced in 64 KiB
  steps (a zip bomb is abandoned, never inflated whole).
* Cheap on streams: an event is parsed as JSON only when a substring test says
  it can carry usage (or, once, the model name). Gemini repeats its usage on
  every event, so only the last such event is kept and parsed at ``finish``.
"""

from __future__ import annotations

import importlib
import re
import zlib
from collections.abc import Callable
from typing import Any, Final, Literal

from .context import Usage
from .jsonread import loads
from .sse import SseEvent, SseScanner

__all__ = ["UsageTap"]

Provider = Literal["openai", "gemini", "anthropic"]
Sink = Callable[[bytes, int], None]  # (decompressed piece, compressed bytes it came from)

_STEP: Final = 64 * 1024  # decompressed bytes produced at a time
# Past max_body_bytes of output, more than this many decompressed bytes per
# compressed byte means a bomb: real SSE streams compress 5-40x, zeros 1000x.
_MAX_RATIO: Final = 200
# "usage" followed by an object, not null: OpenAI puts "usage":null on every
# chunk when include_usage is on. Inside a JSON string the quotes would be
# escaped, so text the model writes cannot match.
_USAGE_OBJECT: Final = re.compile(rb'"usage"\s*:\s*\{')
_ANTHROPIC_USAGE_EVENTS: Final = frozenset({b"message_start", b"message_delta"})
_MODEL_KEYS: Final = {"openai": b'"model"', "gemini": b'"modelVersion"', "anthropic": b'"model"'}
_NEEDLES: Final = {"openai": b'"usage"', "gemini": b'"usageMetadata"', "anthropic": b'"usage"'}


class _GiveUp(Exception):
    """The body cannot be read within bounds; its usage stays unknown."""


class UsageTap:
    """Reads the token usage (and model name) a provider reports in a response body."""

    def __init__(
        self,
        provider: Provider,
        content_type: bytes | None,
        content_encoding: bytes | None,
        *,
        max_body_bytes: int = 4 << 20,
    ) -> None:
        self.model: str | None = None
        self._max = max_body_bytes
        self._usage: Usage | None = None
        self._pending: bytes | None = None  # Gemini: the last event with usageMetadata
        self._body: bytearray | None = None
        self._scanner: SseScanner | None = None
        self._doc_usage = _DOC_USAGE[provider]
        self._provider = provider  # which of the _<provider>_event methods reads its events
        self._model_key = _MODEL_KEYS[provider]
        self._needle = _NEEDLES[provider]  # in every event that can carry usage
        self._model_tries = 2  # events parsed only to learn the model name
        self._in = self._out = 0  # compressed bytes fed, decompressed bytes produced
        self._failed = self._done = False
        # Which of _take_json and _take_sse reads the body is decided by
        # _scanner in _take: a bound method kept in an attribute would make
        # every tap a reference cycle, freed only by the cyclic collector.
        self._decode: Callable[[bytes], None] | None = None
        kind = _media_kind(content_type)
        self._off = kind is None  # audio, files, text…: nothing to read, feed returns at once
        if kind == "sse":
            self._scanner = SseScanner(max_event_bytes=max_body_bytes)
        elif kind == "json":
            self._body = bytearray()
        if kind is not None and content_encoding:
            try:
                self._decode = _decoder(content_encoding, self._take_decoded)
            except _GiveUp:
                self._off = True

    def feed(self, chunk: bytes) -> None:
        """Observe the next body chunk, exactly as it goes to the client."""
        if self._off:
            return
        try:
            if self._decode is None:
                self._take(chunk)
            else:
                self._decode(chunk)
        except Exception:  # a tap must never break the response it watches
            self._give_up()

    def observe(self, event: SseEvent) -> None:
        """Read one event of an event stream the caller has already scanned.

        For callers that parse the stream themselves (the chat API): the
        stream is then scanned once, not once by each reader.
        """
        if self._off:
            return
        try:
            self._look(event)
        except Exception:  # a tap must never break the response it watches
            self._give_up()

    def finish(self) -> Usage | None:
        """The usage the provider reported, once the last chunk was fed; ``None``
        if it reported none or the body could not be read."""
        if not self._done:
            self._done = True
            self._off = True
            # A decoder holds self._take_decoded: dropping it ends that cycle.
            self._decode = None
            try:
                self._finish()
            except Exception:
                self._give_up()
        return None if self._failed else self._usage

    def _finish(self) -> None:
        if self._body:
            body, self._body = self._body, None
            self._read_document(loads(body))
        if self._pending is not None:
            obj, self._pending = _loads(self._pending), None
            self._read_model(obj)
            self._usage = _gemini_usage(obj) or self._usage

    def _give_up(self) -> None:
        self._failed = self._off = True
        self._body = self._pending = None
        self._scanner = None
        self._decode = None

    # --------------------------------------------------------------- input
    def _take_decoded(self, piece: bytes, consumed: int) -> None:
        self._in += consumed
        self._out += len(piece)
        if self._out > self._max and self._out > _MAX_RATIO * self._in:
            raise _GiveUp("decompression bomb")
        self._take(piece)

    def _take(self, data: bytes) -> None:
        """The (decompressed) body, to the reader its kind needs."""
        if self._scanner is None:
            self._take_json(data)
        else:
            self._take_sse(data)

    def _take_json(self, data: bytes) -> None:
        assert self._body is not None
        if len(self._body) + len(data) > self._max:
            raise _GiveUp("body larger than max_body_bytes")
        self._body += data

    def _take_sse(self, data: bytes) -> None:
        assert self._scanner is not None
        for event in self._scanner.feed(data):
            self._look(event)

    def _look(self, event: SseEvent) -> None:
        # One substring scan skips the token events, which are nearly all.
        # rfind: where usage appears it is near the end, so a hit costs less.
        if event.data.rfind(self._needle) >= 0:
            _EVENT_READERS[self._provider](self, event)
        if self.model is None and self._model_tries and event.data.find(self._model_key) != -1:
            self._model_tries -= 1
            self._read_model(_loads(event.data))

    # ----------------------------------------------------- events by provider
    def _openai_event(self, event: SseEvent) -> None:
        # Chat completions: the last chunk (include_usage; every other chunk
        # ends in "usage":null); Responses: response.completed / incomplete / failed.
        if not event.data.endswith(b'"usage":null}') and _USAGE_OBJECT.search(event.data):
            obj = _loads(event.data)
            self._read_model(obj)
            self._usage = _openai_usage(obj) or self._usage

    def _gemini_event(self, event: SseEvent) -> None:
        self._pending = event.data  # cumulative: only the last one counts

    def _anthropic_event(self, event: SseEvent) -> None:
        if event.event in _ANTHROPIC_USAGE_EVENTS or not event.event:
            obj = _loads(event.data)
            self._read_model(obj)
            self._usage = _anthropic_usage(obj, self._usage)

    # ------------------------------------------------------------ documents
    def _read_document(self, doc: object) -> None:
        if isinstance(doc, list):  # Gemini's streamGenerateContent without alt=sse
            found = [el for el in doc if isinstance(el, dict) and "usageMetadata" in el]
            doc = found[-1] if found else None
        if not isinstance(doc, dict):
            return
        self._read_model(doc)
        self._usage = self._doc_usage(doc)

    def _read_model(self, obj: object) -> None:
        if not isinstance(obj, dict):
            return
        for holder in (obj, obj.get("response"), obj.get("message")):
            if isinstance(holder, dict):
                name = holder.get("model", holder.get("modelVersion"))
                if isinstance(name, str) and name:
                    self.model = name
                    return


# The event reader per provider, looked up when an event may carry usage
# rather than bound (f-string and getattr) for every response.
_EVENT_READERS: Final[dict[str, Callable[[UsageTap, SseEvent], None]]] = {
    "openai": UsageTap._openai_event,
    "gemini": UsageTap._gemini_event,
    "anthropic": UsageTap._anthropic_event,
}


# ----------------------------------------------------------- usage shapes
def _openai_usage(obj: object) -> Usage | None:
    if not isinstance(obj, dict):
        return None
    usage, response = obj.get("usage"), obj.get("response")
    if not isinstance(usage, dict) and isinstance(response, dict):
        usage = response.get("usage")  # a Responses stream event
    if not isinstance(usage, dict):
        return None
    # Chat and embeddings say prompt/completion; Responses says input/output.
    inp = _int(usage, "prompt_tokens", "input_tokens")
    out = _int(usage, "completion_tokens", "output_tokens")
    found = _usage(inp, out, _int(usage, "total_tokens"))
    # Cached prompt tokens (a part of the input, priced lower).
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    if found is not None and isinstance(details, dict):
        found.cache_read_tokens = _int(details, "cached_tokens") or None
    return found


def _gemini_usage(obj: object) -> Usage | None:
    meta = obj.get("usageMetadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        return None
    # Thinking tokens are billed as output but counted apart from candidates.
    out = _sum(_int(meta, "candidatesTokenCount"), _int(meta, "thoughtsTokenCount"))
    found = _usage(_int(meta, "promptTokenCount"), out, _int(meta, "totalTokenCount"))
    if found is not None:  # context-cache hits, a part of promptTokenCount
        found.cache_read_tokens = _int(meta, "cachedContentTokenCount") or None
    return found


def _anthropic_usage(obj: object, before: Usage | None = None) -> Usage | None:
    if not isinstance(obj, dict):
        return before
    message = obj.get("message")  # message_start wraps the message
    usage = (message if isinstance(message, dict) else obj).get("usage")
    if not isinstance(usage, dict):
        return before
    # Cache reads and writes are input tokens too, reported apart.
    inp = _int(usage, "input_tokens")
    read, write = _int(usage, "cache_read_input_tokens"), _int(usage, "cache_creation_input_tokens")
    if inp is not None:
        inp += (read or 0) + (write or 0)
    elif before is not None:
        inp, read, write = before.input_tokens, before.cache_read_tokens, before.cache_write_tokens
    out = _int(usage, "output_tokens")  # cumulative in message_delta
    if out is None and before is not None:
        out = before.output_tokens
    total = inp + out if inp is not None and out is not None else None
    found = _usage(inp, out, total)
    if found is None:
        return before
    found.cache_read_tokens, found.cache_write_tokens = read or None, write or None
    return found


def _usage(inp: int | None, out: int | None, total: int | None) -> Usage | None:
    if inp is None and out is None and total is None:
        return None
    return Usage(input_tokens=inp, output_tokens=out, total_tokens=total)


def _int(obj: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = obj.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _sum(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else (a or 0) + (b or 0)


def _loads(data: bytes) -> object:
    try:
        return loads(data)
    except ValueError:  # a malformed event costs its own usage, not the stream's
        return None


_DOC_USAGE: Final[dict[str, Callable[[object], Usage | None]]] = {
    "openai": _openai_usage,
    "gemini": _gemini_usage,
    "anthropic": _anthropic_usage,
}


def _media_kind(content_type: bytes | None) -> Literal["sse", "json"] | None:
    if not content_type:
        return None
    media = content_type.split(b";", 1)[0].strip().lower()
    if media == b"text/event-stream":
        return "sse"
    if media == b"application/json" or media.endswith(b"+json"):
        return "json"
    return None


# ---------------------------------------------------------------- decoding
def _decoder(encoding: bytes | None, sink: Sink) -> Callable[[bytes], None] | None:
    """A function inflating the body on the side, or None when it is not compressed.

    Raises _GiveUp for an encoding that cannot be read (unknown, stacked, or
    its optional module missing)."""
    name = (encoding or b"").strip().lower()
    if name in (b"", b"identity"):
        return None
    if name in (b"gzip", b"x-gzip"):
        return _Inflate(sink, zlib.MAX_WBITS | 16).feed
    if name == b"deflate":
        return _Inflate(sink, None).feed
    if name == b"br":
        return _brotli(sink)
    if name == b"zstd":
        return _Zstd(sink).feed
    raise _GiveUp("unreadable content-encoding")


class _Inflate:
    """gzip, zlib or raw deflate, inflated at most _STEP bytes at a time."""

    __slots__ = ("_d", "_head", "_sink")

    def __init__(self, sink: Sink, wbits: int | None) -> None:
        self._sink = sink
        self._head = b""
        self._d = None if wbits is None else zlib.decompressobj(wbits)

    def feed(self, data: bytes) -> None:
        if self._d is None:
            # "deflate" means zlib-wrapped (RFC 9110), but some servers send it
            # raw: the two-byte zlib header tells them apart.
            data, self._head = self._head + data, b""
            if len(data) < 2:
                self._head = data
                return
            wrapped = data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0
            self._d = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        d = self._d
        while not d.eof:  # bytes after the end of the stream are ignored
            out = d.decompress(data, _STEP)
            rest = d.unconsumed_tail
            self._sink(out, len(data) - len(rest))
            if not rest and len(out) < _STEP:
                return
            data = rest


def _brotli(sink: Sink) -> Callable[[bytes], None]:
    d = _optional("brotli").Decompressor()
    if not hasattr(d, "can_accept_more_data"):
        raise _GiveUp("brotli < 1.2 cannot bound its output")

    def feed(data: bytes) -> None:
        out = d.process(data, output_buffer_limit=_STEP)
        sink(out, len(data))
        while out:  # the rest of what this input holds, one bounded step at a time
            out = d.process(b"", output_buffer_limit=_STEP)
            sink(out, 0)

    return feed


class _Zstd:
    """zstandard's stream_writer hands its file (a _ZstdOut) at most _STEP bytes at a time.

    The writer is not seen by the cyclic collector, so nothing it holds may
    lead back to it: a cycle through it would never be freed. Its file is not
    this object, and holds the sink only during ``feed``.
    """

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._out = _ZstdOut()
        self._writer = _optional("zstandard").ZstdDecompressor().stream_writer(self._out, write_size=_STEP)

    def feed(self, data: bytes) -> None:
        out = self._out
        out.consumed += len(data)
        out.sink = self._sink
        try:
            self._writer.write(data)
        finally:
            out.sink = None


class _ZstdOut:
    __slots__ = ("consumed", "sink")

    def __init__(self) -> None:
        self.sink: Sink | None = None
        self.consumed = 0

    def write(self, piece: bytes) -> int:
        if self.sink is not None:
            self.sink(piece, self.consumed)
        self.consumed = 0
        return len(piece)


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise _GiveUp(f"{module} is not installed") from None
