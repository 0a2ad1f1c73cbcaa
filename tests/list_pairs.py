"""A test middleware: ASGI allows header pairs to be lists, so this one makes them so.

Placed first in the chain, every layer after it and the passthrough see
``[name, value]`` lists where the server gave tuples, and a pair it adds on
each side. Compiled code that unpacks pairs as typed tuples fails on them.
"""

from __future__ import annotations

from proxy.asgi import ASGIApp, Message, Receive, Scope, Send


class ListPairs:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [[name, value] for name, value in scope["headers"]]
        scope = {**scope, "headers": [*headers, [b"x-listed", b"request"]]}

        async def send_listed(message: Message) -> None:
            if message["type"] == "http.response.start":
                pairs = [[name, value] for name, value in message.get("headers", ())]
                message = {**message, "headers": [*pairs, [b"x-listed", b"response"]]}
            await send(message)

        await self.app(scope, receive, send_listed)
