"""The chat API's own JSON answers (errors in the shape of Sluice's other errors)."""

from __future__ import annotations

import json

from ..asgi import Send
from ..context import RequestContext


async def api_error(
    send: Send, status: int, code: str, message: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Sluice's own API errors, in the same shape as its other errors (OpenAI's)."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status in (401, 403):
        kind = "permission_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    await send_json(send, status, json.dumps(body).encode(), extra=extra)


async def send_json(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = b"application/json",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def bad_request(send: Send, ctx: RequestContext, message: str) -> None:
    ctx.outcome, ctx.detail = "bad_request", "invalid_chat_request"
    await api_error(send, 400, "invalid_request", message)


async def not_found(send: Send, ctx: RequestContext) -> None:
    ctx.outcome, ctx.detail = "bad_request", "no_generation"
    message = "No such generation: unknown, or finished longer ago than SLUICE_CHAT_RETENTION."
    await api_error(send, 404, "generation_not_found", message)


async def method_not_allowed(send: Send, ctx: RequestContext, allow: str) -> None:
    ctx.outcome, ctx.detail = "bad_request", "method"
    await api_error(send, 405, "method_not_allowed", f"Use {allow}.", [(b"allow", allow.encode())])
