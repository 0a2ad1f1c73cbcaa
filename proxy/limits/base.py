"""The contract every rate-limit backend keeps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

LimitKind = Literal["rpm", "tpm", "concurrency"]

WINDOW_SECONDS = 60  # rpm and tpm are counted over the last 60 s, in 1 s buckets


class LimiterUnavailable(Exception):
    """The backend could not be asked (Redis down, timed out).

    The caller applies the fail-open/closed policy.
    """


@dataclass(frozen=True, slots=True)
class Limits:
    """One client key's limits; ``None`` means unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None

    @property
    def any(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.concurrency is not None


# Its own __init__ (init=False): made for every request, and a hand-written
# one is much cheaper than the one @dataclass generates (proxy/http/README.md).
@dataclass(slots=True, init=False)
class Decision:
    """The answer to one admission request.

    When ``allowed``, ``limit``/``remaining``/``reset`` describe the
    requests-per-minute policy if the key has one (else the most constraining
    one it has). When refused, they describe the limit that refused it, and
    ``retry_after`` is the number of seconds after which the same request
    could succeed (for ``concurrency``, a short fixed hint: a slot frees when
    some stream ends, which cannot be known).
    """

    allowed: bool
    kind: LimitKind | None
    limit: int | None
    remaining: int | None
    reset: float  # seconds until the window that decided has room again
    retry_after: float

    def __init__(
        self,
        allowed: bool,
        kind: LimitKind | None = None,
        limit: int | None = None,
        remaining: int | None = None,
        reset: float = 0.0,
        retry_after: float = 0.0,
    ) -> None:
        self.allowed = allowed
        self.kind = kind
        self.limit = limit
        self.remaining = remaining
        self.reset = reset
        self.retry_after = retry_after


class Limiter(Protocol):
    async def admit(self, key: str, limits: Limits, lease_id: str) -> Decision:
        """Check concurrency, rpm and tpm together, atomically.

        Only if all pass: count the request toward rpm and take a concurrency
        slot under ``lease_id``. A refused request consumes nothing. Raises
        :class:`LimiterUnavailable` if the backend cannot be reached.
        """
        ...

    async def release(self, key: str, lease_id: str) -> None:
        """Give back the concurrency slot held under ``lease_id`` (idempotent)."""
        ...

    async def charge_tokens(self, key: str, tokens: int) -> None:
        """Add tokens used by a finished request to the key's tpm window."""
        ...

    async def ping(self) -> bool:
        """True when the backend is reachable (readiness)."""
        ...

    async def close(self) -> None: ...
