"""A test middleware that wraps ``receive``, as a layer inspecting the request body would.

Sluice's server tells the passthrough of a client gone through the
``sluice.disconnect`` scope extension, but only for the ``receive`` it gave
the app (proxy/http/h1server.py, ``watch_disconnect``). Behind this layer the
passthrough must fall back to waiting in ``receive()`` and still cancel the
upstream at once.
"""

from __future__ import annotations

from proxy.asgi import ASGIApp, Message, Receive, Scope, Send


class WrappedReceive:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def wrapped() -> Message:
            return await receive()

        await self.app(scope, wrapped, send)
