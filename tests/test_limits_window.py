"""The memory limiter's running windows against a plain model of the sliding window.

``MemoryLimiter`` keeps each key's buckets in order with a running total, so
a request costs the same however many seconds are counted. This checks it
against the obvious version (a dict of second -> count, summed on every
request, as the limiter was first written) over random traffic, clock steps
back included.
"""

from __future__ import annotations

import asyncio
import math

from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.limits import Decision, Limits
from proxy.limits.memory import MemoryLimiter, compose_decision

WINDOW = 60


class Model:
    """Sliding windows the slow, obvious way: sum every bucket still in the window."""

    def __init__(self) -> None:
        self.rpm: dict[int, int] = {}
        self.tpm: dict[int, int] = {}
        self.leases: set[str] = set()

    @staticmethod
    def _live(buckets: dict[int, int], now: float) -> dict[int, int]:
        floor = math.floor(now) - WINDOW + 1
        return {b: n for b, n in buckets.items() if b >= floor}

    @staticmethod
    def _wait(buckets: dict[int, int], used: int, keep: int, now: float) -> float:
        for b in sorted(buckets):
            used -= buckets[b]
            if used <= keep:
                return b + WINDOW - now
        return 0.0 if used <= keep else float(WINDOW)

    def admit(self, limits: Limits, lease: str, now: float) -> Decision:
        allowed = limits.concurrency is None or len(self.leases) < limits.concurrency
        rpm = tpm = None
        if limits.rpm is not None:
            live = self.rpm = self._live(self.rpm, now)
            used = sum(live.values())
            if used + 1 > limits.rpm:
                allowed = False
                rpm = (used, self._wait(live, used, limits.rpm - 1, now))
            else:
                rpm = (used, min(live, default=math.floor(now)) + WINDOW - now)
        if limits.tpm is not None:
            live = self.tpm = self._live(self.tpm, now)
            used = sum(live.values())
            if used >= limits.tpm:
                allowed = False
                tpm = (used, self._wait(live, used, limits.tpm - 1, now))
            else:
                tpm = (used, self._wait(live, used, used, now))
        decision = compose_decision(limits, allowed, rpm, tpm, len(self.leases))
        if allowed:
            if limits.rpm is not None:
                self.rpm[math.floor(now)] = self.rpm.get(math.floor(now), 0) + 1
            if limits.concurrency is not None:
                self.leases.add(lease)
        return decision

    def charge(self, tokens: int, now: float) -> None:
        if tokens > 0:
            self.tpm[math.floor(now)] = self.tpm.get(math.floor(now), 0) + tokens


steps = st.lists(
    st.one_of(
        # Small steps, steps back (an injected clock may), and jumps to the window's edge.
        st.tuples(
            st.just("admit"), st.floats(min_value=-1.5, max_value=8.0) | st.sampled_from([59.0, 59.75, 60.0])
        ),
        st.tuples(st.just("charge"), st.integers(min_value=0, max_value=400)),
        st.tuples(st.just("release"), st.integers(min_value=0, max_value=30)),
        st.tuples(st.just("idle"), st.floats(min_value=0, max_value=90.0)),
    ),
    max_size=120,
)
limit_sets = st.builds(
    Limits,
    rpm=st.none() | st.integers(min_value=0, max_value=12),
    tpm=st.none() | st.integers(min_value=0, max_value=1500),
    concurrency=st.none() | st.integers(min_value=0, max_value=4),
)


@settings(max_examples=600, deadline=None)
@given(limits=limit_sets, script=steps)
# The clock steps back into a second that already has a bucket, not the newest one.
@example(limits=Limits(rpm=10), script=[("admit", 0.0), ("admit", 0.9), ("admit", -0.5), ("admit", 0.0)])
# ... or back past a second with none: the buckets must stay in order for the oldest to go first.
@example(
    limits=Limits(rpm=3),
    script=[("admit", 0.0), ("admit", 1.9), ("admit", -1.0), ("idle", 59.35), ("admit", 0.0)],
)
def test_the_running_windows_decide_as_the_plain_sliding_window(
    limits: Limits, script: list[tuple[str, float]]
) -> None:
    clock = [1000.25]
    limiter = MemoryLimiter(clock=lambda: clock[0])
    model = Model()

    async def play() -> None:
        for n, (what, arg) in enumerate(script):
            if what == "admit":
                clock[0] += arg  # may step back a little: an injected clock can
                got = await limiter.admit("k", limits, f"l{n}")
                want = model.admit(limits, f"l{n}", clock[0])
                assert got == want, (n, got, want)
            elif what == "charge":
                await limiter.charge_tokens("k", arg)
                model.charge(arg, clock[0])
            elif what == "release":
                await limiter.release("k", f"l{arg}")
                model.leases.discard(f"l{arg}")
            else:
                clock[0] += arg  # long silences: the sweep drops idle keys meanwhile

    asyncio.run(play())


async def test_an_idle_key_leaves_nothing_behind_after_the_sweep() -> None:
    clock = [1000.0]
    limiter = MemoryLimiter(clock=lambda: clock[0])
    limits = Limits(rpm=10, concurrency=2)
    assert (await limiter.admit("k", limits, "a")).allowed
    await limiter.release("k", "a")
    assert (await limiter.admit("k", limits, "b")).remaining == 8  # the emptied lease set is reused
    await limiter.release("k", "b")
    clock[0] += 3600  # past the window and the sweep interval
    assert (await limiter.admit("other", Limits(rpm=1), "c")).allowed  # admission runs the sweep
    assert "k" not in limiter._leases and "k" not in limiter._rpm
