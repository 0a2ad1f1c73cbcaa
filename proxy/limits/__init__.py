"""Per-key rate limits: the decision type, the backend protocol, and the backends.

* :mod:`proxy.limits.memory` — one process, in memory.
* :mod:`proxy.limits.redis` — shared by every worker and instance through Redis;
  atomic Lua scripts on Redis's own clock.
"""

from .base import Decision, Limiter, LimiterUnavailable, Limits

__all__ = ["Decision", "Limiter", "LimiterUnavailable", "Limits"]
