"""Helpers shared by the SDK integration tests (tests/test_sdk_*.py)."""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Sequence

from proxy.mock import MockHandle, MockRecord, mock_tokens
from tests.conftest import CLIENT_KEY, SluiceFactory, SluiceProcess, upstream_env

# Seconds: the per-call timeout given to SDK clients and asyncio.wait_for,
# below the tests' own pytest-timeout so a hang fails with a useful trace.
GUARD = 10.0

# Every header a client or Sluice may authenticate with.
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "api-key")


def text(n: int) -> str:
    """The full reply the mock gives for ``x-mock-tokens: n``."""
    return "".join(mock_tokens(n))


def mock_input_tokens(rec: MockRecord) -> int:
    """The mock's prompt/input token count: a quarter of the request body bytes it received."""
    return max(1, rec.body_bytes // 4)


def closed_port() -> int:
    """A loopback port with nothing listening on it (bound, read, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_upstream_credential(rec: MockRecord, header: str, value: str) -> None:
    """The upstream got exactly the server-held key in ``header`` and no other credential.

    The client's own key must appear nowhere in what the upstream received.
    """
    assert rec.headers.get(header) == value
    present = {h for h in CREDENTIAL_HEADERS if h in rec.headers}
    assert present == {header}, f"unexpected credential headers upstream: {present}"
    for name, val in rec.headers.items():
        assert CLIENT_KEY not in name and CLIENT_KEY not in val, f"client key leaked in header {name}"
    assert CLIENT_KEY not in rec.query
    assert CLIENT_KEY not in rec.path


class DeltaClock:
    """Arrival times (time.monotonic) of the non-empty text deltas a client sees."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.texts: list[str] = []

    def add(self, delta: str | None) -> None:
        if delta:
            self.times.append(time.monotonic())
            self.texts.append(delta)

    @property
    def text(self) -> str:
        return "".join(self.texts)


def assert_paced(
    times: Sequence[float], *, min_spread: float = 0.2, window: float = 0.005, max_in_window: int = 2
) -> None:
    """Deltas arrived spread out, as the upstream paced them, not buffered into one burst.

    The first-to-last spread is at least ``min_spread`` seconds, and no
    ``window`` seconds hold more than ``max_in_window`` deltas.
    """
    assert len(times) > max_in_window, f"too few deltas: {len(times)}"
    spread = times[-1] - times[0]
    assert spread >= min_spread, f"deltas spread over {spread * 1000:.0f} ms only"
    gaps_ms = [round((b - a) * 1000, 1) for a, b in itertools.pairwise(times)]
    for i in range(len(times) - max_in_window):
        span = times[i + max_in_window] - times[i]
        assert span > window, f"{max_in_window + 1} deltas within {span * 1000:.1f} ms (gaps ms: {gaps_ms})"


# Per factory (one per transport mode). The entry holds the factory itself:
# keyed by id() alone, a later factory could get a finished one's id and be
# handed its stopped Sluice (the stock-mode tests once were).
_dead: dict[int, tuple[SluiceFactory, SluiceProcess]] = {}


def dead_upstream_sluice(mock: MockHandle, factory: SluiceFactory) -> SluiceProcess:
    """A Sluice whose three upstreams point at a closed loopback port (started once per factory)."""
    cached = _dead.get(id(factory))
    if cached is None:
        dead = f"http://127.0.0.1:{closed_port()}"
        env = {
            **upstream_env(mock),
            "SLUICE_OPENAI_UPSTREAM": dead,
            "SLUICE_GEMINI_UPSTREAM": dead,
            "SLUICE_ANTHROPIC_UPSTREAM": dead,
        }
        cached = _dead[id(factory)] = (factory, factory(**env))
    return cached[1]
