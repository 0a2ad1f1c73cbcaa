"""The server side of a WebSocket: uvicorn's protocol, drained by Sluice at shutdown.

Both transports hand an ``Upgrade: websocket`` request to
``config.ws_protocol_class`` (uvicorn's httptools protocol does; the fast
one, ``h1server``, does the same). This is that class: uvicorn's sans-I/O
websocket protocol (websockets' state machine, reading paused until the app
has taken each message, ``send`` waiting while the socket's buffer is full,
keepalive pings), with one change. At shutdown uvicorn closes every open
websocket at once with 1012; Sluice instead lets realtime sessions run on
through the drain window (``SLUICE_DRAIN_TIMEOUT``) and closes what is left
with 1001 itself (``proxy/realtime``, ``proxy/drain.py``).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class SessionProtocol(WebSocketsSansIOProtocol):
    def shutdown(self) -> None:
        if self.handshake_complete and not self.close_sent and not self.disconnected:
            return  # an open session: the drain closes it (1001) when its window ends
        super().shutdown()


def websocket_options(max_size: int, ping_interval: float) -> dict[str, Any]:
    """The ``uvicorn.Config`` arguments for the client side of realtime sessions.

    No permessage-deflate: the messages pass through as they are, and a
    zlib context per direction costs memory on every idle session and CPU
    on every frame (docs/realtime.md, "Compression").
    """
    return {
        "ws": SessionProtocol,
        "ws_max_size": max_size,
        "ws_ping_interval": ping_interval,
        "ws_ping_timeout": ping_interval,
        "ws_per_message_deflate": False,
    }
