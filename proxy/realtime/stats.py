"""What a realtime session's access-log line and metrics say beyond the request context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

STATS_KEY: Final = "sluice.realtime"  # the scope entry holding a session's SessionStats

Side = Literal["client", "upstream", "sluice"]


@dataclass(slots=True)
class SessionStats:
    frames_in: int = 0  # messages client -> upstream
    frames_out: int = 0  # messages upstream -> client
    close_code: int | None = None  # the code the session ended with, as the side that ended it sent it
    closed_by: Side | None = None

    def log_fields(self) -> dict[str, object]:
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "close_code": self.close_code,
            "closed_by": self.closed_by,
        }
