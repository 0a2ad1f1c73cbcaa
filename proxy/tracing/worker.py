"""One worker's tracing: its provider, the server-span layer and the client wrapper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from urllib.parse import urlsplit

from opentelemetry import trace

from .. import __version__
from ..asgi import ASGIApp
from ..config import Settings
from ..http import Client
from .client import TracedClient
from .layer import ServerSpans
from .provider import build_provider

logger = logging.getLogger("sluice")

# Seconds to export what is left at shutdown: a collector that is down is not waited for.
SHUTDOWN_TIMEOUT = 3.0


class Tracing:
    """One worker's tracing."""

    def __init__(self, settings: Settings) -> None:
        assert settings.tracing is not None
        self.settings = settings.tracing
        self.provider, self.processor = build_provider(settings.tracing, __version__)
        self.tracer = self.provider.get_tracer("sluice", __version__)
        gemini = settings.upstreams.get("gemini")
        self.vertex_labels = frozenset(
            c.label for c in (gemini.credentials if gemini else ()) if c.kind == "vertex"
        )
        # For layers of the user's own that want spans of their own
        # (trace.get_tracer(...)). Settable once per process: a second app in
        # the same process (tests) keeps the first.
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(self.provider)

    def layer(self, app: ASGIApp) -> ASGIApp:
        return ServerSpans(app, self.tracer, self.vertex_labels)

    def client(self, inner: Client) -> Client:
        return TracedClient(inner, self.tracer)

    def started(self) -> None:
        # Scheme, host and port only: a URL may carry user:password@.
        where = urlsplit(self.settings.endpoint)
        shown = f"{where.scheme}://{where.hostname}:{where.port or ''}".rstrip(":")
        logger.info("tracing: exporting spans to %s (sampler %s)", shown, self.settings.sampler)

    async def shutdown(self) -> None:
        """Export what is left, for at most :data:`SHUTDOWN_TIMEOUT` seconds, off the event loop.

        In a daemon thread of its own, not the loop's executor: the
        interpreter waits for the executor's threads at exit, and the SDK's
        shutdown can wait 30 s for a collector that is down.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def finished() -> None:
            if not done.done():
                done.set_result(None)

        def shut_down() -> None:
            self.provider.shutdown()
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
                loop.call_soon_threadsafe(finished)

        threading.Thread(target=shut_down, name="sluice-tracing-shutdown", daemon=True).start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done, SHUTDOWN_TIMEOUT)
