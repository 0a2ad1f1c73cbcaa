"""Being told that the client has gone while nothing reads from it.

While the passthrough waits for the upstream, nobody calls ``receive()``: a
client that leaves would go unnoticed until the next send, and the upstream
would go on generating (and billing) for nobody. A :class:`DisconnectWatch`
calls ``on_gone()`` as soon as the client leaves:

* through the server's disconnect extension when it offers one (the fast
  server: ``proxy.http.DISCONNECT_EXTENSION``), with no task and no timer;
* otherwise through a task waiting in ``receive()`` for ``http.disconnect``,
  started ``START_DELAY`` seconds in: most requests are answered sooner and
  never need it, and a client gone before it starts is still seen when it
  does (the server remembers a disconnect).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .asgi import Receive, Scope
from .http import DISCONNECT_EXTENSION

START_DELAY = 0.01  # seconds before a watcher task is started

Watcher = Callable[[Receive, Callable[[], None] | None], bool]


class DisconnectWatch:
    """Calls ``on_gone()`` once, when the client goes; :meth:`stop` when the answer is done."""

    __slots__ = ("_extension", "_loop", "_on_gone", "_receive", "_task", "_timer")

    def __init__(
        self, scope: Scope, receive: Receive, on_gone: Callable[[], None], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._receive = receive
        self._on_gone: Callable[[], None] | None = on_gone
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Future[None] | None = None
        self._extension: Watcher | None = None
        extensions = scope.get("extensions")
        extension = extensions.get(DISCONNECT_EXTENSION) if extensions is not None else None
        if extension is not None and extension(receive, self._gone):
            self._extension = extension
        else:
            self._timer = loop.call_later(START_DELAY, self._start_task)

    def stop(self) -> None:
        """No more calls to ``on_gone``; the watcher task, if any, is cancelled.

        Everything that points back at the request is dropped here, so a
        finished request leaves no reference cycle for the collector.
        """
        self._on_gone = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        extension, self._extension = self._extension, None
        if extension is not None:
            extension(self._receive, None)

    def _gone(self) -> None:
        on_gone, self._on_gone = self._on_gone, None
        if on_gone is not None:
            on_gone()

    def _start_task(self) -> None:
        self._timer = None
        if self._on_gone is not None:
            self._task = asyncio.ensure_future(self._wait(), loop=self._loop)

    async def _wait(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._gone()
                return
