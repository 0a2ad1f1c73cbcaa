"""Sluice: a transparent, streaming reverse proxy for LLM provider APIs.

The public entry points are ``proxy.app.create_app`` (an ASGI app built from
``proxy.config.Settings``) and the ``sluice`` command (``proxy.cli``).
"""

__version__ = "0.1.0"

# Before anything imports a compiled module: proxy.http.native decides whether to use them.
from . import http as http
