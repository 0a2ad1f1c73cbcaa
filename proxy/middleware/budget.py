"""The budget layer: every request priced at its end, and keys over their budget refused.

At the end of every request it passes (completed, failed or abandoned) the
request is priced from the usage the provider reported and recorded
(:meth:`~proxy.spend.tracker.SpendTracker.record`): ``cost_usd`` in the
access log, ``sluice_spend_usd_total``, the ledger ``sluice usage`` reads.

A key with a budget (``budget_usd`` per ``budget_period``) whose spend in
the current period has reached it gets a 429 in the provider's own format
for an exhausted quota (OpenAI ``insufficient_quota``, Gemini
``RESOURCE_EXHAUSTED``, Anthropic ``rate_limit_error``) with a
``Retry-After`` at the period's end (none for ``total``). The check reads a
cache refreshed about once a second, so a stream already running when the
budget is reached finishes, and the budget may be overrun by about a second
of the key's traffic. Every response to a budgeted key says what is left:
``x-sluice-budget-remaining-usd``.

A budgeted key's OpenAI chat streams are asked for their usage
(``stream_options.include_usage``, as ``SLUICE_OPENAI_INCLUDE_USAGE`` does
for every key): without it OpenAI reports none, and the stream could not be
priced. The passthrough rewrites the body it holds (``ctx.include_usage``,
:mod:`proxy.streamusage`), so the layer reads no body and wraps no
``receive``. A body streamed upstream as it arrives (over
``SLUICE_RETRY_BODY_LIMIT``, or chunked) is not rewritten.

When the spend store cannot be read (Redis down) for more than a few
seconds, ``SLUICE_REDIS_FAILURE`` decides for budgeted keys: ``open`` goes
on with the last known spend plus this worker's own, ``closed`` answers 503.

The layer is in the chain whenever the chain names it (the default): it
prices every request, and a key can gain a budget while Sluice runs (the
keys file is reloaded), so no start-time configuration makes it idle. A
key without a budget costs the request an attribute test; the pricing at
the end is a dict lookup and a few multiplications.
"""

from __future__ import annotations

import math
import time

from ..asgi import ASGIApp, Receive, Scope, Send
from ..config import FailurePolicy
from ..context import RequestContext, http_context
from ..errors import QUOTA, send_error
from ..keys import ClientKey
from ..spend.periods import period_end
from ..spend.tracker import SpendTracker
from ..streamusage import wants_usage

REMAINING_HEADER = b"x-sluice-budget-remaining-usd"
# status, message, extra headers, error kind (None: the status's usual one)
_Refusal = tuple[int, str, list[tuple[bytes, bytes]], tuple[str, str, str, str] | None]


def dollars(usd: float) -> str:
    """``format(max(usd, 0), ".6f")`` from integers: a format spec is a generic call (~4 k instructions)."""
    micros = int(usd * 1_000_000 + 0.5) if usd > 0 else 0
    return str(micros // 1_000_000) + "." + str(1_000_000 + micros % 1_000_000)[1:]


class Budget:
    """Pure ASGI middleware: spend recorded for every request, budgets enforced for keys that have one."""

    def __init__(
        self,
        app: ASGIApp,
        tracker: SpendTracker,
        policy: FailurePolicy,
        ask_usage: bool = True,
    ) -> None:
        self.app = app
        self.tracker = tracker
        self.policy = policy
        # Whether budgeted keys' OpenAI chat streams are asked for usage here:
        # not when every request already is (SLUICE_OPENAI_INCLUDE_USAGE).
        self.ask_usage = ask_usage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = http_context(scope)
        if ctx is None:
            await self.app(scope, receive, send)
            return
        key = ctx.key
        if isinstance(key, ClientKey) and key.budget_usd is not None:
            refusal = self._check(ctx, key, key.budget_usd)
            if refusal is not None:
                status, message, headers, kind = refusal
                await send_error(send, ctx.provider or "openai", status, message, headers, kind)  # type: ignore[arg-type]
                return
            route = ctx.route
            if self.ask_usage and route is not None:
                # The passthrough sets stream_options.include_usage on the body it reads anyway.
                ctx.include_usage = wants_usage(ctx.provider, scope["method"], route.upstream_path)
        try:
            await self.app(scope, receive, send)
        finally:
            self.tracker.record(ctx)

    def _check(self, ctx: RequestContext, key: ClientKey, budget: float) -> _Refusal | None:
        """None to go on (the remaining budget is then in ``ctx.response_headers``), else the refusal.

        Not a coroutine: the common case awaits nothing.
        """
        period = key.budget_period
        if period is None:  # a budget without a period is refused when the keys file is read
            return None
        state = self.tracker.state(key, budget, period)
        if state.stale and self.policy == "closed":
            ctx.outcome, ctx.detail = "unavailable", "spend_store_unavailable"
            message = "Budgets cannot be checked right now (the spend store is unreachable)."
            return 503, message, [(b"retry-after", b"1")], None
        header = (REMAINING_HEADER, dollars(state.remaining_usd).encode())
        if state.remaining_usd > 0:
            if ctx.response_headers is None:
                ctx.response_headers = [header]
            else:
                ctx.response_headers.append(header)
            return None
        ctx.outcome, ctx.detail = "rate_limited", "budget"
        # The SDKs would otherwise retry a 429: no use before the period ends.
        headers = [header, (b"x-should-retry", b"false")]
        end = period_end(period, time.time())
        if end is not None:
            headers.append((b"retry-after", str(max(1, math.ceil(end - time.time()))).encode()))
        message = (
            f"This key has used its {period} budget of ${format(budget, '.2f')} "
            f"(spent ${format(state.spent_usd, '.4f')})."
            + (" It resets at the start of the next period." if end is not None else "")
        )
        return 429, message, headers, QUOTA
