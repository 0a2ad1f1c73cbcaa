"""The ASGI application: plain routes, and the middleware chain around the passthrough."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .admin import admin_routes, credential_states
from .chat import ChatApi, playground_route
from .config import Settings
from .dashboard import dashboard_routes
from .dispatch import Dispatch, SluiceApp
from .middleware import build_chain
from .passthrough import Passthrough
from .realtime.endpoint import Realtime
from .services import Services


def create_app(settings: Settings) -> SluiceApp:
    """Build the app for one worker process. Shared resources open in the lifespan."""
    services = Services.build(settings)
    passthrough = Passthrough(settings, services.upstream, services.drain, services.pools)
    chat = ChatApi(services)
    realtime = Realtime(settings, services.drain, services.pools)
    chain = build_chain(Dispatch(passthrough, api=chat, realtime=realtime), services)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await services.start()
        await chat.start()
        try:
            yield
        finally:
            await chat.stop()  # before services: its generations still use the upstream session
            await services.stop()

    # These never need a client key and never reach an upstream.
    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> Response:
        ready, checks = await services.ready()
        body: dict[str, object] = {"status": "ready" if ready else "not ready", "checks": checks}
        body["credentials"] = credential_states(services)  # labels and states, never secrets
        return JSONResponse(body, 200 if ready else 503)

    async def metrics(_request: Request) -> Response:
        ready, _checks = await services.ready()
        services.metrics.ready.set((), 1.0 if ready else 0.0)
        return PlainTextResponse(services.metrics.render(), media_type="text/plain; version=0.0.4")

    routes = [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics, methods=["GET"]),
        playground_route(),  # a static page: no key needed to load it
        *admin_routes(services),
        *dashboard_routes(settings.admin_token, metrics),  # /metrics' own endpoint, behind the admin token
    ]
    plain = Starlette(routes=routes, lifespan=lifespan)
    plain.state.services = services  # for introspection in tests and embedding
    return SluiceApp(plain, chain, frozenset(r.path for r in routes), plain.state)
