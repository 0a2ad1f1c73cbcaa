"""One WebSocket handshake with the ``websockets`` library, and what the server made of it.

A server may refuse a handshake with an HTTP status (what uvicorn sends when
the app closes before accepting), accept it and close at once with a close
frame (code and reason), or accept it and keep the session open. The tests
of the edges (TLS, nginx, log redaction) need to know which one came back,
and that it came from Sluice: not a TLS failure, not an nginx error page.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus


@dataclass
class Handshake:
    outcome: str  # "refused" (an HTTP status), "closed" (a close frame) or "open"
    status: int | None = None  # the HTTP status of a refusal (101 once accepted)
    code: int | None = None  # the close frame's code
    reason: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # the response's, lower-case names
    body: bytes = b""


async def handshake(
    url: str,
    *,
    tls: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
    subprotocols: list[str] | None = None,
    timeout: float = 15.0,
    wait: float | None = None,
) -> Handshake:
    """Open ``url`` (``ws://`` or ``wss://``), wait up to ``timeout`` (or ``wait``, once open) for a
    first message or a close, and report what happened."""
    try:
        async with asyncio.timeout(timeout + 5):
            async with connect(
                url,
                ssl=tls,
                additional_headers=headers,
                subprotocols=subprotocols,  # type: ignore[arg-type]
                open_timeout=timeout,
                close_timeout=2,
            ) as ws:
                response = ws.response
                assert response is not None
                accepted = {k.lower(): v for k, v in response.headers.raw_items()}
                try:
                    await asyncio.wait_for(ws.recv(), timeout if wait is None else wait)
                except ConnectionClosed as exc:
                    frame = exc.rcvd
                    return Handshake(
                        "closed", 101, frame.code if frame else 1006, frame.reason if frame else "", accepted
                    )
                except TimeoutError:
                    pass
                return Handshake("open", 101, headers=accepted)
    except InvalidStatus as exc:
        refusal = exc.response
        return Handshake(
            "refused",
            refusal.status_code,
            headers={k.lower(): v for k, v in refusal.headers.raw_items()},
            body=refusal.body or b"",
        )
