"""How each process reaches the providers.

* The passthrough (every SDK request) goes through :mod:`proxy.h1client`'s
  keep-alive pool: a purpose-built HTTP/1.1 client that costs a fraction of
  a general one's CPU per request (see that module's docstring).
* The chat API's generations use one aiohttp ``ClientSession``: they are few
  and long, and use its conveniences (JSON bodies, readline).

Why these aiohttp options: see DESIGN.md ("aiohttp is the upstream
client"). In short: bytes pass untouched (``auto_decompress=False``), nothing
is shared between users (no cookie jar), nothing is taken from the
environment (no proxies), redirects are the client's business, and there is no
total timeout, because a generation may rightly stream for many minutes.
"""

from __future__ import annotations

from typing import Final

import aiohttp

from .config import Settings
from .h1client import ConnectionPool

# Headers aiohttp would add on its own. Leaving them out keeps the upstream
# request what the client sent: above all, no Accept-Encoding the client did
# not ask for, which would hand it a body compressed in a way it never offered
# to decode.
_NO_AUTO_HEADERS: Final = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


class UpstreamClient:
    """Holds the session; opened and closed by the app's lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._pool: ConnectionPool | None = None

    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            raise RuntimeError("the upstream pool is not open (lifespan has not started)")
        return self._pool

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the upstream session is not open (lifespan has not started)")
        return self._session

    @property
    def is_open(self) -> bool:
        return self._session is not None and not self._session.closed

    async def open(self) -> None:
        s = self.settings
        self._pool = ConnectionPool(s.connect_timeout)
        connector = aiohttp.TCPConnector(
            # No limit here: aiohttp would queue requests for a free connection
            # without bound; the passthrough caps concurrency itself and answers
            # 503 at once instead (SLUICE_POOL_SIZE).
            limit=0,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
            # Only the connect timeout is aiohttp's. The time to headers and the
            # idle time between chunks are timed by the passthrough, which knows
            # a slow client (backpressure) from a silent upstream.
            timeout=aiohttp.ClientTimeout(total=None, connect=s.connect_timeout, sock_read=None),
            # Provider responses carry long rate-limit and trace headers.
            max_field_size=32 * 1024,
        )

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None
