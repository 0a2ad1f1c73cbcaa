"""The client span: one per upstream attempt, a child of the request's server span.

:class:`TracedClient` wraps the transport's :class:`~proxy.http.Client`
(either mode: it sees only the interface), so the passthrough and the chat
API are traced without a line of tracing in them, and with tracing off the
wrapper is simply not there. Each ``request()`` (a failover's every attempt
too) of a sampled request gets a CLIENT span from just before the request is written until the
response is closed, so it covers the streamed body; it carries the
upstream's host, port, method, URL (without the query string) and status.

Its status is ERROR when no response came (``error.type``: the exception's
kind: ``ConnectFailed``, ``ResponseBroken``, ``TimeoutError``), when the
status is 4xx or 5xx (as the HTTP conventions have it for clients), or when
the stream was cut (``error.type`` from the request's outcome detail). A
cancellation (the client left, or the time to headers ran out) is noted as
an event, not an error of the upstream's.

The upstream gets a ``traceparent`` naming this span (and the caller's
``tracestate``), in place of any the client sent. It is safe to send: two
random ids and a sampled flag, no secret and nothing about the caller, and
only when tracing is on. The big providers ignore it; an OpenAI-compatible
upstream that is itself traced (vLLM, a gateway of your own) joins the trace.

Where the request's model is not yet known (OpenAI and Anthropic name it in
the body, which Sluice does not otherwise parse), a body of at most
:data:`MODEL_SNIFF_LIMIT` bytes that is already whole is read for it: once
per request, and only for a request whose span is sampled.
"""

from __future__ import annotations

import asyncio

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from ..http import Body, Client, Headers, Origin, Response
from ..jsonread import loads
from . import names
from .layer import CURRENT, W3C, RequestTrace

MODEL_SNIFF_LIMIT = 256 * 1024
_PROPAGATED = (b"traceparent", b"tracestate")


def model_from_body(body: Body) -> str | None:
    if not isinstance(body, bytes) or not body or len(body) > MODEL_SNIFF_LIMIT:
        return None
    try:
        document = loads(body)
    except ValueError:
        return None
    model = document.get("model") if isinstance(document, dict) else None
    return model if isinstance(model, str) else None


def _request_attributes(origin: Origin, method: str, target: bytes) -> dict[str, str | int]:
    path = target.partition(b"?")[0].decode("latin-1")  # the query may hold a key
    return {
        names.METHOD: method,
        names.SERVER_ADDRESS: origin.host,
        names.SERVER_PORT: origin.port,
        names.URL_FULL: origin.url + path,
    }


def _propagate(span: Span, headers: Headers) -> Headers:
    carrier: dict[str, str] = {}
    W3C.inject(carrier, trace.set_span_in_context(span))
    out = [pair for pair in headers if pair[0] not in _PROPAGATED]
    out.extend((name.encode(), value.encode("latin-1")) for name, value in carrier.items())
    return out


class TracedClient:
    """A :class:`~proxy.http.Client` whose every request is a CLIENT span."""

    def __init__(self, inner: Client, tracer: Tracer) -> None:
        self.inner = inner
        self.tracer = tracer

    @property
    def is_open(self) -> bool:
        return self.inner.is_open

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def request(
        self,
        origin: Origin,
        method: str,
        target: bytes,
        headers: Headers,
        body: Body = None,
        length: int | None = None,
    ) -> Response:
        state = CURRENT.get()
        if state is not None and not state.recording:
            # The request is not sampled, and the standard samplers decide for
            # a child as for its parent: no span to make, only the decision
            # (sampled=0, with the server span's id) to pass on.
            sent = _propagate(state.span, headers)
            return await self.inner.request(origin, method, target, sent, body, length)
        if state is not None and not state.upstream_called:
            state.upstream_called = True
            state.request_model = state.ctx.model or model_from_body(body)
        # Attributes only once it is known to be recorded (see layer.py).
        span = self.tracer.start_span(method, kind=SpanKind.CLIENT, record_exception=False)
        try:
            sent = _propagate(span, headers)
            response = await self.inner.request(origin, method, target, sent, body, length)
        except asyncio.CancelledError:
            span.add_event("cancelled")
            span.end()
            raise
        except Exception as exc:
            if span.is_recording():
                kind = type(exc).__name__
                span.set_attributes({**_request_attributes(origin, method, target), names.ERROR_TYPE: kind})
                span.set_status(Status(StatusCode.ERROR, kind))
            span.end()
            raise
        if span.is_recording():
            attributes = _request_attributes(origin, method, target)
            attributes[names.STATUS] = response.status
            if response.status >= 400:
                attributes[names.ERROR_TYPE] = str(response.status)
                span.set_status(Status(StatusCode.ERROR, str(response.status)))
            span.set_attributes(attributes)
        return TracedResponse(response, span, state)


class TracedResponse:
    """The upstream's response as it was, whose ``close()`` also ends its span.

    ``read`` and ``header`` are the inner response's own bound methods, so
    reading the body costs nothing more than without tracing.
    """

    __slots__ = ("_inner", "_span", "_state", "header", "headers", "read", "status")

    def __init__(self, inner: Response, span: Span, state: RequestTrace | None) -> None:
        self._inner = inner
        self._span: Span | None = span
        self._state = state
        self.status = inner.status
        self.headers = inner.headers
        self.read = inner.read
        self.header = inner.header

    @property
    def complete(self) -> bool:
        return self._inner.complete

    def close(self) -> None:
        span, self._span = self._span, None
        complete = self._inner.complete
        self._inner.close()
        if span is None:
            return
        if not complete and self.status < 400:
            ctx = self._state.ctx if self._state is not None else None
            if ctx is not None and ctx.outcome == "upstream_error":
                # The passthrough has already said why (cut_mid_stream, idle timeout, …).
                reason = ctx.detail or "upstream_error"
                span.set_attribute(names.ERROR_TYPE, reason)
                span.set_status(Status(StatusCode.ERROR, reason))
            else:
                span.add_event("closed before the body ended")  # the client left, or a shutdown
        span.end()
