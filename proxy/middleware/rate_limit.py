"""Per-key limits: requests per minute, concurrent requests, tokens per minute.

Admission happens before the request goes upstream; the concurrency slot is
held until the response has ended (completed, failed or abandoned by the
client), and the tokens the provider reported are charged to the key's
per-minute window once the response ends. A refusal is a 429 in the
provider's error format with ``Retry-After`` and the ``RateLimit-*`` headers.

When the backend (Redis) cannot be reached, ``SLUICE_REDIS_FAILURE`` decides:
``open`` lets the request through unlimited, ``closed`` answers 503. Either way
it is logged (at most every 10 s) and counted in ``sluice_limiter_errors_total``.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from ..asgi import ASGIApp, Receive, Scope, Send
from ..config import FailurePolicy
from ..context import http_context, new_id
from ..errors import send_error
from ..keys import ClientKey
from ..limits import Limiter, LimiterUnavailable
from ..limits.headers import rate_limit_headers
from ..metrics import Metrics

logger = logging.getLogger("sluice.rate_limit")
_LOG_EVERY: Final = 10.0


class RateLimit:
    """Pure ASGI middleware enforcing the limits of the key that ``auth`` found."""

    def __init__(self, app: ASGIApp, limiter: Limiter, metrics: Metrics, policy: FailurePolicy) -> None:
        self.app = app
        self.limiter = limiter
        self.metrics = metrics
        self.policy = policy
        self._last_log = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = http_context(scope)
        key = ctx.key if ctx is not None else None
        if ctx is None or not isinstance(key, ClientKey) or not key.limits.any:
            await self.app(scope, receive, send)
            return
        # Unique across processes (the request id may come from the client);
        # only a concurrency limit holds a lease.
        lease = new_id() if key.limits.concurrency is not None else ""
        try:
            decision = await self.limiter.admit(key.name, key.limits, lease)
        except LimiterUnavailable as exc:
            self.metrics.limiter_errors.inc((self.policy,))
            self._log_unavailable(exc)
            if self.policy == "closed":
                ctx.outcome, ctx.detail = "unavailable", "limiter_unavailable"
                message = "Rate limiting is unavailable, so Sluice cannot admit requests right now."
                await send_error(send, ctx.provider or "openai", 503, message, [(b"retry-after", b"1")])  # type: ignore[arg-type]
                return
            await self.app(scope, receive, send)
            return
        headers = rate_limit_headers(decision)
        if not decision.allowed:
            ctx.outcome, ctx.detail = "rate_limited", decision.kind
            self.metrics.rate_limited.inc((key.name, decision.kind or ""))
            message = f"Rate limit reached for this key ({decision.kind}: {decision.limit}). Try again later."
            await send_error(send, ctx.provider or "openai", 429, message, headers)  # type: ignore[arg-type]
            return
        if headers:  # the Gate puts them on whatever response starts
            if ctx.response_headers is None:
                ctx.response_headers = headers
            else:
                ctx.response_headers += headers
        try:
            await self.app(scope, receive, send)
        finally:
            if key.limits.concurrency is not None:
                await self.limiter.release(key.name, lease)
            if key.limits.tpm is not None and ctx.usage is not None and ctx.usage.total:
                await self.limiter.charge_tokens(key.name, ctx.usage.total)

    def _log_unavailable(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY:
            self._last_log = now
            logger.warning("rate-limit backend unavailable (%s); failing %s", exc, self.policy)
