"""The access log: each request's line (:mod:`.line`) and the batched writer (:mod:`.writer`).

The layer that writes a line per request is :mod:`proxy.middleware.access_log`.
"""

from .line import log_line, log_record
from .writer import LogWriter

__all__ = ["LogWriter", "log_line", "log_record"]
