"""``GET /dashboard``: a live page for operators, over the figures of ``/metrics``.

Guarantees:

* Off unless ``SLUICE_ADMIN_TOKEN`` is set: both routes answer 404 then, as
  the admin routes do.
* The page holds no figures and no secret; anyone may load it. It asks for
  the admin token, keeps it in the tab's ``sessionStorage`` and sends it as
  ``Authorization: Bearer`` on each data call, never in a URL (URLs land in
  access logs). Without the right token the data calls answer 401 (the
  page's existence already says the feature is on), and the page shows only
  its token prompt.
* Its data are ``GET /dashboard/metrics``, the very response ``/metrics``
  gives (the same endpoint is called, so the numbers cannot differ), and
  ``GET /admin/credentials``. Both are under ``location /`` in
  deploy/nginx.conf, which keeps ``/metrics`` itself to localhost.
* It loads nothing from elsewhere and runs only its own code: the
  Content-Security-Policy names the SHA-256 of its one inline script and
  style, and allows requests to this origin only.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Awaitable, Callable
from importlib.resources import files

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .admin import presents_admin_token

Endpoint = Callable[[Request], Awaitable[Response]]


def _csp_hash(page: str, tag: str) -> str:
    """The CSP source for the one inline ``<tag>`` element of the page."""
    found = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.DOTALL)
    assert len(found) == 1, f"dashboard.html must hold exactly one inline <{tag}>"
    digest = hashlib.sha256(found[0].encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def _page_headers(page: str) -> dict[str, str]:
    policy = (
        f"default-src 'none'; script-src {_csp_hash(page, 'script')}; style-src {_csp_hash(page, 'style')}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return {
        "content-security-policy": policy,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cache-control": "no-cache",
    }


def dashboard_routes(admin_token: str | None, metrics: Endpoint) -> list[Route]:
    """The page and its data; ``metrics`` is the endpoint that answers ``/metrics``."""
    text = files("proxy").joinpath("static/dashboard.html").read_text(encoding="utf-8")
    page, headers = text.encode(), _page_headers(text)

    async def show_page(_request: Request) -> Response:
        if admin_token is None:
            return JSONResponse({"error": "not found"}, 404)
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    async def data(request: Request) -> Response:
        if admin_token is None:
            return JSONResponse({"error": "not found"}, 404)
        if not presents_admin_token(request, admin_token):
            return JSONResponse({"error": "admin token required"}, 401, {"www-authenticate": "Bearer"})
        response = await metrics(request)
        response.headers["cache-control"] = "no-store"
        return response

    return [
        Route("/dashboard", show_page, methods=["GET", "HEAD"]),
        Route("/dashboard/metrics", data, methods=["GET"]),
    ]
