"""Reading a request body whole, for the few cases that must, and handing it on."""

from __future__ import annotations

from .asgi import Message, Receive


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
