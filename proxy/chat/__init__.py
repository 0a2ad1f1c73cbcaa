"""One stream for browsers: Sluice's provider-neutral chat API, with resume and cancel.

``POST /api/chat`` (or ``GET`` for ``EventSource``) turns a neutral request
into the provider's own streaming call and answers with Sluice's events:
``start``, ``token``, ``usage``, ``done`` or ``error``. The generation runs
apart from the connection, so a client that reconnects with ``Last-Event-ID``
misses nothing; with Redis, on any instance. See README.md ("One stream for browsers").

Modules: ``request`` (parsing), ``providers`` (native requests and streams),
``events`` (the events and their SSE form), ``store``/``redis_store`` (where
events live), ``generation`` (the upstream call), ``follow`` (one client
connection), ``api`` (the routes) and ``responses`` (its JSON answers),
``playground`` (the page).
"""

from .api import ChatApi
from .playground import playground_route

__all__ = ["ChatApi", "playground_route"]
