"""The stock server's adjustments: uvicorn's own protocol, told apart from Sluice's where it must be.

The stock client is :mod:`.aioclient`; the stock server is uvicorn's
httptools protocol as it is, with one change to what it logs.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

# What uvicorn's protocol logs, at ERROR, when the app returns without
# completing its response.
_CUT = "ASGI callable returned without completing response."


class CutStreamFilter(logging.Filter):
    """Logs uvicorn's "returned without completing response" at DEBUG, as the fast server does.

    Returning without the final message is how Sluice cuts a stream the
    upstream broke off (the client must not take it for complete), and
    Sluice logs its own warning saying why: an ERROR on top would be noise.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != _CUT:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def log_config(base: dict[str, Any]) -> dict[str, Any]:
    """``base`` (a logging dictConfig for uvicorn) with :class:`CutStreamFilter` on uvicorn's error log."""
    config = copy.deepcopy(base)
    config.setdefault("filters", {})["sluice_cut_stream"] = {"()": f"{__name__}.CutStreamFilter"}
    error_logger = config.setdefault("loggers", {}).setdefault("uvicorn.error", {})
    error_logger["filters"] = [*error_logger.get("filters", []), "sluice_cut_stream"]
    return config
