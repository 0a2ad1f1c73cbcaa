"""One generation: the upstream call, run as a background task that outlives its clients.

A generation belongs to no client connection. It writes its events to the
store; connections read them from there, as many times and from wherever
they like. That is what makes a reconnect lossless: the upstream never
notices that the browser's Wi-Fi dropped.

It ends in one of three ways, and always with a terminal event (``done`` or
``error``) stored last:

* the provider finishes (``done`` with the finish reason) or fails (``error``);
* it is cancelled: by ``POST /api/chat/{id}/cancel`` (from any instance), when
  no client has been attached for the grace period, or at shutdown. The
  upstream request is closed at once, which is what makes the provider stop
  generating (and billing); ``done`` then says ``cancelled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from ..code_assist import wrap_body
from ..config import Settings
from ..context import Usage
from ..envelope import MAX_WRAPPED, UnwrappedBody
from ..errors import upstream_failure
from ..http import Body, Client, Response, UpstreamError
from ..pool import CredentialPool
from ..vertex import TokenError
from .events import ChatEvent, EventType
from .providers import Failure, Finish, NativeRequest, StreamDecoder, Text, http_failure, native_request
from .request import ChatRequest
from .store import EventStore, GenerationGone, StoreUnavailable

logger = logging.getLogger("sluice.chat")

CancelReason = Literal["request", "client_gone", "shutdown"]
_ERROR_BODY_CAP = 64 * 1024


class Generation:
    def __init__(
        self,
        generation_id: str,
        request: ChatRequest,
        *,
        settings: Settings,
        store: EventStore,
        client: Client,
        pool: CredentialPool,
        extra_headers: dict[str, str],
        on_unclaimed_usage: Callable[[Usage], Awaitable[None]],
    ) -> None:
        self.id = generation_id
        self.request = request
        self.settings = settings
        self.store = store
        self._client = client
        self._pool = pool
        self._extra_headers = extra_headers
        self._on_unclaimed_usage = on_unclaimed_usage
        self.seq = 0
        self.usage: Usage | None = None
        self.cancel_reason: CancelReason | None = None
        self.task: asyncio.Task[None] | None = None
        self._upstream: asyncio.Task[Finish | Failure] | None = None
        self._decoder: StreamDecoder | None = None

    # ------------------------------------------------------------- control
    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self._run(), name=f"sluice-chat-{self.id}")
        return self.task

    def cancel(self, reason: CancelReason) -> None:
        """Stop the upstream call now; the generation then stores ``done: cancelled``."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        if self._upstream is not None:
            self._upstream.cancel()

    def abort(self) -> None:
        """Called by the drain when its window closes."""
        self.cancel("shutdown")

    @property
    def done(self) -> bool:
        return self.task is not None and self.task.done()

    # ----------------------------------------------------------------- run
    async def _run(self) -> None:
        req = self.request
        try:
            await self._emit("start", {"generation": self.id, "provider": req.provider, "model": req.model})
            if self.cancel_reason is None:
                self._upstream = asyncio.create_task(self._stream())
                watcher = asyncio.create_task(self._watch_clients())
                await asyncio.wait([self._upstream])
                watcher.cancel()
            await self._finish()
        except (StoreUnavailable, GenerationGone) as exc:
            # Without the store nobody can read what we would write: stop paying for it.
            logger.warning("chat generation %s stopped: its event store failed (%s)", self.id, exc)
            if self._upstream is not None:
                self._upstream.cancel()
            return

    async def _finish(self) -> None:
        outcome: Finish | Failure | None = None
        upstream = self._upstream
        if upstream is not None and not upstream.cancelled():
            try:
                outcome = upstream.result()
            except (StoreUnavailable, GenerationGone):
                raise
            except Exception as exc:  # a bug, not the provider: still end the stream properly
                logger.exception("chat generation %s failed", self.id)
                outcome = Failure("internal", f"Sluice failed: {type(exc).__name__}.", True)
        if self._decoder is not None:
            self.usage = self._decoder.usage()
        if self.usage is not None:
            await self._emit("usage", usage_data(self.usage))
        if isinstance(outcome, Failure):
            data: dict[str, Any] = {"code": outcome.code, "message": outcome.message}
            await self._emit("error", {**data, "retryable": outcome.retryable, "status": outcome.status})
        elif isinstance(outcome, Finish):
            await self._emit("done", {"reason": outcome.reason, "provider_reason": outcome.provider_reason})
        else:
            by = self.cancel_reason or "shutdown"
            await self._emit("done", {"reason": "cancelled", "provider_reason": None, "cancelled_by": by})
        await self.store.finish(self.id)

    async def account_later(self) -> None:
        # A client that receives the usage event claims it, and its request
        # accounts the tokens (access log, TPM). If none has within the grace
        # period, nobody is coming: account them here, so leaving early
        # never makes tokens free.
        assert self.usage is not None
        await asyncio.sleep(self.settings.chat.grace + 1.0)
        with contextlib.suppress(StoreUnavailable):
            if await self.store.claim_usage(self.id):
                await self._on_unclaimed_usage(self.usage)

    async def _emit(self, kind: EventType, data: dict[str, Any]) -> None:
        self.seq += 1
        await self.store.append(self.id, ChatEvent(self.seq, kind, data))

    async def _watch_clients(self) -> None:
        """Cancel when asked to (another instance may have been asked), or when nobody watches."""
        grace = self.settings.chat.grace
        period = min(max(grace / 4, 0.05), 1.0)
        last_watched = time.monotonic()
        while True:
            await asyncio.sleep(period)
            try:
                watchers, cancel = await self.store.tick(self.id)
            except StoreUnavailable:
                continue  # the next append will tell whether the store is really gone
            now = time.monotonic()
            if cancel:
                self.cancel("request")
            elif watchers:
                last_watched = now
            elif now - last_watched >= grace:
                self.cancel("client_gone")

    # ------------------------------------------------------------ upstream
    async def _stream(self) -> Finish | Failure:
        settings, req = self.settings, self.request
        native = native_request(req, self._extra_headers)
        try:
            async with asyncio.timeout(settings.stream_deadline):
                async with asyncio.timeout(settings.headers_timeout):
                    response = await self._post(native)
                if response is None:
                    return Failure("credentials", f"Sluice has no usable {req.provider} credential.", False)
                try:
                    return await self._relay(response)
                finally:
                    # An unfinished response drops its connection: that is
                    # what tells the provider to stop.
                    response.close()
        except TimeoutError:
            return Failure("timeout", f"The {req.provider} upstream did not answer in time.", True)
        except (UpstreamError, OSError) as exc:
            if self._decoder is not None:  # the stream had begun
                return Failure("stream_cut", f"The {req.provider} stream was cut short.", True)
            _status, message, kind = upstream_failure(exc, req.provider)
            code = {"overloaded": "overloaded", "connect_timeout": "timeout"}.get(kind, "unreachable")
            return Failure(code, message, True, None)

    async def _post(self, native: NativeRequest) -> Response | None:
        """Post on the pool's credentials in order, failing over as the passthrough does.

        Nothing has reached the client yet, so a refused (401/403) or
        rate-limited (429) credential hands the request to the next one; the
        last one's answer is kept, and becomes the generation's error event.
        """
        candidates = self._pool.candidates(native.route, native.query)
        headers = [
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in native.headers.items()
        ]
        response: Response | None = None
        for index, (cred, destination) in enumerate(candidates):
            last = index == len(candidates) - 1
            try:
                auth = await cred.auth_header()
            except TokenError as exc:
                self._pool.refused(cred, exc.reason)
                continue
            body: Body = native.body
            sent_headers = headers
            envelope, project = destination.envelope, cred.code_assist and cred.code_assist.project
            if envelope is not None:  # Code Assist: the body wrapped, the answer unwrapped
                body = wrap_body(envelope, project or "", native.body, None)[0]
                sent_headers = [h for h in headers if h[0] != b"accept-encoding"]
                sent_headers.append((b"accept-encoding", b"identity"))
            response = await self._client.request(
                destination.origin, "POST", destination.target, [*sent_headers, auth], body
            )
            if not self._pool.judge(cred, response):
                if envelope is not None and 200 <= response.status < 300:
                    return UnwrappedBody(response, True, MAX_WRAPPED)
                return response
            if not last:
                response.close()
        return response

    async def _relay(self, response: Response) -> Finish | Failure:
        provider = self.request.provider
        content_type = (response.header(b"content-type") or b"").decode("latin-1")
        if response.status >= 400:
            return http_failure(provider, response.status, await _read_some(response))
        if not content_type.lower().startswith("text/event-stream"):
            message = f"The {provider} upstream answered {response.status} without an event stream."
            return Failure("upstream_error", message, True, response.status)
        decoder = self._decoder = StreamDecoder(provider, content_type)
        loop = asyncio.get_running_loop()
        idle = self.settings.read_timeout
        while True:
            chunk = await response.read(loop.time() + idle)
            if not chunk:
                break
            for item in decoder.feed(chunk):
                if isinstance(item, Text):
                    await self._emit("token", {"text": item.text})
                elif isinstance(item, Failure):
                    return item
        if decoder.finish is not None:
            return decoder.finish
        if decoder.complete:  # an end marker without a finish reason
            return Finish("other", "")
        return Failure("stream_cut", f"The {provider} stream ended before its end marker.", True)


def usage_data(usage: Usage) -> dict[str, int | None]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total,
    }


async def _read_some(response: Response) -> bytes:
    """The start of an error body, at most ``_ERROR_BODY_CAP`` bytes and five seconds' worth."""
    body = bytearray()
    deadline = asyncio.get_running_loop().time() + 5.0
    with contextlib.suppress(UpstreamError, OSError, TimeoutError):
        while len(body) < _ERROR_BODY_CAP:
            chunk = await response.read(deadline)
            if not chunk:
                break
            body += chunk
    return bytes(body[:_ERROR_BODY_CAP])
