"""The request body: read whole for the few cases that must, or streamed on piece by piece."""

from __future__ import annotations

from collections.abc import Callable

from .asgi import Message, Receive
from .context import RequestContext


def replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that yields ``messages`` first, then asks the real one."""
    pending = list(messages)

    async def replaying() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replaying


async def read_body(receive: Receive, limit: int) -> tuple[bytes | None, Receive]:
    """Read the request body if it is at most ``limit`` bytes.

    Returns the body (``None`` when it is larger, or the client left) and a
    ``receive`` that gives the next layer the very same bytes. A body that
    fits is replayed as one message, so the passthrough forwards it in one go.
    """
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return None, replay(messages, receive)
        size += len(message.get("body", b""))
        if size > limit:
            return None, replay(messages, receive)
        if not message.get("more_body", False):
            body = b"".join(m.get("body", b"") for m in messages)
            whole: Message = {"type": "http.request", "body": body, "more_body": False}
            return body, replay([whole], receive)


class RequestBody:
    """The rest of a request body, as an async iterator of the pieces the client sends.

    For an upload streamed upstream as it arrives, never held whole. Starts
    with ``first`` (what the first message carried), counts every piece in
    ``ctx.bytes_in``, calls ``on_end()`` once the last piece is in, and
    ``on_gone()`` then raises :class:`ConnectionAbortedError` if the client
    leaves half-way.
    """

    __slots__ = ("_ctx", "_done", "_first", "_on_end", "_on_gone", "_receive")

    def __init__(
        self,
        receive: Receive,
        first: bytes,
        ctx: RequestContext,
        on_end: Callable[[], None],
        on_gone: Callable[[], None],
    ) -> None:
        self._receive = receive
        self._first = first
        self._ctx = ctx
        self._on_end = on_end
        self._on_gone = on_gone
        self._done = False

    def __aiter__(self) -> RequestBody:
        return self

    async def __anext__(self) -> bytes:
        if self._first:
            first, self._first = self._first, b""
            return first
        while not self._done:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._on_gone()
                raise ConnectionAbortedError("client disconnected during the upload")
            chunk: bytes = message.get("body", b"")
            self._ctx.bytes_in += len(chunk)
            if not message.get("more_body", False):
                self._done = True
                self._on_end()
            if chunk:
                return chunk
        raise StopAsyncIteration
