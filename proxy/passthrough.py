"""The hot path: one request in, the same request upstream, the bytes back.

Guarantees, for every request that reaches an upstream:

* The response status, headers (less hop-by-hop ones) and body bytes are the
  upstream's. The body is never decoded, decompressed or re-chunked: each read
  from the upstream is sent to the client as soon as it completes. The only
  bytes Sluice adds are heartbeats on an idle event stream, between events.
* The client's credentials never go upstream; only the server-held key does.
* A client that goes away (even while the upstream is silent) cancels the
  upstream request and closes its connection at once: tokens cost money.
* A stream the upstream cuts short (or that times out, or outlives the drain
  window) is cut short for the client too: the response ends without its
  terminating chunk, never as if it were complete.
* Memory per request is bounded: a slow client pauses the upstream read
  (the server's ``send`` waits for the socket to drain), and a request body is
  forwarded piece by piece as it arrives, never read whole.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Final, Literal

from .asgi import Message, Receive, Scope, Send
from .body import RequestBody
from .code_assist import Envelope, EnvelopeError, wrap_body
from .config import Settings, Upstream
from .context import NO_ROUTE_MESSAGE, RequestContext, get_or_create_context
from .disconnect import DisconnectWatch
from .drain import Drain
from .envelope import MAX_WRAPPED, UnwrappedBody
from .errors import send_error, upstream_failure
from .headers import client_response_headers, request_headers, upstream_request_headers
from .http import Body, Client, ConnectFailed, Headers, Response, UpstreamError
from .pool import Credential, CredentialPool
from .pump import Heartbeat, StreamTimeout, pump
from .routing import Route
from .usage import UsageTap
from .vertex import TokenError

logger = logging.getLogger("sluice.passthrough")

# Why an exchange cancelled its own task before its end.
StopReason = Literal["client_left", "shutdown", "headers_timeout"]
# How far the answer has got: nothing sent yet; the status went out; the
# final body message is being sent (too late to cut it short); over.
Phase = Literal["request", "response", "ending", "done"]


_PATH_ERROR_DETAIL: Final = {400: "bad_path", 404: "no_route", 405: "bad_method"}
_ALLOWED_METHODS: Final = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


class Passthrough:
    """Raw ASGI endpoint forwarding every request to the provider its path names."""

    def __init__(
        self, settings: Settings, client: Client, drain: Drain, pools: Mapping[str, CredentialPool]
    ) -> None:
        self.settings = settings
        self.client = client
        self.drain = drain
        self.pools = pools
        self.active = 0  # upstream requests in flight in this process

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            # WebSockets are realtime sessions, which Dispatch sends to
            # proxy/realtime; one that reaches here anyway is refused.
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        ctx = get_or_create_context(scope)
        provider = ctx.provider or "openai"
        if ctx.path_error is not None or ctx.route is None:
            status, message = ctx.path_error or (404, NO_ROUTE_MESSAGE)
            ctx.outcome, ctx.detail = "bad_request", _PATH_ERROR_DETAIL[status]
            extra = [(b"allow", _ALLOWED_METHODS)] if status == 405 else ()
            await send_error(send, provider, status, message, extra)  # type: ignore[arg-type]
            return
        upstream = self.settings.upstreams[ctx.route.provider]
        if not upstream.credentials:
            ctx.outcome, ctx.detail = "unavailable", "no_provider_key"
            message = f"Sluice has no {ctx.route.provider} API key configured; set {upstream.key_setting}."
            await send_error(send, ctx.route.provider, 503, message)
            return
        if self.active >= self.settings.pool_size:
            # Refuse at once rather than queue: a queued request holds its
            # client for nothing, and the client's retry can find another worker.
            ctx.outcome, ctx.detail = "unavailable", "overloaded"
            message = f"Sluice is at its limit of {self.settings.pool_size} concurrent upstream requests."
            await send_error(send, ctx.route.provider, 503, message, [(b"retry-after", b"1")])
            return
        exchange = _Exchange(self, scope, receive, send, ctx, ctx.route, upstream)
        self.active += 1
        self.drain.in_flight.add(exchange)
        try:
            await exchange.run()
        finally:
            self.active -= 1
            self.drain.in_flight.discard(exchange)


# What a refusal that is not an HTTP status means, in the client's error.
_REFUSALS = {
    "token": "could not obtain an access token",
    "project": "no Code Assist project",
    "connect": "could not connect",
}


class _Refused(Exception):
    """Every credential tried was refused; ``reason`` is the last status or a word (``_REFUSALS``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _content_length(headers: Headers) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class _Exchange:
    """Per-request state for one forwarded request. Lives as long as the request."""

    __slots__ = (
        "ctx",
        "envelope",
        "loop",
        "owner",
        "phase",
        "receive",
        "route",
        "scope",
        "send",
        "stop",
        "task",
        "upstream",
        "watch",
    )

    def __init__(
        self,
        owner: Passthrough,
        scope: Scope,
        receive: Receive,
        send: Send,
        ctx: RequestContext,
        route: Route,
        upstream: Upstream,
    ) -> None:
        self.owner = owner
        self.scope = scope
        self.receive = receive
        self.send = send
        self.ctx = ctx
        self.route = route
        self.upstream = upstream
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task(self.loop)
        self.watch: DisconnectWatch | None = None
        self.stop: StopReason | None = None
        self.phase: Phase = "request"
        self.envelope: Envelope | None = None  # the answer comes from Code Assist: unwrap it

    async def run(self) -> None:
        try:
            await self._forward()
        except asyncio.CancelledError:
            if self.stop not in ("client_left", "shutdown"):
                raise
            # Our own cancellation: not an error, and not to be propagated.
            if self.task is not None:
                self.task.uncancel()
            if self.stop == "shutdown":
                await self._after_abort()
        finally:
            self.phase = "done"
            if self.stop == "client_left":
                self.ctx.outcome, self.ctx.detail = "client_disconnected", None
            if self.watch is not None:
                self.watch.stop()
                self.watch = None

    def abort(self) -> None:
        """Called by the drain when its window closes."""
        self._stop("shutdown")

    def _stop(self, reason: StopReason) -> None:
        """Cancel this request's task, saying why; the first reason stands."""
        phase = self.phase
        if (
            self.stop is None
            and phase != "ending"
            and phase != "done"
            and self.task is not None
            and not self.task.done()
        ):
            self.stop = reason
            self.task.cancel()

    def _client_left(self) -> None:
        self._stop("client_left")

    def _watch_for_disconnect(self) -> None:
        # Not once the exchange is over: an upload the stock client still
        # sends after the answer ended would start a watch nobody stops.
        if self.watch is None and self.phase != "done":
            self.watch = DisconnectWatch(self.scope, self.receive, self._client_left, self.loop)

    async def _answer_error(self, status: int, message: str, extra: Headers | None = None) -> None:
        self.phase = "response"
        await send_error(self.send, self.route.provider, status, message, extra or ())

    async def _after_abort(self) -> None:
        self.ctx.outcome, self.ctx.detail = "aborted", "drain_timeout"
        if self.phase == "request":
            message = "Sluice is shutting down and could not finish this request in time."
            await self._answer_error(503, message, [(b"retry-after", b"1")])
        # Otherwise: return without the final message, so the response is cut.

    async def _forward(self) -> None:
        first = await self.receive()
        if first["type"] == "http.disconnect":
            self.stop = "client_left"
            return
        # A result, not a test of self.stop: that would narrow its type for
        # the rest of this function, though callbacks change it meanwhile.
        body = await self._request_body(first)
        if body is None:
            return
        data, replayable, length = body
        headers = upstream_request_headers(request_headers(self.scope))
        # Time to headers counts from here, so it includes the upload and any
        # failover attempts: a timer that cancels this task.
        timer = self.loop.call_later(self.owner.settings.headers_timeout, self._stop, "headers_timeout")
        try:
            response = await self._attempts(headers, data, replayable, length)
        except _Refused as refused:
            await self._refused_credential(refused.reason)
            return
        except (UpstreamError, OSError) as exc:
            if self.stop != "client_left":
                await self._failed_before_response(exc)
            return
        except asyncio.CancelledError:
            if self.stop != "headers_timeout" or self.task is None:
                raise
            self.task.uncancel()
            await self._failed_before_response(TimeoutError())
            return
        finally:
            timer.cancel()
        if response is None:
            return
        try:
            await self._relay(response)
        finally:
            # Closing an unfinished response drops its connection, which is
            # what tells the upstream to stop generating.
            response.close()

    async def _request_body(self, first: Message) -> tuple[Body, bool, int | None] | None:
        """The body to send, whether it can be sent again on another credential,
        and a streamed body's declared length.

        None if the client left before the body was whole.
        """
        body: bytes = first.get("body", b"")
        settings = self.owner.settings
        self.ctx.bytes_in = len(body)
        if not first.get("more_body", False):
            # The whole body is already here (always so for GET and small
            # JSON requests): send it as bytes and start watching right away.
            self._watch_for_disconnect()
            return body or None, len(body) <= settings.retry_body_limit, None
        declared = _content_length(request_headers(self.scope))
        pool = self.owner.pools[self.route.provider]
        retries_possible = len(pool.credentials) > 1 or settings.connect_retries > 0
        if declared is None or declared > settings.retry_body_limit or not retries_possible:
            # Streamed through with the client's Content-Length (or chunked
            # without one), and so never sent twice (README).
            upload = RequestBody(self.receive, body, self.ctx, self._watch_for_disconnect, self._client_left)
            return upload, False, declared
        # Small enough to keep for a retry: read it whole first.
        parts = [body]
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.stop = "client_left"  # our own task: return, don't cancel ourselves
                return None
            parts.append(message.get("body", b""))
            self.ctx.bytes_in += len(parts[-1])
            if not message.get("more_body", False):
                break
        self._watch_for_disconnect()
        return b"".join(parts), True, None

    async def _attempts(
        self, headers: Headers, data: Body, replayable: bool, length: int | None
    ) -> Response | None:
        """Try the pool's credentials in order until one gets a response worth relaying.

        Before any byte reaches the client only: a refused credential (401/403,
        or no token) moves on to the next, a 429 cools the credential and moves
        on, and a connection that could not be made is retried with backoff.
        """
        pool = self.owner.pools[self.route.provider]
        candidates = pool.candidates(self.route, self.scope["query_string"])
        if not candidates:
            self.ctx.outcome, self.ctx.detail = "bad_request", "no_credential_for_path"
            await self._answer_error(400, pool.unserved_reason(self.route))
            return None
        client, settings = self.owner.client, self.owner.settings
        method: str = self.scope["method"]
        index, connect_failures = 0, 0
        while True:
            cred, destination = candidates[index]
            last = index == len(candidates) - 1
            try:
                auth = await cred.auth_header()
            except TokenError as exc:
                pool.refused(cred, exc.reason)
                if last:
                    raise _Refused(exc.reason) from None
                index += 1
                continue
            envelope = destination.envelope
            sent, sent_length, sent_headers = data, length, headers
            if envelope is not None:
                try:
                    sent, sent_length, sent_headers = self._enveloped(cred, envelope, headers, data, length)
                except EnvelopeError as exc:
                    self.ctx.outcome, self.ctx.detail = "bad_request", "code_assist_body"
                    await self._answer_error(400, f"{exc}.")
                    return None
            try:
                response = await client.request(
                    destination.origin, method, destination.target, [*sent_headers, auth], sent, sent_length
                )
            except ConnectFailed:
                # The request never reached the upstream: safe to send again.
                if envelope is not None and replayable and not last:
                    pool.refused(cred, "connect")  # Code Assist unreachable: on to the next, stickily
                    index += 1
                    continue
                connect_failures += 1
                if not replayable or connect_failures > settings.connect_retries:
                    raise
                await asyncio.sleep(min(0.1 * 2 ** (connect_failures - 1), 2.0))
                index = (index + 1) % len(candidates)
                continue
            if pool.judge(cred, response):
                if replayable and not last:
                    response.close()
                    index += 1
                    continue
                if response.status != 429:  # refused, and nowhere else to go
                    response.close()
                    raise _Refused(str(response.status))
                # A 429 with nowhere else to go reaches the client, retry-after intact.
            self.ctx.credential = cred.label
            self.envelope = envelope
            return response

    def _enveloped(
        self, cred: Credential, envelope: Envelope, headers: Headers, data: Body, length: int | None
    ) -> tuple[Body, int | None, Headers]:
        """The request as Code Assist takes it: the body wrapped, the answer uncompressed."""
        project = cred.code_assist.project if cred.code_assist is not None else None
        body, size = wrap_body(envelope, project or "", data, length)
        # The answer is rewritten on its way back, so it must come uncompressed.
        plain = [(n, v) for n, v in headers if n != b"accept-encoding"]
        plain.append((b"accept-encoding", b"identity"))
        return body, size, plain

    async def _failed_before_response(self, exc: BaseException) -> None:
        status, message, kind = upstream_failure(exc, self.route.provider)
        self.ctx.outcome, self.ctx.detail = ("unavailable" if status == 503 else "upstream_error"), kind
        logger.warning(
            "%s %s → %s upstream failed: %s",
            self.scope["method"],
            self.route.upstream_path,
            self.route.provider,
            message,
        )
        await self._answer_error(status, message, [(b"retry-after", b"1")] if status == 503 else None)

    async def _relay(self, response: Response) -> None:
        headers, is_sse = client_response_headers(response.headers)
        headers = self._note_request_id(headers)
        body: Response | UnwrappedBody = response
        envelope = self.envelope
        if envelope is not None and envelope.unwrap != "none" and 200 <= response.status < 300:
            # Code Assist's answer, unwrapped as it streams: its length changes.
            body = UnwrappedBody(response, is_sse, MAX_WRAPPED)
            headers = [(n, v) for n, v in headers if n != b"content-length"]
        tap = UsageTap(
            self.route.provider,
            response.header(b"content-type") or b"",
            response.header(b"content-encoding") or None,
        )
        settings = self.owner.settings
        heartbeat = None
        if is_sse and self.upstream.heartbeat != "off":
            heartbeat = Heartbeat(self.upstream.heartbeat, self.upstream.heartbeat_interval)
        deadline = None
        if settings.stream_deadline is not None:
            # The deadline counts from the start of the request, not of the body.
            elapsed = time.monotonic() - self.ctx.started
            deadline = self.loop.time() + settings.stream_deadline - elapsed
        self.phase = "response"
        await self.send({"type": "http.response.start", "status": response.status, "headers": headers})
        tail = b""
        try:
            tail = await pump(
                body,
                self.send,
                tap,
                idle=settings.read_timeout,
                deadline=deadline,
                heartbeat=heartbeat,
                loop=self.loop,
            )
            # The body's last piece goes with the final message: one send less
            # (a whole small JSON answer is one send).
            self.phase = "ending"
            await self.send({"type": "http.response.body", "body": tail, "more_body": False})
        except (StreamTimeout, UpstreamError, OSError) as exc:
            if self.stop is None and self.phase != "ending":
                self._cut(exc)
        finally:
            # Even a cut or abandoned stream has used tokens: record what was reported.
            tap.feed(tail)
            self.ctx.usage = tap.finish()
            if tap.model and not self.ctx.model:
                self.ctx.model = tap.model

    def _cut(self, exc: BaseException) -> None:
        # Headers are out, so the only honest signal left is to cut the
        # response short: returning without the final message makes
        # the server close the connection without the terminating chunk.
        self.ctx.outcome = "upstream_error"
        self.ctx.detail = exc.kind if isinstance(exc, StreamTimeout) else "cut_mid_stream"
        logger.warning(
            "%s %s → %s upstream stream failed (%s); aborting the client response",
            self.scope["method"],
            self.route.upstream_path,
            self.route.provider,
            self.ctx.detail,
        )

    def _note_request_id(self, headers: Headers) -> Headers:
        """Keep the provider's request id, renamed where Sluice's own X-Request-ID goes."""
        out = []
        for name, value in headers:
            if name == b"x-request-id":
                self.ctx.upstream_request_id = value.decode("latin-1")
                out.append((b"x-upstream-request-id", value))
                continue
            if name == b"request-id":
                self.ctx.upstream_request_id = value.decode("latin-1")
            out.append((name, value))
        return out

    async def _refused_credential(self, reason: str) -> None:
        # The upstream refused the credential Sluice holds (or no token could
        # be had), and no other one could take over. The upstream's body can
        # quote a fragment of the key, so it is not passed on; and a 401 would
        # tell the client that *its* key is wrong, which it is not.
        self.ctx.outcome, self.ctx.detail = "upstream_error", f"credential_refused_{reason}"
        logger.warning(
            "%s: no server-held credential was accepted (last: %s); check %s",
            self.route.provider,
            reason,
            self.upstream.key_setting,
        )
        detail = _REFUSALS.get(reason, f"HTTP {reason}")
        await self._answer_error(
            502, f"The {self.route.provider} upstream refused Sluice's credentials ({detail})."
        )
