"""The server span: one per request that reaches the middleware chain.

A pure ASGI layer, put just inside the Gate (so it sees every layer's
verdict, a 401 from ``auth`` included) and only when tracing is on: with
tracing off it is not in the chain at all. It wraps neither ``receive`` nor
``send``: what it reports, it reads from the request's
:class:`~proxy.context.RequestContext` once the request is over (status,
time to first byte, usage, outcome), the facts the access log and metrics
read too.

* An incoming W3C ``traceparent`` (and ``tracestate``) continues the
  caller's trace; the sampler (by default ``parentbased_always_on``) follows
  the caller's sampled flag.
* The span starts when the request's context was made and carries
  ``sluice.first_byte``, an event at the moment the first body byte left.
* Its status is ERROR when Sluice or the upstream failed the request
  (outcome ``upstream_error``, ``unavailable``, ``aborted``, or any 5xx
  answer), with ``error.type`` saying why (``cut_mid_stream``,
  ``unreachable``, ``headers_timeout``, ``500``, …). A client that left, and
  refusals (4xx: auth, limits, bad paths), are not errors of the server's.
* Secrets stay out: the client key's *name*, the credential's *label*, the
  path without its query string (where a Gemini client may put its key).
"""

from __future__ import annotations

from contextvars import ContextVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .. import context as sluice_context
from ..asgi import ASGIApp, Receive, Scope, Send
from ..context import RequestContext
from ..headers import request_headers
from . import names

# The outcomes that are the server's (or its upstream's) failure.
ERROR_OUTCOMES = frozenset({"upstream_error", "unavailable", "aborted"})

W3C = TraceContextTextMapPropagator()  # W3C trace context only: not OTEL_PROPAGATORS, read by no one


class RequestTrace:
    """What the upstream client span (``client.py``) and the server span share for one request."""

    __slots__ = ("ctx", "recording", "request_model", "span", "upstream_called")

    def __init__(self, ctx: RequestContext, span: trace.Span) -> None:
        self.ctx = ctx
        self.span = span  # the server span
        self.recording = span.is_recording()  # it is sampled: its facts are worth finding
        self.upstream_called = False
        self.request_model: str | None = None  # the model the request named, as the client span read it


CURRENT: ContextVar[RequestTrace | None] = ContextVar("sluice_request_trace", default=None)


def caller_context(scope: Scope) -> Context | None:
    """The caller's trace context from ``traceparent``/``tracestate``, or None (a new trace)."""
    carrier: dict[str, list[str]] | None = None
    for name, value in request_headers(scope):
        if name == b"traceparent" or name == b"tracestate":
            if carrier is None:
                carrier = {}
            carrier.setdefault(name.decode(), []).append(value.decode("latin-1"))
    if carrier is None or "traceparent" not in carrier:
        return None
    return W3C.extract(carrier)


class ServerSpans:
    """Pure ASGI middleware: a SERVER span around the rest of the chain."""

    def __init__(self, app: ASGIApp, tracer: Tracer, vertex_labels: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.tracer = tracer
        self.vertex_labels = vertex_labels  # credentials that make a Gemini request a Vertex AI one

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = sluice_context.http_context(scope)
        if ctx is None:
            await self.app(scope, receive, send)
            return
        parent = caller_context(scope)
        start = int(ctx.started_wall * 1e9)
        # No attributes yet: the standard samplers do not read them, and a
        # span the sampler drops then costs nothing more. They are all set at
        # the end, in one call (each call takes the span's lock).
        span = self.tracer.start_span(
            ctx.method,
            context=parent,
            kind=SpanKind.SERVER,
            start_time=start,
            # Recorded below, once, with the request's own facts.
            record_exception=False,
            set_status_on_exception=False,
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        state = RequestTrace(ctx, span)
        state_token = CURRENT.set(state)
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            span.set_attribute(names.ERROR_TYPE, type(exc).__qualname__)
            raise
        finally:
            CURRENT.reset(state_token)
            otel_context.detach(token)
            if span.is_recording():
                self._finish(span, scope, ctx, state, start)
            span.end()

    def _finish(
        self, span: trace.Span, scope: Scope, ctx: RequestContext, state: RequestTrace, start: int
    ) -> None:
        route = names.route_template(ctx.path)
        span.update_name(f"{ctx.method} {route}")
        attributes: dict[str, str | int | float] = {
            names.METHOD: ctx.method,
            names.ROUTE: route,
            names.URL_PATH: ctx.path,
            names.URL_SCHEME: scope.get("scheme", "http"),
            names.PROTOCOL_VERSION: scope.get("http_version", "1.1"),
            names.REQUEST_ID: ctx.request_id,
            names.OUTCOME: ctx.outcome,
        }
        if ctx.client is not None:
            attributes[names.CLIENT_ADDRESS] = ctx.client
        status = ctx.status
        if status is not None:
            attributes[names.STATUS] = status
        provider = names.provider_name(ctx.provider)
        if ctx.credential is not None:
            attributes[names.CREDENTIAL] = ctx.credential
            if ctx.credential in self.vertex_labels:
                provider = names.VERTEX
        if provider is not None:
            attributes[names.PROVIDER] = provider
        operation = names.operation_name(ctx.path)
        if operation is not None:
            attributes[names.OPERATION] = operation
        # What the request named, as seen before the response; the context's
        # model may since have been filled in from the response.
        request_model = state.request_model if state.upstream_called else ctx.model
        if request_model is not None:
            attributes[names.REQUEST_MODEL] = request_model
        if ctx.model is not None and ctx.model != request_model:
            attributes[names.RESPONSE_MODEL] = ctx.model
        usage = ctx.usage
        if usage is not None:
            if usage.input_tokens is not None:
                attributes[names.INPUT_TOKENS] = usage.input_tokens
            if usage.output_tokens is not None:
                attributes[names.OUTPUT_TOKENS] = usage.output_tokens
        if ctx.cost_usd is not None:
            attributes[names.COST] = ctx.cost_usd
        if ctx.key_name is not None:
            attributes[names.KEY_NAME] = ctx.key_name
        if ctx.upstream_request_id is not None:
            attributes[names.UPSTREAM_REQUEST_ID] = ctx.upstream_request_id
        if ctx.detail is not None:
            attributes[names.DETAIL] = ctx.detail
        if ctx.ttfb is not None:
            span.add_event(names.FIRST_BYTE_EVENT, timestamp=start + int(ctx.ttfb * 1e9))
        if ctx.outcome in ERROR_OUTCOMES or (status is not None and status >= 500):
            reason = ctx.detail or (ctx.outcome if ctx.outcome != "ok" else str(status))
            attributes[names.ERROR_TYPE] = reason
            span.set_status(Status(StatusCode.ERROR, reason))
        span.set_attributes(attributes)
