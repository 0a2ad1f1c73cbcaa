"""Every error Sluice itself produces, in the provider's own error format.

The official SDKs pick their exception class from the HTTP status and read
the message from the provider's body shape, so answering in that shape makes
``openai.RateLimitError``, ``anthropic.AuthenticationError`` or
``google.genai.errors.ClientError`` come out on the client as they would
from the provider itself.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterable
from typing import Final

from .asgi import Send
from .config import ProviderName
from .http import ConnectFailed, ResponseBroken

# status → (OpenAI type, OpenAI code, Gemini status, Anthropic type)
_KINDS: Final[dict[int, tuple[str, str, str, str]]] = {
    400: ("invalid_request_error", "invalid_request", "INVALID_ARGUMENT", "invalid_request_error"),
    401: ("invalid_request_error", "invalid_api_key", "UNAUTHENTICATED", "authentication_error"),
    403: ("permission_error", "permission_denied", "PERMISSION_DENIED", "permission_error"),
    404: ("invalid_request_error", "not_found", "NOT_FOUND", "not_found_error"),
    413: ("invalid_request_error", "request_too_large", "INVALID_ARGUMENT", "request_too_large"),
    429: ("requests", "rate_limit_exceeded", "RESOURCE_EXHAUSTED", "rate_limit_error"),
    500: ("server_error", "internal_error", "INTERNAL", "api_error"),
    502: ("server_error", "bad_gateway", "UNAVAILABLE", "api_error"),
    503: ("server_error", "service_unavailable", "UNAVAILABLE", "api_error"),
    504: ("server_error", "gateway_timeout", "DEADLINE_EXCEEDED", "api_error"),
}
# A spent budget: a 429 as each provider sends for an exhausted quota or
# credit (the OpenAI SDK raises RateLimitError with code insufficient_quota).
QUOTA: Final = ("insufficient_quota", "insufficient_quota", "RESOURCE_EXHAUSTED", "rate_limit_error")


def error_body(
    provider: ProviderName, status: int, message: str, kind: tuple[str, str, str, str] | None = None
) -> bytes:
    oa_type, oa_code, g_status, a_type = kind or _KINDS.get(status, _KINDS[500])
    body: object
    if provider == "gemini":
        body = {"error": {"code": status, "message": message, "status": g_status}}
    elif provider == "anthropic":
        body = {"type": "error", "error": {"type": a_type, "message": message}}
    else:
        body = {"error": {"message": message, "type": oa_type, "param": None, "code": oa_code}}
    return json.dumps(body, separators=(",", ":")).encode()


async def send_error(
    send: Send,
    provider: ProviderName,
    status: int,
    message: str,
    extra_headers: Iterable[tuple[bytes, bytes]] = (),
    kind: tuple[str, str, str, str] | None = None,
) -> None:
    body = error_body(provider, status, message, kind)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra_headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


_OVERLOAD_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def upstream_failure(exc: BaseException, provider: ProviderName) -> tuple[int, str, str]:
    """Status, message and kind for an upstream failure before any response byte was sent.

    ``exc`` is one of the transport's errors (``proxy.http``), a
    ``TimeoutError`` (no response headers in time) or an ``OSError``.
    Messages name the provider and the kind of failure, never the URL's query
    or any header, so no credential can end up in them.
    """
    cause = exc.cause if isinstance(exc, ConnectFailed) else exc
    if isinstance(cause, OSError) and cause.errno in _OVERLOAD_ERRNOS:
        # Out of file descriptors or buffers: Sluice is overloaded, the upstream is fine.
        return 503, "Sluice is overloaded (no sockets left); retry shortly.", "overloaded"
    if isinstance(exc, ConnectFailed):
        if exc.timed_out:
            return 504, f"Sluice timed out connecting to the {provider} upstream.", "connect_timeout"
        name = cause.__class__.__name__
        return 502, f"Sluice could not connect to the {provider} upstream ({name}).", "unreachable"
    if isinstance(exc, TimeoutError):
        return 504, f"The {provider} upstream did not respond in time.", "headers_timeout"
    if isinstance(exc, ResponseBroken):
        return 502, f"The {provider} upstream failed before responding ({exc.reason}).", "unreachable"
    return 502, f"The {provider} upstream request failed ({exc.__class__.__name__}).", "unreachable"
