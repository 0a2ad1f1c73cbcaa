"""What the rest of Sluice may know about HTTP machinery: an origin, a client, a response, three errors.

Both transports (``fast``: Sluice's own protocol and client; ``stock``:
uvicorn's protocol and aiohttp) implement this, and nothing outside
``proxy.http`` imports either one. A behaviour the domain relies on is
promised here, so both must keep it:

* The request goes upstream as given: method, target and headers byte for
  byte, plus ``Host`` and the body's framing (``Content-Length``, or chunked
  when a streamed body has no declared length). Nothing else is added: no
  ``Accept-Encoding``, no ``User-Agent``, no cookies, nothing from the
  environment (proxies), no redirect followed.
* The response's body comes back as the upstream sent it, de-chunked but
  never decompressed: each :meth:`Response.read` returns what has arrived
  since the last one, as soon as it arrives.
* Memory is bounded: reading from the upstream pauses while unread body bytes
  pile up, and an upload waits for the socket to drain.
* Failures are told apart by what they mean for a retry:
  :class:`ConnectFailed` (the upstream never saw the request: safe to send it
  elsewhere), :class:`ResponseBroken` (it may have: never retried once it went
  out on a fresh connection), :class:`TimeoutError` (a read's deadline passed;
  the response is still usable).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

Headers = list[tuple[bytes, bytes]]
"""Header pairs with lower-case names, as Sluice builds and reads them."""

HttpMode = Literal["fast", "stock"]
HTTP_MODES: tuple[HttpMode, ...] = ("fast", "stock")

Body = bytes | AsyncIterator[bytes] | None
"""A request body: whole, or pieces as they arrive from the client (sent once, never replayed)."""

DISCONNECT_EXTENSION = "sluice.disconnect"
"""The scope extension by which the fast server tells the app its client has gone.

``scope["extensions"][DISCONNECT_EXTENSION](receive, on_gone)`` returns True
when the server will call ``on_gone()`` once the client is gone (or at once,
soon, if it is gone already), so the app needs no task waiting in
``receive()``; ``on_gone=None`` withdraws the request. It returns False for a
``receive`` the server did not hand out (a layer wrapped it): the caller must
then watch ``receive()`` itself. The stock server has no such extension.
"""


class UpstreamError(Exception):
    """The upstream exchange failed."""


class ConnectFailed(UpstreamError):
    """No connection could be made: the upstream never saw the request."""

    def __init__(self, cause: OSError | None, timed_out: bool = False) -> None:
        super().__init__("connect timed out" if timed_out else f"connect failed: {cause.__class__.__name__}")
        self.cause = cause
        self.timed_out = timed_out


class ResponseBroken(UpstreamError):
    """The connection failed, or the upstream broke HTTP, after the request went out."""

    def __init__(self, reason: str, before_response: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.before_response = before_response  # not a byte of the response had arrived


@dataclass(frozen=True, slots=True)
class Origin:
    """Scheme, host and port of an upstream, from configuration (never from a request)."""

    scheme: str
    host: str
    port: int
    host_header: bytes = field(init=False, compare=False, repr=False)
    _hash: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        value = (host if self.port == default else f"{host}:{self.port}").encode("idna")
        object.__setattr__(self, "host_header", value)
        object.__setattr__(self, "_hash", hash((self.scheme, self.host, self.port)))

    def __hash__(self) -> int:
        return self._hash  # an origin keys the connection pool on every request

    @property
    def url(self) -> str:
        """``scheme://host[:port]``, for clients that want a URL."""
        return f"{self.scheme}://{self.host_header.decode('ascii')}"


class Response(Protocol):
    """An upstream response whose headers are in; its body is read piece by piece."""

    status: int
    headers: Headers  # lower-case names, in the upstream's order

    def header(self, name: bytes) -> bytes | None:
        """The first value of ``name`` (lower-case), or None."""
        ...

    async def read(self, deadline: float | None = None) -> bytes:
        """What has arrived since the last read; ``b""`` once the body has ended.

        Raises :class:`TimeoutError` if nothing arrives before ``deadline``
        (a ``loop.time()``), and :class:`ResponseBroken` if the body was cut
        short: never a clean end for an incomplete body.
        """
        ...

    @property
    def complete(self) -> bool:
        """Whether the body has ended and every byte of it was read."""
        ...

    def close(self) -> None:
        """Done with it. An unfinished body drops the connection: that is what
        tells the upstream to stop generating (and billing)."""
        ...


class Client(Protocol):
    """A keep-alive pool of upstream connections, one per worker process."""

    async def request(
        self,
        origin: Origin,
        method: str,
        target: bytes,
        headers: Headers,
        body: Body = None,
        length: int | None = None,
    ) -> Response:
        """Send one request; return its response once the headers are in.

        ``target`` is the path and query as written on the request line.
        ``headers`` must not carry ``Host`` or framing headers: the client
        writes them. A streamed ``body`` is sent with ``length`` as its
        ``Content-Length``, or chunked when ``length`` is None. Cancelling the
        call drops the connection.

        A kept-alive connection the upstream closed just as it was reused
        fails before a byte of response; then the request, if its body is
        bytes (so it can be sent again), goes once more on another
        connection. A request that went out on a fresh connection is never
        sent twice.
        """
        ...

    @property
    def is_open(self) -> bool: ...

    async def open(self) -> None:
        """Called once, in the worker's event loop, before the first request."""
        ...

    async def close(self) -> None: ...


def connection_tokens(value: bytes) -> list[bytes]:
    """The options of one ``Connection`` header value, lowercased: ``close``, ``upgrade``, header names."""
    return [token.strip().lower() for token in value.split(b",")]


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """The first value of ``name`` in ``headers``."""
    for n, v in headers:
        if n == name:
            return v
    return None
