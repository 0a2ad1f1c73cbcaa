"""Access-log lines, written in batches so that workers sharing a file or pipe never interleave."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import stat
import sys
import time
from typing import Any, Final

from ..context import RequestContext
from .line import encode_record, log_line

logger = logging.getLogger("sluice.access_log")

# Lines are formatted when their batch is written, not as each request ends:
# the formatter then runs over a whole batch at once, which costs a loaded
# worker less than a line between every two requests (bench/README.md). A
# batch goes out at most ``flush_seconds`` after its first line, or at once
# when it holds _DEFER_MAX lines.
_DEFER_MAX: Final = 128
# A pipe (stdout under systemd or a container runtime) takes a write up to
# PIPE_BUF whole, so lines from several workers never interleave inside one.
# A regular file opened O_APPEND takes each write whole at any size (Linux
# holds the inode lock for it), and fewer, larger writes cost less.
_PIPE_BATCH: Final = 4096
_FILE_BATCH: Final = 65536
_ERROR_EVERY: Final = 10.0  # seconds between two reports of a failing write


class LogWriter:
    """Writes whole lines in batches, so workers sharing a file or pipe never interleave.

    Nothing is lost at :meth:`close` (what is pending is written); a worker
    killed outright loses at most the last ``flush_seconds`` of lines. With
    ``flush_seconds`` 0, a batch is what the requests ending in one event-loop
    step logged.
    """

    def __init__(self, target: str, flush_seconds: float = 0.05) -> None:
        self.target = target
        self.flush_seconds = flush_seconds
        self._fd: int | None
        self._pending: list[bytes] = []  # formatted lines, in order
        self._pending_bytes = 0
        # Requests ended and not yet formatted (they come after _pending).
        self._ctxs: list[RequestContext] = []
        self._ends: list[float] = []
        self._timer: asyncio.Handle | None = None
        self._last_error = -math.inf
        self._flush = self.flush  # bound once: scheduled for every batch
        if target == "off":
            self._fd = None
        elif target == "stdout":
            self._fd = sys.stdout.fileno()
        elif target == "stderr":
            self._fd = sys.stderr.fileno()
        else:
            self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        # stdout redirected to a file is a file; anything else may be a pipe.
        regular = self._fd is not None and stat.S_ISREG(os.fstat(self._fd).st_mode)
        self._batch = _FILE_BATCH if regular else _PIPE_BATCH

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def write(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one JSON line."""
        self.write_line(encode_record(record))

    def write_line(self, line: bytes) -> None:
        """Write ``line``: one JSON document in UTF-8, ending in its newline."""
        if self._fd is None:
            return
        if self._ctxs:
            self._format_deferred()  # they ended first: their lines go first
        self._pending.append(line)
        self._pending_bytes += len(line)
        if self._pending_bytes >= self._batch:
            self.flush()
        else:
            self._schedule()

    def log(self, ctx: RequestContext, now: float) -> None:
        """Write :func:`log_line` of ``ctx`` (``now`` ends its duration), formatted with its batch.

        ``ctx`` must not change after this: its request has ended.
        """
        if self._fd is None:
            return
        self._ctxs.append(ctx)
        self._ends.append(now)
        if len(self._ctxs) >= _DEFER_MAX:
            self.flush()
        else:
            self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a script, a test): write at once
            self.flush()
            return
        if self.flush_seconds > 0:
            self._timer = loop.call_later(self.flush_seconds, self._flush)
        else:
            self._timer = loop.call_soon(self._flush)

    def _format_deferred(self) -> None:
        ctxs, ends = self._ctxs, self._ends
        self._ctxs, self._ends = [], []
        pending = self._pending
        for i in range(len(ctxs)):
            line = log_line(ctxs[i], ends[i])
            pending.append(line)
            self._pending_bytes += len(line)

    def flush(self) -> None:
        """Write what is pending now (also run when a batch's time is up)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ctxs:
            self._format_deferred()
        if not self._pending:
            return
        lines = self._pending
        self._pending = []
        self._pending_bytes = 0
        fd = self._fd
        if fd is None:
            return
        try:
            # Whole lines, each write within the batch size (a longer line alone).
            batch, start, size = self._batch, 0, 0
            for i in range(len(lines)):
                n = len(lines[i])
                if size and size + n > batch:
                    _write_all(fd, b"".join(lines[start:i]))
                    start, size = i, 0
                size += n
            _write_all(fd, b"".join(lines[start:]))
        except OSError as exc:  # a full disk, a closed pipe: the requests go on, unlogged
            now = time.monotonic()
            if now - self._last_error >= _ERROR_EVERY:
                self._last_error = now
                logger.error("access log %s: write failed (%s); lines are being dropped", self.target, exc)

    def close(self) -> None:
        self.flush()
        if self._fd is not None and self.target not in ("stdout", "stderr"):
            os.close(self._fd)
        self._fd = None


def _write_all(fd: int, data: bytes) -> None:
    """``data`` in one write(2) where the kernel takes it whole (it does, for a file or a pipe's PIPE_BUF)."""
    written = os.write(fd, data)
    while written < len(data):  # a short write: a signal, or a pipe past PIPE_BUF
        data = data[written:]
        written = os.write(fd, data)
