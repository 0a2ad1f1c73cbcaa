"""Sluice's event loop: uvloop, with its connecting coroutines started in tasks of their own.

Why: on Python 3.11, uvloop's coroutines (Cython's) can crash the process
when they start while an exception is being handled.

- A Cython coroutine saves the exception being handled when it starts, and
  releases it when it finishes. If that release is the last reference, the
  exception's traceback frees its frames, and a finaliser in them may run
  Python code that catches an exception of its own. On 3.11 that leaves
  ``None`` in the coroutine's exception slot, which Cython's generated code
  then reads as an exception and dereferences. The process dies with SIGSEGV.
  (Cython checks only for NULL. Later Pythons were not tried here.)
- Interpreted code rarely meets this: the frame handling the exception holds
  it until the block ends. mypyc-compiled coroutines (``README.md`` beside
  this module, "The compiled build") meet it as soon as a failure is
  delivered into them: they treat an exception thrown in as being handled
  while it travels down the await chain. A connection opened to fail over, or to retry, then starts with that
  exception saved. That is how it was found: a Vertex token refusal, then
  ``create_connection`` for the next credential; google-auth's finaliser
  closing its requests session did the rest.

A task of its own starts with no exception being handled, so these methods
run their uvloop coroutine in one. It costs a task per new connection or DNS
lookup; requests on a kept-alive connection never come here. Every caller
in the process goes through them: Sluice's upstream pool, redis-py, aiohttp.
"""

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop


def in_own_task(method: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Coroutine[Any, Any, Any]]:
    """``method`` (a loop's coroutine method), run in a task of its own."""

    async def run(self: asyncio.AbstractEventLoop, *args: Any, **kwargs: Any) -> Any:
        task = self.create_task(method(self, *args, **kwargs))
        try:
            return await task
        except asyncio.CancelledError:
            # Cancelled after the task had finished: nobody will ever see the
            # connection it made, so close it here rather than leak it.
            if task.done() and not task.cancelled() and task.exception() is None:
                _close(task.result())
            raise

    run.__name__ = run.__qualname__ = method.__name__
    run.__doc__ = method.__doc__
    return run


def _close(result: object) -> None:
    if isinstance(result, tuple) and result and hasattr(result[0], "close"):
        result[0].close()  # (transport, protocol)


class Loop(uvloop.Loop):
    create_connection = in_own_task(uvloop.Loop.create_connection)
    create_unix_connection = in_own_task(uvloop.Loop.create_unix_connection)
    getaddrinfo = in_own_task(uvloop.Loop.getaddrinfo)


def new_event_loop() -> asyncio.AbstractEventLoop:
    return Loop()


UVICORN_LOOP = f"{__name__}:new_event_loop"  # uvicorn's `loop` setting (server_options in __init__.py)
