"""Sluice's HTTP machinery, behind one small interface.

Everything that knows httptools, uvloop, uvicorn's internals, aiohttp or
mypyc lives in this package; the rest of Sluice imports only what this
module exports (see ``README.md`` beside it for why the machinery is custom
and how it is built). Two transports implement the interface:

* ``fast`` (the default): Sluice's own HTTP/1.1 server protocol (given to
  uvicorn in place of its own) and upstream client, on httptools, compiled by
  mypyc when the build is there;
* ``stock``: uvicorn's own httptools protocol and aiohttp's client. Slower,
  and the reference the fast one is tested against: the same tests run in
  both modes, and an operator can rule the custom transport out with
  ``SLUICE_HTTP=stock``.
"""

from __future__ import annotations

from typing import Any

# First: it decides whether compiled modules are imported at all.
from . import native as native
from .interface import (
    DISCONNECT_EXTENSION,
    HTTP_MODES,
    Body,
    Client,
    ConnectFailed,
    Headers,
    HttpMode,
    Origin,
    Response,
    ResponseBroken,
    UpstreamError,
    connection_tokens,
    header_value,
)

__all__ = [
    "DISCONNECT_EXTENSION",
    "HTTP_MODES",
    "Body",
    "Client",
    "ConnectFailed",
    "Headers",
    "HttpMode",
    "Origin",
    "Response",
    "ResponseBroken",
    "UpstreamError",
    "connection_tokens",
    "header_value",
    "new_client",
    "server_options",
    "websocket_options",
]


def new_client(mode: HttpMode, connect_timeout: float) -> Client:
    """The upstream client of ``mode``; :meth:`Client.open` it in the worker's loop."""
    if mode == "stock":
        from .aioclient import AiohttpClient

        return AiohttpClient(connect_timeout)
    from .h1client import ConnectionPool

    return ConnectionPool(connect_timeout)


def websocket_options(max_size: int, ping_interval: float) -> dict[str, Any]:
    """The ``uvicorn.Config`` arguments for WebSocket sessions (``wsserver.py``), in either mode."""
    from .wsserver import websocket_options as options

    return options(max_size, ping_interval)


def server_options(mode: HttpMode, log_config: dict[str, Any]) -> dict[str, Any]:
    """The ``uvicorn.Config`` arguments that choose the server protocol, event loop and logging.

    The loop follows the build, not the mode: compiled coroutines need
    Sluice's loop (``eventloop.py``), interpreted code runs on uvloop as is.
    ``log_config`` is the logging set-up to run with, adjusted for the mode.
    """
    from .eventloop import UVICORN_LOOP

    loop = UVICORN_LOOP if native.COMPILED else "uvloop"
    if mode == "stock":
        from . import stock

        return {"http": "httptools", "loop": loop, "log_config": stock.log_config(log_config)}
    from .h1server import H1Protocol

    return {"http": H1Protocol, "loop": loop, "log_config": log_config}
