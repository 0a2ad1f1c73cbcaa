"""The middleware chain: pure ASGI layers around the passthrough, in configured order.

Built-in layers are named; your own are given as ``"module:Class"`` and
constructed as ``Class(app, **options)`` with the options from the config
file (README, "The middleware chain, and writing your own";
docs/architecture.md, "Adding a middleware layer"). The chain always sits
inside :class:`~proxy.gate.Gate`, which creates the request context the
layers share.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from ..asgi import ASGIApp
from ..config import ConfigError
from ..forwarded import TrustedProxies
from ..gate import Gate
from .access_log import AccessLog
from .auth import Auth
from .include_usage import IncludeUsage
from .model_policy import ModelPolicy
from .rate_limit import RateLimit

if TYPE_CHECKING:  # services imports the access log from this package
    from ..services import Services

logger = logging.getLogger("sluice")

Builder = Callable[[ASGIApp, "Services"], ASGIApp]

BUILTINS: Mapping[str, Builder] = {
    "access_log": lambda app, s: AccessLog(app, s.access_log, s.settings.log_bodies),
    "auth": lambda app, s: Auth(
        app, s.keys, s.metrics, s.settings.max_inspect_bytes, s.settings.model_aliases
    ),
    "model_policy": lambda app, s: ModelPolicy(app, s.settings.model_aliases, s.settings.max_inspect_bytes),
    "rate_limit": lambda app, s: RateLimit(app, s.limiter, s.metrics, s.settings.redis_failure),
}


# A built-in layer with nothing to do in this configuration is left out of the
# chain, rather than called on every request only to pass it on: no access log
# to write, or no client keys (so nothing to authenticate and no key's limits).
IDLE: Mapping[str, Callable[[Services], bool]] = {
    "access_log": lambda s: not s.access_log.enabled,
    "auth": lambda s: s.keys is None,
    "model_policy": lambda s: s.keys is None and not s.settings.model_aliases,
    "rate_limit": lambda s: s.keys is None,
}


def import_middleware(path: str) -> Callable[..., ASGIApp]:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(
            "SLUICE_CONFIG", f"middleware {path!r} is neither built in nor a 'module:Class' path"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as uvicorn does, so ./mymiddleware.py is found
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError("SLUICE_CONFIG", f"cannot import middleware {path!r}: {exc}") from None
    if not callable(factory):
        raise ConfigError("SLUICE_CONFIG", f"middleware {path!r} is not callable")
    return factory  # type: ignore[no-any-return]


def check_chain(chain: tuple[str, ...], services: Services) -> None:
    if services.keys is not None and "auth" not in chain:
        raise ConfigError("SLUICE_CONFIG", "client keys are configured but 'auth' is not in middleware.chain")
    if "rate_limit" in chain and "auth" in chain and chain.index("rate_limit") < chain.index("auth"):
        raise ConfigError(
            "SLUICE_CONFIG", "'rate_limit' must come after 'auth': it limits the key auth found"
        )
    if "model_policy" in chain and "auth" in chain and chain.index("model_policy") < chain.index("auth"):
        raise ConfigError(
            "SLUICE_CONFIG", "'model_policy' must come after 'auth': it applies the key's policy"
        )
    if services.settings.model_aliases and "model_policy" not in chain:
        raise ConfigError(
            "SLUICE_CONFIG", "model aliases are configured but 'model_policy' is not in middleware.chain"
        )
    if services.keys is not None and "model_policy" not in chain:
        logger.warning(
            "'model_policy' is not in middleware.chain: keys' force_model, default_model "
            "and max_output_tokens are not applied"
        )
    duplicates = {name for name in chain if chain.count(name) > 1}
    if duplicates:
        raise ConfigError("SLUICE_CONFIG", f"middleware listed twice: {', '.join(sorted(duplicates))}")


def build_chain(endpoint: ASGIApp, services: Services) -> ASGIApp:
    """Wrap ``endpoint`` in the configured layers, outermost first in the list."""
    settings = services.settings
    check_chain(settings.chain, services)
    app = endpoint
    if settings.openai_include_usage:
        app = IncludeUsage(app, settings.max_inspect_bytes)
    for name in reversed(settings.chain):
        options = dict(settings.middleware_options.get(name, {}))
        if name in BUILTINS:
            if options:
                raise ConfigError("SLUICE_CONFIG", f"the built-in middleware {name!r} takes no options")
            if not IDLE[name](services):
                app = BUILTINS[name](app, services)
        else:
            try:
                app = import_middleware(name)(app, **options)
            except TypeError as exc:
                raise ConfigError(
                    "SLUICE_CONFIG", f"middleware {name!r} rejected its options: {exc}"
                ) from None
    if services.tracing is not None:  # outermost inside the Gate: it sees every layer's verdict
        app = services.tracing.layer(app)
    return Gate(app, services.metrics, TrustedProxies(settings.trusted_proxies))
