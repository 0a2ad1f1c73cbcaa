"""``GET /playground``: the one static page that tries the chat API in a browser.

It needs no key to load (it holds no secret: the user types their Sluice key
into it, and it stays in that browser) and loads nothing from elsewhere: the
Content-Security-Policy allows only its own inline script and style, and
requests to this origin.
"""

from __future__ import annotations

from importlib.resources import files

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def playground_route() -> Route:
    page = files("proxy").joinpath("static/playground.html").read_bytes()

    async def playground(_request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=_HEADERS)

    return Route("/playground", playground, methods=["GET", "HEAD"])
