"""Sluice's provider-neutral chat API, mounted under ``/api/`` behind the middleware chain.

========================================  =====================================================
``POST /api/chat``                        start a generation (JSON body); an event stream back
``GET /api/chat?model=…&prompt=…``        the same from a query string, for ``EventSource``
``GET /api/chat`` + ``Last-Event-ID``     resume that generation after that event
``POST /api/chat/{id}/cancel``            stop a generation and its upstream call
``GET /api/chat/models``                  the models and aliases this key may use
``GET /api/chat/schema``                  the JSON Schema of the events
========================================  =====================================================

Auth has already checked the client key (when keys are enforced); this app
checks the provider and model, which only it can read, and that resuming or
cancelling is done with the key that started the generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from ..asgi import Receive, Scope, Send
from ..body import read_body
from ..context import RequestContext, Usage, get_or_create_context
from ..keys import ClientKey
from .events import is_generation_id, new_generation_id, parse_event_id
from .follow import Follower
from .generation import Generation
from .request import BadChatRequest, ChatRequest, from_json, from_query, last_event_id, mock_headers
from .responses import api_error, bad_request, method_not_allowed, not_found, send_json
from .store import EventsExpired, EventStore, GenerationGone, GenerationMeta, MemoryStore, StoreUnavailable

if TYPE_CHECKING:  # services imports the middleware, which imports services: no cycle at run time
    from ..services import Services

logger = logging.getLogger("sluice.chat")

_CANCEL_PATH = re.compile(r"/api/chat/([^/]+)/cancel")
_WATCHER_TTL = 30.0  # a client connection that stops renewing lapses after this (a crashed instance)
# Suggested in the model picker, per provider; any provider/model name is accepted.
SUGGESTED_MODELS = (
    "openai/gpt-4o-mini",
    "openai/gpt-4.1",
    "gemini/gemini-2.5-flash",
    "gemini/gemini-2.5-pro",
    "anthropic/claude-sonnet-4-5",
    "anthropic/claude-haiku-4-5",
)


class ChatApi:
    """The ASGI app for ``/api/…``: started and stopped by the application's lifespan."""

    def __init__(self, services: Services) -> None:
        self.services = services
        chat = services.settings.chat
        self.store: EventStore
        if services.settings.redis_url:
            from .redis_store import RedisStore

            self.store = RedisStore(
                services.settings.redis_url,
                max_events=chat.max_events,
                retention=chat.retention,
                watcher_ttl=_WATCHER_TTL,
            )
        else:
            self.store = MemoryStore(
                max_events=chat.max_events, retention=chat.retention, watcher_ttl=_WATCHER_TTL
            )
        self.generations: dict[str, Generation] = {}  # the ones running in this process
        self._background: set[asyncio.Task[None]] = set()
        self._schema = files("proxy").joinpath("static/chat-events.schema.json").read_bytes()

    async def start(self) -> None:
        await self.store.start(self._cancel_local)
        self._spawn(self._janitor())

    async def stop(self) -> None:
        for generation in list(self.generations.values()):
            generation.cancel("shutdown")
        tasks = [g.task for g in self.generations.values() if g.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)  # their last events reach the store
        for task in list(self._background):
            task.cancel()
        await self.store.close()

    def _cancel_local(self, generation: str) -> None:
        running = self.generations.get(generation)
        if running is not None:
            running.cancel("request")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _janitor(self) -> None:
        while True:
            await asyncio.sleep(30.0)
            await self.store.expire()

    # ------------------------------------------------------------ routing
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = get_or_create_context(scope)
        path, method = scope["path"], scope["method"]
        try:
            if path == "/api/chat":
                if method == "POST":
                    await self._start_from_body(scope, receive, send, ctx)
                elif method == "GET":
                    await self._get(scope, receive, send, ctx)
                else:
                    await method_not_allowed(send, ctx, "GET, POST")
            elif path == "/api/chat/schema":
                await send_json(send, 200, self._schema, b"application/schema+json")
            elif path == "/api/chat/models":
                await send_json(send, 200, json.dumps(self._models(ctx)).encode())
            elif (found := _CANCEL_PATH.fullmatch(path)) is not None:
                if method != "POST":
                    await method_not_allowed(send, ctx, "POST")
                else:
                    await self._cancel(found.group(1), send, ctx)
            else:
                ctx.outcome, ctx.detail = "bad_request", "no_route"
                await api_error(send, 404, "not_found", "No such Sluice API endpoint.")
        except StoreUnavailable:
            ctx.outcome, ctx.detail = "unavailable", "store_unavailable"
            logger.warning("chat API: the event store is unreachable")
            message = "Sluice's chat event store is unreachable; retry shortly."
            await api_error(send, 503, "store_unavailable", message, [(b"retry-after", b"1")])

    async def _get(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext) -> None:
        last_id = last_event_id(scope)
        if last_id is not None:
            await self._resume(last_id, receive, send, ctx)
            return
        try:
            request = from_query(scope["query_string"], self.services.settings.chat.aliases)
        except BadChatRequest as exc:
            await bad_request(send, ctx, str(exc))
            return
        await self._start(request, scope, receive, send, ctx)

    async def _start_from_body(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext) -> None:
        limit = self.services.settings.max_inspect_bytes
        body, receive = await read_body(receive, limit)
        if body is None:
            ctx.outcome, ctx.detail = "bad_request", "too_large"
            await api_error(send, 413, "too_large", f"The request body is over {limit} bytes.")
            return
        ctx.bytes_in = len(body)
        try:
            request = from_json(body, self.services.settings.chat.aliases)
        except BadChatRequest as exc:
            await bad_request(send, ctx, str(exc))
            return
        await self._start(request, scope, receive, send, ctx)

    # ------------------------------------------------------------ actions
    async def _start(
        self, request: ChatRequest, scope: Scope, receive: Receive, send: Send, ctx: RequestContext
    ) -> None:
        settings = self.services.settings
        ctx.provider, ctx.model = request.provider, request.model
        if not await self._permitted(ctx, send, request.provider, request.model):
            return
        upstream = settings.upstreams[request.provider]
        if not upstream.credentials:
            ctx.outcome, ctx.detail = "unavailable", "no_provider_key"
            message = f"Sluice has no {request.provider} API key configured; set {upstream.key_setting}."
            await api_error(send, 503, "no_provider_key", message)
            return
        if len(self.generations) >= settings.pool_size:
            ctx.outcome, ctx.detail = "unavailable", "overloaded"
            message = f"Sluice is at its limit of {settings.pool_size} concurrent generations."
            await api_error(send, 503, "overloaded", message, [(b"retry-after", b"1")])
            return
        generation_id = new_generation_id()
        await self.store.create(GenerationMeta(generation_id, request.provider, request.model, ctx.key_name))
        generation = Generation(
            generation_id,
            request,
            settings=settings,
            store=self.store,
            client=self.services.upstream,
            pool=self.services.pools[request.provider],
            extra_headers=mock_headers(scope),
            on_unclaimed_usage=lambda usage: self._account(ctx.key, request.provider, usage),
        )
        self._track(generation)
        await self._follower(ctx, generation_id).run(receive, send, 0, [])

    def _track(self, generation: Generation) -> None:
        self.generations[generation.id] = generation
        self.services.drain.in_flight.add(generation)
        task = generation.start()

        def ended(_task: asyncio.Task[None]) -> None:
            self.generations.pop(generation.id, None)
            self.services.drain.in_flight.discard(generation)
            usage = generation.usage
            if usage is not None and usage.total and generation.cancel_reason != "shutdown":
                self._spawn(generation.account_later())

        task.add_done_callback(ended)

    async def _resume(self, last_id: str, receive: Receive, send: Send, ctx: RequestContext) -> None:
        parsed = parse_event_id(last_id)
        if parsed is None:
            message = "Last-Event-ID is not a Sluice chat event id (<generation>:<seq>)."
            await bad_request(send, ctx, message)
            return
        generation_id, after = parsed
        meta = await self._owned(generation_id, send, ctx)
        if meta is None:
            return
        try:
            first = await self.store.read(generation_id, after, 0)
        except GenerationGone:
            first = []  # finished and caught up (memory store), or just expired
            if not meta.finished:
                await not_found(send, ctx)
                return
        except EventsExpired:
            ctx.outcome, ctx.detail = "bad_request", "events_expired"
            message = "The events after this id are no longer kept; start a new generation."
            await api_error(send, 410, "events_expired", message)
            return
        if not first and meta.finished:
            # Caught up with a finished generation. 204 is what makes an
            # EventSource stop reconnecting (HTML spec, "reestablish").
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await self._follower(ctx, generation_id).run(receive, send, after, first)

    async def _cancel(self, generation_id: str, send: Send, ctx: RequestContext) -> None:
        meta = await self._owned(generation_id, send, ctx)
        if meta is None:
            return
        if meta.finished:
            body = {"id": generation_id, "cancelled": False, "reason": "already finished"}
            await send_json(send, 200, json.dumps(body).encode())
            return
        running = self.generations.get(generation_id)
        if running is not None:
            running.cancel("request")
        else:
            await self.store.request_cancel(generation_id)  # reaches the instance running it
        await send_json(send, 202, json.dumps({"id": generation_id, "cancelled": True}).encode())

    # ------------------------------------------------------------ helpers
    def _follower(self, ctx: RequestContext, generation_id: str) -> Follower:
        chat = self.services.settings.chat
        renew = _WATCHER_TTL / 3
        return Follower(
            self.store, generation_id, ctx, heartbeat=chat.heartbeat_interval, watcher_renew=renew
        )

    async def _owned(self, generation_id: str, send: Send, ctx: RequestContext) -> GenerationMeta | None:
        """The generation's record, if it exists and this key may touch it (else answered here)."""
        meta = await self.store.meta(generation_id) if is_generation_id(generation_id) else None
        if meta is None:
            await not_found(send, ctx)
            return None
        ctx.provider, ctx.model = meta.provider, meta.model
        key = ctx.key
        if isinstance(key, ClientKey) and key.name != meta.key_name:
            await self._reject(ctx, send, "generation", "This generation was started with another key.")
            return None
        return meta

    async def _permitted(self, ctx: RequestContext, send: Send, provider: str, model: str) -> bool:
        key = ctx.key
        if not isinstance(key, ClientKey):
            return True  # auth is off
        if not key.allows_provider(provider):
            await self._reject(ctx, send, "provider", f"This key may not use the {provider} API.")
            return False
        if not key.allows_model(model):
            await self._reject(ctx, send, "model", f"This key may not use the model {model!r}.")
            return False
        return True

    async def _reject(self, ctx: RequestContext, send: Send, reason: str, message: str) -> None:
        ctx.outcome, ctx.detail = "rejected_auth", reason
        self.services.metrics.auth_rejections.inc((reason,))
        await api_error(send, 403, "permission_denied", message)

    def _models(self, ctx: RequestContext) -> dict[str, Any]:
        key = ctx.key if isinstance(ctx.key, ClientKey) else None
        upstreams = self.services.settings.upstreams

        def usable(target: str) -> bool:
            provider, _, model = target.partition("/")
            if not upstreams[provider].credentials:  # type: ignore[index]
                return False
            return key is None or (key.allows_provider(provider) and key.allows_model(model))

        aliases = self.services.settings.chat.aliases
        return {
            "aliases": {name: target for name, target in aliases.items() if usable(target)},
            "models": [m for m in SUGGESTED_MODELS if usable(m)],
        }

    async def _account(self, key: object, provider: str, usage: Usage) -> None:
        """Tokens of a generation whose usage no client received: metrics and TPM, as a request would."""
        name = key.name if isinstance(key, ClientKey) else ""
        self.services.metrics.count_tokens(provider, name, usage)
        if isinstance(key, ClientKey) and key.limits.tpm is not None:
            with contextlib.suppress(Exception):  # the limiter logs its own failures
                await self.services.limiter.charge_tokens(key.name, usage.total)
