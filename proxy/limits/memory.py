"""Rate limits for one process, in memory.

The rules here are the reference for every backend: :mod:`proxy.limits.redis`
runs the same arithmetic inside a Lua script and builds its :class:`Decision`
with :func:`compose_decision`, so both answer alike.

Windows are sliding, ``window`` seconds long, counted in 1 s buckets: the
bucket of second ``b`` counts while ``now < b + window``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from .base import WINDOW_SECONDS, Decision, LimitKind, Limits

# A refused concurrency request has no knowable retry time (a slot frees when
# some stream ends); this is the hint we give.
CONCURRENCY_RETRY_AFTER = 1.0

# How often (in clock seconds) the whole table is swept for idle keys, so a
# key that stops sending does not keep its buckets forever.
_SWEEP_EVERY = 60.0

Buckets = dict[int, int]  # unix (or clock) second -> requests or tokens
Usage = tuple[int, float]  # (counted in the window, seconds until it matters: see _wait)


def compose_decision(
    limits: Limits,
    allowed: bool,
    rpm: Usage | None,
    tpm: Usage | None,
    concurrency: int | None,
) -> Decision:
    """Turn what each policy saw into one :class:`Decision`.

    ``rpm``/``tpm`` are (used before this request, wait) where wait is, for a
    refusing policy, the seconds until the window would admit one more and,
    otherwise, the seconds until its oldest counted bucket expires (0 when
    empty). ``concurrency`` is the number of leases held before this request.
    """
    # (kind, limit, remaining if allowed, refused, wait)
    seen: list[tuple[LimitKind, int, int, bool, float]] = []
    if limits.concurrency is not None and concurrency is not None:
        lim = limits.concurrency
        seen.append(("concurrency", lim, lim - concurrency - 1, concurrency >= lim, CONCURRENCY_RETRY_AFTER))
    if limits.rpm is not None and rpm is not None:
        seen.append(("rpm", limits.rpm, limits.rpm - rpm[0] - 1, rpm[0] + 1 > limits.rpm, rpm[1]))
    if limits.tpm is not None and tpm is not None:
        seen.append(("tpm", limits.tpm, limits.tpm - tpm[0], tpm[0] >= limits.tpm, tpm[1]))
    if not seen:
        return Decision(allowed=True)

    if not allowed:
        # Report the refusal that lasts longest: retrying any sooner would be
        # refused again by it. Ties keep the check order (concurrency, rpm, tpm).
        refused = [s for s in seen if s[3]] or seen
        kind, lim, _, _, wait = max(refused, key=lambda s: s[4])
        wait = max(wait, 0.001)  # a refusal never says "retry now"
        return Decision(False, kind, lim, 0, reset=wait, retry_after=wait)

    # Allowed: the rpm policy if there is one (what clients expect in
    # RateLimit-* headers), else the one with the least room left.
    by_kind = {s[0]: s for s in seen}
    chosen = by_kind.get("rpm") or min(seen, key=lambda s: s[2] / s[1] if s[1] > 0 else 0.0)
    kind, lim, remaining, _, wait = chosen
    reset = 0.0 if kind == "concurrency" else wait
    return Decision(True, kind, lim, max(remaining, 0), reset=reset)


def _prune(buckets: Buckets, now: float, window: int) -> int:
    """Drop buckets that have left the window; return the sum of the rest."""
    floor = math.floor(now) - window + 1
    for b in [b for b in buckets if b < floor]:
        del buckets[b]
    return sum(buckets.values())


def _wait(buckets: Buckets, used: int, keep: int, now: float, window: int) -> float:
    """Seconds until the counted total falls to ``keep`` or below, as old buckets expire.

    With ``keep = used`` (nothing needs to go) this is the time until the
    oldest counted bucket expires, or 0 if there is none.
    """
    for b in sorted(buckets):
        used -= buckets[b]
        if used <= keep:
            return b + window - now
    # Nothing counted: nothing to wait for; unless keep < 0 (a limit of 0),
    # which no window ever satisfies: say one window.
    return 0.0 if used <= keep else float(window)


class MemoryLimiter:
    """The :class:`~proxy.limits.base.Limiter` for a single process.

    Plain dicts and no locks: everything runs on one event loop and
    :meth:`admit` never awaits between checking and taking, so it is atomic.
    ``clock`` is injectable so tests can move time; ``window`` exists so they
    can shorten it, and it is the same code path.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, window: int = WINDOW_SECONDS) -> None:
        self._clock = clock
        self._window = window
        self._rpm: dict[str, Buckets] = {}
        self._tpm: dict[str, Buckets] = {}
        self._leases: dict[str, set[str]] = {}
        self._next_sweep = clock() + _SWEEP_EVERY

    async def admit(self, key: str, limits: Limits, lease_id: str) -> Decision:
        if not limits.any:
            return Decision(allowed=True)
        now = self._clock()
        self._maybe_sweep(now)
        w = self._window
        rpm = tpm = None
        allowed = True
        leases = self._leases.get(key, set())
        if limits.concurrency is not None:
            allowed = len(leases) < limits.concurrency
        if limits.rpm is not None:
            buckets = self._rpm.setdefault(key, {})
            used = _prune(buckets, now, w)
            if used + 1 > limits.rpm:
                allowed = False
                rpm = (used, _wait(buckets, used, limits.rpm - 1, now, w))
            else:
                # Oldest counted bucket once this request is counted.
                oldest = min(buckets, default=math.floor(now))
                rpm = (used, oldest + w - now)
        if limits.tpm is not None:
            buckets = self._tpm.setdefault(key, {})
            used = _prune(buckets, now, w)
            if used >= limits.tpm:
                allowed = False
                tpm = (used, _wait(buckets, used, limits.tpm - 1, now, w))
            else:
                tpm = (used, _wait(buckets, used, used, now, w))
        decision = compose_decision(limits, allowed, rpm, tpm, len(leases))
        if allowed:
            # Only now, with every policy passed, does the request count.
            if limits.rpm is not None:
                bucket = self._rpm[key]
                sec = math.floor(now)
                bucket[sec] = bucket.get(sec, 0) + 1
            if limits.concurrency is not None:
                self._leases.setdefault(key, set()).add(lease_id)
        return decision

    async def release(self, key: str, lease_id: str) -> None:
        leases = self._leases.get(key)
        if leases is not None:
            leases.discard(lease_id)
            if not leases:
                del self._leases[key]

    async def charge_tokens(self, key: str, tokens: int) -> None:
        if tokens <= 0:
            return
        sec = math.floor(self._clock())
        bucket = self._tpm.setdefault(key, {})
        bucket[sec] = bucket.get(sec, 0) + tokens

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._rpm.clear()
        self._tpm.clear()
        self._leases.clear()

    def _maybe_sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_EVERY
        for table in (self._rpm, self._tpm):
            for key in list(table):
                _prune(table[key], now, self._window)
                if not table[key]:
                    del table[key]
