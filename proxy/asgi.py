"""ASGI type aliases shared by the endpoint and the middleware.

Scopes and messages are dicts, as the ASGI specification makes them (and as
every server and middleware builds them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
