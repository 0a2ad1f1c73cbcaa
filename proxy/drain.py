"""Graceful drain: on SIGTERM, finish what is in flight, within a limit.

uvicorn, on SIGTERM, stops accepting connections, closes idle keep-alive
connections and waits for the requests in progress. Sluice adds three things:

* ``/readyz`` answers 503 from the moment the signal arrives;
* a request still running ``SLUICE_DRAIN_TIMEOUT`` seconds later is aborted:
  its upstream call is cancelled and its response cut short (never ended
  as if complete), and the access log says ``outcome: "aborted"``;
* a one-line summary of what was still in flight, and what was cut.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

logger = logging.getLogger("sluice.drain")


class Abortable(Protocol):
    def abort(self) -> None: ...


class Drain:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.draining = False
        self.in_flight: set[Abortable] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> None:
        """Chain onto the SIGTERM/SIGINT handlers uvicorn installed in this process.

        Called from the lifespan, so it runs in every worker, after uvicorn
        set its own handlers (which it restores itself at exit).
        """
        self._loop = asyncio.get_running_loop()
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach only the main thread (uvicorn skips them too)
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            signal.signal(sig, self._chained(previous))

    def _chained(self, previous: Any) -> Callable[[int, FrameType | None], None]:
        def handler(signum: int, frame: FrameType | None) -> None:
            if self._loop is not None and not self.draining:
                # Only a flag and a wake-up here: we are inside a signal handler.
                self.draining = True
                self._loop.call_soon_threadsafe(self._begin)
            if callable(previous):
                previous(signum, frame)

        return handler

    def begin(self) -> None:
        """Start draining now (what SIGTERM does)."""
        self._begin()

    def _begin(self) -> None:
        self.draining = True
        logger.warning(
            "draining: %d request(s) in flight; those still running in %gs will be aborted",
            len(self.in_flight),
            self.timeout,
        )
        loop = self._loop or asyncio.get_running_loop()
        loop.call_later(self.timeout, self._abort_remaining)

    def _abort_remaining(self) -> None:
        if self.in_flight:
            logger.warning("drain timeout: aborting %d request(s) still in flight", len(self.in_flight))
        for exchange in list(self.in_flight):
            exchange.abort()
