"""Reading Sluice's JSON access log in tests.

Lines are written in batches, up to ``SLUICE_ACCESS_LOG_FLUSH`` (50 ms)
after their request ended: a test waits for them rather than reading at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path


def read_lines(*paths: Path) -> list[dict[str, object]]:
    """Every complete line: one still being written (no newline yet) is left for the next read."""
    lines: list[dict[str, object]] = []
    for path in paths:
        if path.exists():
            text = path.read_text()
            complete = text[: text.rfind("\n") + 1]
            lines += [json.loads(line) for line in complete.splitlines() if line.strip()]
    return lines


def wait_for_line(paths: Iterable[Path], request_id: str, timeout: float = 5.0) -> dict[str, object]:
    """The access-log line of ``request_id``, waiting for the request to end."""
    paths = list(paths)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in read_lines(*paths):
            if line["request_id"] == request_id:
                return line
        time.sleep(0.02)
    raise AssertionError(f"no access-log line for {request_id}")


def wait_for_count(paths: Iterable[Path], count: int, timeout: float = 5.0) -> list[dict[str, object]]:
    """The lines of ``paths`` once there are ``count`` of them in all (never more than asked)."""
    paths = list(paths)
    deadline = time.monotonic() + timeout
    while True:
        lines = read_lines(*paths)
        if len(lines) >= count or time.monotonic() >= deadline:
            assert len(lines) == count, f"{len(lines)} access-log lines, expected {count}"
            return lines
        time.sleep(0.02)
