"""The one aiohttp ``ClientSession`` each process uses to reach the providers.

Why aiohttp and these options: see DESIGN.md ("aiohttp is the upstream
client"). In short: bytes pass untouched (``auto_decompress=False``), nothing
is shared between users (no cookie jar), nothing is taken from the
environment (no proxies), redirects are the client's business, and there is no
total timeout, because a generation may rightly stream for many minutes.
"""

from __future__ import annotations

import aiohttp

from .config import Settings

# Headers aiohttp would add on its own. Leaving them out keeps the upstream
# request what the client sent: above all, no Accept-Encoding the client did
# not ask for, which would hand it a body compressed in a way it never offered
# to decode.
_NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


class UpstreamClient:
    """Holds the session; opened and closed by the app's lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

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
        if self._session is not None:
            await self._session.close()
            self._session = None
