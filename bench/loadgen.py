"""An open-loop HTTP/1.1 load generator that timestamps every received chunk.

Open loop: requests are released on a precomputed schedule (fixed-rate or
Poisson), never held back because an earlier response is slow, and latency is
measured from the *scheduled* time. A slow system therefore shows up as
latency instead of silently lowering the offered load (coordinated omission).
When no pooled connection is free the generator opens another (up to a cap)
or queues the request; both waits count as latency.

Timing: ``time.perf_counter`` (CLOCK_MONOTONIC, the same clock in every
process). How closely releases follow the schedule is recorded as a harness
check (see ``run_schedule``).

Every response is checked (status, complete body, SHA-256 of the body after
de-chunking), and for event streams every read is timestamped: the time each
SSE event (``\\n\\n``) completed, and how many reads carried more than one event
(coalescing).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import cast

now = time.perf_counter


class Req:
    """One request and everything observed about it."""

    __slots__ = (
        "coalesced",
        "err",
        "events",
        "nbytes",
        "sha",
        "status",
        "t_done",
        "t_head",
        "t_release",
        "t_sched",
        "t_send",
        "track",
        "wire",
    )

    def __init__(self, wire: bytes, t_sched: float, track_events: bool = False) -> None:
        self.wire = wire
        self.t_sched = t_sched
        self.t_release = self.t_send = self.t_head = self.t_done = math.nan
        self.status = 0
        self.nbytes = 0
        self.sha = ""
        self.err: str | None = None
        self.track = track_events
        self.events: list[float] = []
        self.coalesced = 0  # reads that completed more than one event

    @property
    def ok(self) -> bool:
        return self.err is None and self.status == 200 and not math.isnan(self.t_done)

    @property
    def latency(self) -> float:
        return self.t_done - self.t_sched


def request_bytes(target: str, body: bytes, extra_headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """What every path receives: the same request line, headers and body."""
    lines = [f"POST {target} HTTP/1.1", "Host: bench.local", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in extra_headers]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


_HEAD, _BODY = 0, 1


class Conn(asyncio.Protocol):
    """A keep-alive client connection carrying one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.req: Req | None = None
        self.buf = bytearray()
        self.state = _HEAD
        self.remaining = 0  # Content-Length left, or -1 when chunked
        self.chunk_left = 0  # bytes left in the current chunk (chunked bodies)
        self.need_crlf = False
        self.keepalive = True
        self.sha = hashlib.sha256()
        self.tail = b""  # the last body byte, to find "\n\n" across reads
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        req, self.req = self.req, None
        if req is not None:
            req.err = f"connection lost: {exc}" if exc else "connection closed mid-response"
            req.t_done = now()
        self.pool._lost(self, req)

    def start(self, req: Req) -> None:
        assert self.transport is not None
        self.req, self.state, self.buf = req, _HEAD, bytearray()
        self.sha, self.tail = hashlib.sha256(), b""
        req.t_send = now()
        self.transport.write(req.wire)

    def data_received(self, data: bytes) -> None:
        t = now()
        req = self.req
        if req is None:
            return
        before = len(req.events)
        if self.state == _HEAD:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            data = bytes(self.buf[end + 4 :])
            self.buf = bytearray()
            self._parse_head(req, head, t)
        done = self._body(req, data) if data or self.remaining == 0 else False
        if req.track:
            n = len(req.events)
            if n - before > 1:
                req.coalesced += 1
            for i in range(before, n):
                req.events[i] = t
        if done:
            self._finish(req, t)

    def _parse_head(self, req: Req, head: bytes, t: float) -> None:
        req.t_head = t
        req.status = int(head[9:12])
        self.state = _BODY
        self.keepalive = b"\r\nconnection: close" not in head
        i = head.find(b"\r\ncontent-length:")
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            self.remaining = int(head[i + 17 : j if j >= 0 else len(head)])
        elif b"\r\ntransfer-encoding: chunked" in head:
            self.remaining, self.chunk_left, self.need_crlf = -1, 0, False
        else:
            req.err = "response without a length"
            self.remaining = 0

    def _payload(self, req: Req, piece: bytes) -> None:
        self.sha.update(piece)
        req.nbytes += len(piece)
        if req.track:
            found = (self.tail + piece).count(b"\n\n")
            req.events.extend([0.0] * found)  # stamped by data_received
            self.tail = piece[-1:]

    def _body(self, req: Req, data: bytes) -> bool:
        """Consume body bytes; True once the response is complete."""
        if self.remaining >= 0:
            take = data[: self.remaining]
            if take:
                self._payload(req, take)
            self.remaining -= len(take)
            return self.remaining == 0
        return self._chunked(req, data)

    def _chunked(self, req: Req, data: bytes) -> bool:
        buf = self.buf
        buf += data
        pos = 0
        while True:
            if self.chunk_left:
                take = min(self.chunk_left, len(buf) - pos)
                if not take:
                    break
                self._payload(req, bytes(buf[pos : pos + take]))
                pos += take
                self.chunk_left -= take
                self.need_crlf = self.chunk_left == 0
                continue
            if self.need_crlf:
                if len(buf) - pos < 2:
                    break
                pos += 2
                self.need_crlf = False
                continue
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                break
            size = int(bytes(buf[pos:nl]).split(b";")[0], 16)
            if size == 0:
                # No trailers in this benchmark: the empty line after "0" ends the body.
                if len(buf) - (nl + 2) < 2:
                    break  # re-read the size line when the final CRLF is here
                del buf[: nl + 4]
                return True
            pos = nl + 2
            self.chunk_left = size
        del buf[:pos]
        return False

    def _finish(self, req: Req, t: float) -> None:
        req.t_done = t
        req.sha = self.sha.hexdigest()
        self.req = None
        if self.keepalive:
            self.pool._free(self)
        elif self.transport is not None:
            self.transport.close()
        self.pool._complete(req)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


class Pool:
    """Keep-alive connections to one address; grows on demand up to ``cap``."""

    def __init__(self, host: str, port: int, cap: int) -> None:
        self.host, self.port, self.cap = host, port, cap
        self.conns: set[Conn] = set()
        self.idle: list[Conn] = []
        self.queue: deque[Req] = deque()
        self.connecting = 0
        self.outstanding = 0
        self.connect_errors = 0
        self.on_done: Callable[[Req], None] | None = None
        self._drained: asyncio.Event | None = None
        self.tasks: set[asyncio.Future[None]] = set()

    async def _connect(self) -> Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: Conn(self), self.host, self.port)
        self.conns.add(conn)
        return conn

    async def fill(self, n: int, parallel: int = 200) -> None:
        """Open ``n`` idle connections, ``parallel`` at a time (a burst would overflow the backlog)."""
        sem = asyncio.Semaphore(parallel)

        async def one() -> None:
            async with sem:
                try:
                    self.idle.append(await self._connect())
                except OSError:
                    self.connect_errors += 1

        await asyncio.gather(*(one() for _ in range(n)))

    def submit(self, req: Req) -> None:
        req.t_release = now()
        self.outstanding += 1
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                conn.start(req)
                return
        if len(self.conns) + self.connecting < self.cap:
            self.connecting += 1
            task = asyncio.ensure_future(self._connect_and_start(req))
            self.tasks.add(task)  # keep a reference until it finishes
            task.add_done_callback(self.tasks.discard)
        else:
            self.queue.append(req)

    async def _connect_and_start(self, req: Req) -> None:
        try:
            conn = await self._connect()
        except OSError as exc:
            self.connect_errors += 1
            req.err, req.t_done = f"connect: {exc}", now()
            self._complete(req)
            return
        finally:
            self.connecting -= 1
        conn.start(req)

    def _free(self, conn: Conn) -> None:
        if self.queue:
            nxt = self.queue.popleft()
            conn.start(nxt)
        else:
            self.idle.append(conn)

    def _complete(self, req: Req) -> None:
        self.outstanding -= 1
        if self.on_done is not None:
            self.on_done(req)
        if self.outstanding == 0 and self._drained is not None:
            self._drained.set()

    def _lost(self, conn: Conn, req: Req | None) -> None:
        self.conns.discard(conn)
        if req is not None:
            self._complete(req)
            if self.queue:
                # Its queued successor needs a new connection.
                queued = self.queue.popleft()
                self.outstanding -= 1
                self.submit(queued)

    async def drain(self, limit_s: float) -> bool:
        """Wait until every submitted request finished; False on timeout."""
        if self.outstanding == 0:
            return True
        self._drained = asyncio.Event()
        try:
            await asyncio.wait_for(self._drained.wait(), limit_s)
            return True
        except TimeoutError:
            return False
        finally:
            self._drained = None

    def close(self) -> None:
        for conn in list(self.conns):
            conn.close()
        self.idle.clear()


def fixed_rate(rate: float, duration: float) -> list[float]:
    """Offsets (s) of evenly spaced arrivals."""
    n = max(int(rate * duration), 1)
    return [i / rate for i in range(n)]


def poisson(rate: float, duration: float, seed: int) -> list[float]:
    """Offsets (s) of Poisson arrivals: exponential gaps, so bursts happen as they do in life."""
    rng = random.Random(seed)
    out: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            return out
        out.append(t)


class _Alarm:
    """Sub-millisecond wake-ups without spinning: a one-shot ``setitimer`` and its SIGALRM.

    uvloop's timers round to whole milliseconds; spinning through loop turns
    instead would steal the shared harness core from the upstream.
    """

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.waiter: asyncio.Future[None] | None = None
        self.loop.add_signal_handler(signal.SIGALRM, self._fire)

    def _fire(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def sleep(self, delay: float) -> None:
        self.waiter = self.loop.create_future()
        signal.setitimer(signal.ITIMER_REAL, max(delay, 1e-5))
        await self.waiter

    def close(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        self.loop.remove_signal_handler(signal.SIGALRM)


async def run_schedule(
    pool: Pool | Sequence[Pool],
    offsets: Sequence[float],
    make: Callable[[float], Req],
    precise: bool = False,
    lead: float = 0.02,
) -> list[Req]:
    """Release one request per offset, on time; return them (not yet necessarily finished).

    Given several pools, the k-th release goes to ``pool[k % len(pool)]``:
    the paths behind them are measured interleaved, request by request, so
    that a stall of the machine lands on each of them alike (``reqs[i::n]``
    are path i's).

    ``precise`` wakes for each release to within the VM's timer jitter (about
    0.1-0.3 ms at p99 here), for the low-rate latency scenarios. Otherwise the
    loop sleeps on its own 1 ms timer and releases whatever is due in batches,
    which is cheap enough for tens of thousands of requests per second and
    late by at most about a millisecond, counted in the latency.
    """
    pools = [pool] if isinstance(pool, Pool) else list(pool)
    ways = len(pools)
    alarm = _Alarm() if precise else None
    t0 = now() + lead
    reqs: list[Req] = []
    i, n = 0, len(offsets)
    try:
        while i < n:
            t = now()
            while i < n and t0 + offsets[i] <= t:
                req = make(t0 + offsets[i])
                reqs.append(req)
                pools[i % ways].submit(req)
                i += 1
            if i >= n:
                break
            delay = t0 + offsets[i] - now()
            if alarm is None:
                await asyncio.sleep(max(delay, 0.001))
            elif delay > 0.003:
                await asyncio.sleep(delay - 0.002)  # coarse, and early on purpose
            elif delay > 0:
                await alarm.sleep(delay)
    finally:
        if alarm is not None:
            alarm.close()
    return reqs


async def closed_loop(pool: Pool, make: Callable[[float], Req], connections: int, duration: float) -> int:
    """Each connection sends its next request as soon as the last finished; returns completions.

    Only used to estimate a path's saturation throughput, which then seeds
    the open-loop search: its latencies are never reported.
    """
    end = now() + duration
    count = 0

    def again(req: Req) -> None:
        nonlocal count
        if req.ok:
            count += 1
        if now() < end:
            pool.submit(make(now()))

    pool.on_done = again
    for _ in range(connections):
        pool.submit(make(now()))
    await asyncio.sleep(duration)
    pool.on_done = None
    await pool.drain(5.0)
    return count
