"""The ASGI application: plain routes, and the passthrough behind a catch-all."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from .config import Settings
from .passthrough import Passthrough
from .upstream import UpstreamClient


def create_app(settings: Settings) -> Starlette:
    """Build the app for one worker process. The upstream session opens in the lifespan."""
    client = UpstreamClient(settings)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await client.open()
        try:
            yield
        finally:
            await client.close()

    async def healthz(_request: Request) -> Response:
        # Alive: the process answers. Never touches an upstream.
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> Response:
        if not client.is_open:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ready"})

    routes = [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
        # Everything else is a provider API call.
        Mount("/", app=Passthrough(settings, client)),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
