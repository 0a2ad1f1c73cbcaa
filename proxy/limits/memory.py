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
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Final

from .base import WINDOW_SECONDS, Decision, LimitKind, Limits

# A refused concurrency request has no knowable retry time (a slot frees when
# some stream ends); this is the hint we give.
CONCURRENCY_RETRY_AFTER = 1.0

# How often (in clock seconds) the whole table is swept for idle keys, so a
# key that stops sending does not keep its buckets forever.
_SWEEP_EVERY: Final = 60.0

Usage = tuple[int, float]  # (counted in the window, seconds until it matters: see _Window.wait)


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
    if allowed and rpm is not None and limits.rpm is not None:
        # The common case, answered as the general rule below would (the rpm
        # policy describes an allowed request) without building its lists.
        return Decision(True, "rpm", limits.rpm, max(limits.rpm - rpm[0] - 1, 0), reset=rpm[1])
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


class _Window:
    """One key's counts in the last ``window`` seconds: 1 s buckets, oldest first, and their sum.

    Kept in order with a running total, so a request costs O(1) however many
    buckets are counted (at steady traffic, one per second of the window).
    """

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()  # [second, count], seconds increasing
        self.total = 0

    def prune(self, now: float, window: int) -> int:
        """Drop buckets that have left the window; return the sum of the rest."""
        floor = math.floor(now) - window + 1
        buckets = self.buckets
        while buckets and buckets[0][0] < floor:
            self.total -= buckets.popleft()[1]
        return self.total

    def add(self, second: int, amount: int) -> None:
        buckets = self.buckets
        self.total += amount
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += amount
        elif not buckets or buckets[-1][0] < second:
            buckets.append([second, amount])
        else:  # an injected clock went back: keep the order
            for bucket in buckets:
                if bucket[0] == second:
                    bucket[1] += amount
                    return
            buckets.append([second, amount])
            self.buckets = deque(sorted(buckets))

    def oldest(self, default: int) -> int:
        return self.buckets[0][0] if self.buckets else default

    def wait(self, used: int, keep: int, now: float, window: int) -> float:
        """Seconds until the counted total falls to ``keep`` or below, as old buckets expire.

        With ``keep = used`` (nothing needs to go) this is the time until the
        oldest counted bucket expires, or 0 if there is none.
        """
        for second, count in self.buckets:
            used -= count
            if used <= keep:
                return second + window - now
        # Nothing counted: nothing to wait for; unless keep < 0 (a limit of 0),
        # which no window ever satisfies: say one window.
        return 0.0 if used <= keep else float(window)


class MemoryLimiter:
    """The :class:`~proxy.limits.base.Limiter` for a single process.

    Dicts and no locks: everything runs on one event loop and
    :meth:`admit` never awaits between checking and taking, so it is atomic.
    ``clock`` is injectable so tests can move time; ``window`` exists so they
    can shorten it, and it is the same code path.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, window: int = WINDOW_SECONDS) -> None:
        self._clock = clock
        self._window = window
        self._rpm: defaultdict[str, _Window] = defaultdict(_Window)
        self._tpm: defaultdict[str, _Window] = defaultdict(_Window)
        self._leases: dict[str, set[str]] = {}
        self._next_sweep = clock() + _SWEEP_EVERY

    async def admit(self, key: str, limits: Limits, lease_id: str) -> Decision:
        if not limits.any:
            return Decision(allowed=True)
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        w = self._window
        rpm = tpm = None
        allowed = True
        leases = self._leases.get(key)
        held = len(leases) if leases is not None else 0
        if limits.concurrency is not None:
            allowed = held < limits.concurrency
        rpm_window = None
        if limits.rpm is not None:
            rpm_window = window = self._rpm[key]
            used = window.prune(now, w)
            if used + 1 > limits.rpm:
                allowed = False
                rpm = (used, window.wait(used, limits.rpm - 1, now, w))
            else:
                # Oldest counted bucket once this request is counted.
                rpm = (used, window.oldest(math.floor(now)) + w - now)
        if limits.tpm is not None:
            window = self._tpm[key]
            used = window.prune(now, w)
            if used >= limits.tpm:
                allowed = False
                tpm = (used, window.wait(used, limits.tpm - 1, now, w))
            else:
                tpm = (used, window.wait(used, used, now, w))
        decision = compose_decision(limits, allowed, rpm, tpm, held)
        if allowed:
            # Only now, with every policy passed, does the request count.
            if rpm_window is not None:
                rpm_window.add(math.floor(now), 1)
            if limits.concurrency is not None:
                if leases is None:
                    leases = self._leases[key] = set()
                leases.add(lease_id)
        return decision

    async def release(self, key: str, lease_id: str) -> None:
        leases = self._leases.get(key)
        if leases is not None:
            # An emptied set stays for the key's next request (one set and
            # dict entry less each); the sweep drops those left idle.
            leases.discard(lease_id)

    async def charge_tokens(self, key: str, tokens: int) -> None:
        if tokens <= 0:
            return
        self._tpm[key].add(math.floor(self._clock()), tokens)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._rpm.clear()
        self._tpm.clear()
        self._leases.clear()

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + _SWEEP_EVERY
        for table in (self._rpm, self._tpm):
            for key in list(table):
                if not table[key].prune(now, self._window):  # nothing counted: no bucket left
                    del table[key]
        for key in [key for key, leases in self._leases.items() if not leases]:
            del self._leases[key]
