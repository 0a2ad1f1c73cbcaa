"""Failover between a provider's credentials, the way a careful operator would.

* The first healthy credential in configured order serves.
* A credential the upstream refuses (401/403), or whose token cannot be
  obtained, is marked *failed* for ``SLUICE_FAILOVER_COOLDOWN`` seconds: the
  pool stays on the next one (sticky), and only after the cool-down is the
  refused one tried again. An operator can reset it sooner. So a revoked key
  costs one extra upstream call per cool-down, and the pool never flaps.
* A 429 *cools* a credential for its ``retry-after`` (default 30 s); but a
  Code Assist credential's 429 (the account's quota), like its connect
  failures, fails it for the cool-down (docs/code-assist.md).
* The warning and the metric come once per failover, however many requests
  in flight learn of it together.
* When every credential is failed or cooling, the one that becomes available
  first is tried, so stale state never refuses traffic on its own.

State is per worker process; each worker learns a refusal on its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from .code_assist import CodeAssistAuth, Envelope, code_assist_call, unserved_reason
from .config import Upstream
from .credentials import CredentialSpec
from .http import Origin, Response
from .metrics import Metrics
from .routing import Route, strip_query_credentials
from .vertex import VertexToken, gemini_path, vertex_path

logger = logging.getLogger("sluice.credentials")

State = Literal["ok", "failed", "cooling"]
DEFAULT_RETRY_AFTER = 30.0


# Its own __init__ (init=False): made for every request, and a hand-written
# one is much cheaper than the one @dataclass generates (proxy/http/README.md).
@dataclass(slots=True, init=False)
class Destination:
    """Where one request goes: an origin from configuration, and the request target."""

    origin: Origin
    target: bytes  # path and query, as written on the request line
    envelope: Envelope | None  # Code Assist: the body is wrapped, the answer unwrapped

    def __init__(self, origin: Origin, target: bytes, envelope: Envelope | None = None) -> None:
        self.origin = origin
        self.target = target
        self.envelope = envelope


def _split_base(base_url: str) -> tuple[Origin, bytes]:
    """``scheme://host[:port][/prefix]`` → the origin and the path prefix (parsed once, at start)."""
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Origin(parts.scheme, parts.hostname or "", port), parts.path.rstrip("/").encode("latin-1")


class Credential:
    """One server-held credential and how a request is shaped for it."""

    def __init__(self, upstream: Upstream, spec: CredentialSpec) -> None:
        self.upstream = upstream
        self.spec = spec
        self.label = spec.label
        self.token = VertexToken(spec) if spec.kind == "vertex" else None
        self.code_assist = CodeAssistAuth(spec) if spec.kind == "code_assist" else None
        self.state: State = "ok"
        self.until = 0.0  # monotonic time the current state ends
        self.reason = ""
        base = spec.endpoint if spec.kind != "api_key" and spec.endpoint else upstream.base_url
        self.origin, self.prefix = _split_base(base)
        self._key_header = self._api_key_header()

    def _api_key_header(self) -> tuple[bytes, bytes]:
        key = (self.spec.api_key or "").encode("latin-1")
        if self.upstream.provider == "gemini":
            return b"x-goog-api-key", key  # a header, never ?key=, so it stays out of URLs and logs
        if self.upstream.provider == "anthropic":
            return b"x-api-key", key
        return b"authorization", b"Bearer " + key

    def destination(self, route: Route, query_string: bytes) -> Destination | None:
        """Where this credential sends the request, or ``None`` if it cannot serve it.

        The origin comes from configuration and the path was validated, so
        the client's bytes are kept without being able to move the origin.
        """
        if self.code_assist is not None:
            call = code_assist_call(route.upstream_path, query_string)
            if call is None:
                return None
            return Destination(self.origin, self.prefix + call[0].encode("latin-1"), call[1])
        if self.spec.kind == "vertex":
            path = vertex_path(self.spec, route.upstream_path)
        else:
            path = gemini_path(route.upstream_path) if route.provider == "gemini" else route.upstream_path
        if path is None:
            return None
        query = strip_query_credentials(query_string) if query_string else b""
        target = self.prefix + path.encode("latin-1")
        return Destination(self.origin, target + b"?" + query if query else target)

    async def auth_header(self) -> tuple[bytes, bytes]:
        if self.token is not None:
            token = await self.token.token()
            return b"authorization", b"Bearer " + token.encode("latin-1")
        if self.code_assist is not None:
            token = await self.code_assist.token()
            return b"authorization", b"Bearer " + token.encode("latin-1")
        return self._key_header


@dataclass(frozen=True, slots=True)
class CredentialStatus:
    label: str
    kind: str
    state: State
    seconds_left: float
    reason: str


class CredentialPool:
    def __init__(
        self,
        upstream: Upstream,
        cooldown: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = upstream.provider
        self.credentials = [Credential(upstream, spec) for spec in upstream.credentials]
        self.cooldown = cooldown
        self.metrics = metrics
        self.clock = clock
        for cred in self.credentials:  # a series per credential from the start: 0, in use
            metrics.credential_cooldown.set((self.provider, cred.label), 0.0)

    def _refresh_states(self, now: float) -> None:
        for cred in self.credentials:
            if cred.state != "ok" and now >= cred.until:
                cred.state, cred.reason = "ok", ""

    def candidates(self, route: Route, query_string: bytes) -> list[tuple[Credential, Destination]]:
        """Credentials to try, in order, each with where it would send the request."""
        now = self.clock()
        self._refresh_states(now)
        if len(self.credentials) == 1:  # the common case, without the lists below
            only = self.credentials[0]
            destination = only.destination(route, query_string)
            return [] if destination is None else [(only, destination)]
        usable = [(c, d) for c in self.credentials if (d := c.destination(route, query_string)) is not None]
        healthy = [pair for pair in usable if pair[0].state == "ok"]
        if healthy or not usable:
            return healthy
        return [min(usable, key=lambda pair: pair[0].until)]

    def _set(self, cred: Credential, state: State, seconds: float, reason: str) -> None:
        cred.state, cred.until, cred.reason = state, self.clock() + seconds, reason
        self.metrics.failovers.inc((self.provider, cred.label, reason))
        self.metrics.credential_cooldown.set((self.provider, cred.label), time.time() + seconds)

    def unserved_reason(self, route: Route) -> str:
        """Why no credential of the pool can serve ``route`` (for the client's error)."""
        message = f"No configured {self.provider} credential can serve this path."
        if any(c.code_assist is not None for c in self.credentials):
            message += f" {unserved_reason(route.upstream_path)}."
        return message

    def refused(self, cred: Credential, reason: str) -> None:
        if reason == "401" and cred.code_assist is not None:
            cred.code_assist.invalidate()  # a revoked access token: get a new one next time
        if cred.state == "failed":
            # Known already (requests in flight together learnt it together):
            # the sticky period restarts, but the warning and metric were given.
            cred.until, cred.reason = self.clock() + self.cooldown, reason
            return
        self._set(cred, "failed", self.cooldown, reason)
        logger.warning(
            "%s credential %r failed (%s): using the next one for %gs",
            self.provider,
            cred.label,
            reason,
            self.cooldown,
        )

    def throttled(self, cred: Credential, retry_after: bytes | None) -> None:
        seconds = _seconds(retry_after)
        self._set(cred, "cooling", seconds, "429")
        logger.warning(
            "%s credential %r rate-limited upstream: cooling for %gs", self.provider, cred.label, seconds
        )

    def judge(self, cred: Credential, response: Response) -> bool:
        """Record what an upstream response's status says about ``cred``.

        True when the credential itself was turned away (401/403: failed;
        429: cooling for its ``retry-after``), so the request belongs on the
        next credential.
        """
        status = response.status
        if status == 401 or status == 403:
            self.refused(cred, str(status))
            return True
        if status == 429:
            if cred.code_assist is not None:
                # Code Assist's quota is the account's (per day, not per minute):
                # stay on the next credential for the sticky period.
                self.refused(cred, "429")
            else:
                self.throttled(cred, response.header(b"retry-after"))
            return True
        return False

    def reset(self, label: str | None = None) -> int:
        """Operator override: mark credentials healthy again. Returns how many changed."""
        changed = 0
        for cred in self.credentials:
            if (label is None or cred.label == label) and cred.state != "ok":
                cred.state, cred.until, cred.reason = "ok", 0.0, ""
                self.metrics.credential_cooldown.set((self.provider, cred.label), 0.0)
                changed += 1
        if changed:
            logger.warning("%s credentials reset by an operator: %d", self.provider, changed)
        return changed

    def status(self) -> list[CredentialStatus]:
        now = self.clock()
        self._refresh_states(now)
        return [
            CredentialStatus(c.label, c.spec.kind, c.state, round(max(0.0, c.until - now), 1), c.reason)
            for c in self.credentials
        ]


def _seconds(retry_after: bytes | None) -> float:
    try:
        value = float(retry_after) if retry_after else DEFAULT_RETRY_AFTER
    except ValueError:
        value = DEFAULT_RETRY_AFTER  # an HTTP date: rare from these APIs; take the default
    return min(max(value, 1.0), 3600.0)
