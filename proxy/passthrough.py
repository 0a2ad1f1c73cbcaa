"""The hot path: one request in, the same request upstream, the bytes back.

Guarantees, for every request that reaches an upstream:

* The response status, headers (less hop-by-hop ones) and body bytes are the
  upstream's. The body is never decoded, decompressed or re-chunked: each read
  from the upstream is sent to the client as soon as it completes.
* The client's credentials never go upstream; only the server-held key does.
* A client that goes away (even while the upstream is silent) cancels the
  upstream request and closes its connection at once: tokens cost money.
* A stream the upstream cuts short is cut short for the client too: the
  response ends without its terminating chunk, never as if it were complete.
* Memory per request is bounded: a slow client pauses the upstream read
  (uvicorn's ``send`` waits for the socket to drain), and a request body is
  forwarded piece by piece as it arrives, never read whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
from yarl import URL

from .asgi import Receive, Scope, Send
from .config import Settings, Upstream
from .context import NO_ROUTE_MESSAGE, RequestContext, get_or_create_context
from .errors import send_error, upstream_failure
from .headers import client_response_headers, upstream_request_headers
from .routing import Route, strip_query_credentials
from .upstream import UpstreamClient
from .usage import UsageTap

logger = logging.getLogger("sluice.passthrough")


class Passthrough:
    """Raw ASGI endpoint forwarding every request to the provider its path names."""

    def __init__(self, settings: Settings, client: UpstreamClient) -> None:
        self.settings = settings
        self.client = client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            # Provider APIs are plain HTTP; refuse anything else up front.
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        ctx = get_or_create_context(scope)
        provider = ctx.provider or "openai"
        if ctx.path_error is not None or ctx.route is None:
            status, message = ctx.path_error or (404, NO_ROUTE_MESSAGE)
            ctx.outcome, ctx.detail = "bad_request", "bad_path" if status == 400 else "no_route"
            await send_error(send, provider, status, message)  # type: ignore[arg-type]
            return
        upstream = self.settings.upstreams[ctx.route.provider]
        if upstream.api_key is None:
            ctx.outcome, ctx.detail = "unavailable", "no_provider_key"
            message = f"Sluice has no {ctx.route.provider} API key configured; set {upstream.key_setting}."
            await send_error(send, ctx.route.provider, 503, message)
            return
        await _Exchange(self.client.session, scope, receive, send, ctx, ctx.route, upstream).run()


def upstream_url(upstream: Upstream, route: Route, query_string: bytes) -> URL:
    """The base URL from configuration plus the validated path, byte for byte.

    ``encoded=True`` stops yarl from re-quoting what the client sent; the path
    has been validated, so nothing in it can change the origin.
    """
    query = strip_query_credentials(query_string)
    target = upstream.base_url + route.upstream_path
    if query:
        target += "?" + query.decode("latin-1")
    return URL(target, encoded=True)


class _Exchange:
    """Per-request state for one forwarded request. Lives as long as the request."""

    __slots__ = (
        "client_gone",
        "ctx",
        "finished",
        "receive",
        "route",
        "scope",
        "send",
        "session",
        "task",
        "upstream",
        "watcher",
    )

    def __init__(
        self,
        session: aiohttp.ClientSession,
        scope: Scope,
        receive: Receive,
        send: Send,
        ctx: RequestContext,
        route: Route,
        upstream: Upstream,
    ) -> None:
        self.ctx = ctx
        self.session = session
        self.scope = scope
        self.receive = receive
        self.send = send
        self.route = route
        self.upstream = upstream
        self.task = asyncio.current_task()
        self.watcher: asyncio.Future[None] | None = None
        self.client_gone = False
        self.finished = False

    async def run(self) -> None:
        try:
            await self._forward()
        except asyncio.CancelledError:
            if not self.client_gone:
                raise
            # Our own cancellation, because the client left: not an error.
            if self.task is not None:
                self.task.uncancel()
        finally:
            if self.client_gone:
                self.ctx.outcome, self.ctx.detail = "client_disconnected", None
            if self.watcher is not None:
                self.watcher.cancel()

    async def _forward(self) -> None:
        first = await self.receive()
        if first["type"] == "http.disconnect":
            return
        body: bytes = first.get("body", b"")
        self.ctx.bytes_in = len(body)
        data: bytes | AsyncIterator[bytes] | None
        if first.get("more_body", False):
            data = self._stream_body(body)
        else:
            # The whole body is already here (always so for GET and small
            # JSON requests): send it as bytes and start watching right away.
            data = body or None
            self._watch_for_disconnect()

        headers = upstream_request_headers(self.scope["headers"])
        headers.append(self._credential_header())
        url = upstream_url(self.upstream, self.route, self.scope["query_string"])
        try:
            response = await self.session.request(
                self.scope["method"], url, headers=headers, data=data, allow_redirects=False
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            if self.client_gone:
                return
            status, message = upstream_failure(exc, self.route.provider)
            self.ctx.outcome, self.ctx.detail = (
                "upstream_error",
                "timeout" if status == 504 else "unreachable",
            )
            logger.warning(
                "%s %s → %s upstream failed: %s",
                self.scope["method"],
                self.route.upstream_path,
                self.route.provider,
                message,
            )
            await send_error(self.send, self.route.provider, status, message)
            return
        try:
            await self._relay(response)
        finally:
            # Closing (not releasing) an unfinished response drops its
            # connection, which is what tells the upstream to stop generating.
            if not response.content.is_eof():
                response.close()
            else:
                response.release()

    def _credential_header(self) -> tuple[str, str]:
        key = self.upstream.api_key or ""
        if self.route.provider == "gemini":
            return "x-goog-api-key", key  # a header, never ?key=, so it stays out of URLs and logs
        if self.route.provider == "anthropic":
            return "x-api-key", key
        return "Authorization", f"Bearer {key}"

    async def _relay(self, response: aiohttp.ClientResponse) -> None:
        if response.status in (401, 403):
            await self._refused_credential(response.status)
            return
        headers, _is_sse = client_response_headers(response.raw_headers)
        headers = self._note_request_id(headers)
        tap = UsageTap(
            self.route.provider,
            response.headers.get("content-type", "").encode("latin-1"),
            response.headers.get("content-encoding", "").encode("latin-1") or None,
        )
        send = self.send
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        content = response.content
        try:
            while chunk := await content.readany():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                tap.feed(chunk)  # after the send: observing never delays a byte
        except (TimeoutError, aiohttp.ClientError) as exc:
            if self.client_gone:
                return
            # Headers are out, so the only honest signal left is to cut the
            # response short: returning without the final message makes
            # uvicorn close the connection without the terminating chunk.
            self.ctx.outcome = "upstream_error"
            self.ctx.detail = "idle_timeout" if isinstance(exc, TimeoutError) else "cut_mid_stream"
            logger.warning(
                "%s %s → %s upstream failed mid-stream (%s); aborting the client response",
                self.scope["method"],
                self.route.upstream_path,
                self.route.provider,
                exc.__class__.__name__,
            )
            return
        finally:
            # Even a cut or abandoned stream has used tokens: record what was reported.
            self.ctx.usage = tap.finish()
            if tap.model and not self.ctx.model:
                self.ctx.model = tap.model
        self.finished = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _note_request_id(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
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

    async def _refused_credential(self, status: int) -> None:
        # The upstream refused the key Sluice holds. Its body can quote a
        # fragment of that key, so it is not passed on; and a 401 would tell
        # the client that *its* key is wrong, which it is not.
        self.ctx.outcome, self.ctx.detail = "upstream_error", f"credential_refused_{status}"
        logger.warning(
            "%s upstream refused the server-held credential (HTTP %d); check %s",
            self.route.provider,
            status,
            self.upstream.key_setting,
        )
        await send_error(
            self.send,
            self.route.provider,
            502,
            f"The {self.route.provider} upstream refused Sluice's credential (HTTP {status}).",
        )

    async def _stream_body(self, first: bytes) -> AsyncIterator[bytes]:
        """Yield the request body as uvicorn receives it; aiohttp writes each piece upstream."""
        if first:
            yield first
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self._client_left()
                raise ConnectionAbortedError("client disconnected during the upload")
            chunk: bytes = message.get("body", b"")
            if chunk:
                self.ctx.bytes_in += len(chunk)
                yield chunk
            if not message.get("more_body", False):
                break
        self._watch_for_disconnect()

    def _watch_for_disconnect(self) -> None:
        self.watcher = asyncio.ensure_future(self._wait_for_disconnect())

    async def _wait_for_disconnect(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                if not self.finished:
                    self._client_left()
                return

    def _client_left(self) -> None:
        self.client_gone = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
