"""Operator endpoints: the state of each server-held credential, and a reset.

Enabled only when ``SLUICE_ADMIN_TOKEN`` is set, and then only for requests
that present it (``Authorization: Bearer <token>``, compared in constant
time); otherwise they answer 404, as if they did not exist. Never exposes a
secret: credentials are shown by label.
"""

from __future__ import annotations

import hmac
from dataclasses import asdict

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .services import Services


def credential_states(services: Services) -> dict[str, list[dict[str, object]]]:
    return {name: [asdict(s) for s in pool.status()] for name, pool in services.pools.items()}


def presents_admin_token(request: Request, token: str | None) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>`` (never true when no token is set)."""
    presented = request.headers.get("authorization", "")
    return token is not None and hmac.compare_digest(presented.encode(), f"Bearer {token}".encode())


def admin_routes(services: Services) -> list[Route]:
    token = services.settings.admin_token

    def allowed(request: Request) -> bool:
        return presents_admin_token(request, token)

    async def show(request: Request) -> Response:
        if not allowed(request):
            return JSONResponse({"error": "not found"}, 404)
        return JSONResponse({"credentials": credential_states(services)})

    async def reset(request: Request) -> Response:
        if not allowed(request):
            return JSONResponse({"error": "not found"}, 404)
        provider = request.query_params.get("provider")
        label = request.query_params.get("label")
        if provider is not None and provider not in services.pools:
            return JSONResponse({"error": f"unknown provider {provider!r}"}, 400)
        pools = [services.pools[provider]] if provider is not None else list(services.pools.values())
        changed = sum(pool.reset(label) for pool in pools)
        return JSONResponse({"reset": changed, "credentials": credential_states(services)})

    return [
        Route("/admin/credentials", show, methods=["GET"]),
        Route("/admin/credentials/reset", reset, methods=["POST"]),
    ]
