"""The mock provider: a real HTTP server speaking the OpenAI, Gemini and Anthropic formats.

``sluice serve --mock`` (and ``make run`` without provider keys) puts it
behind Sluice; ``sluice mock`` runs it alone; the tests drive it through
``x-mock-*`` request headers (see :mod:`.server`).

* :mod:`.server`: the aiohttp server, fault injection, the record of every request;
* :mod:`.formats`: each provider's wire format (bodies, streams, usage);
* :mod:`.auth`: credentials (per-key errors, a token endpoint, Vertex AI);
* :mod:`.realtime`: WebSocket sessions, OpenAI Realtime (:mod:`.realtime_openai`)
  and Gemini Live (:mod:`.realtime_gemini`).
"""

from .formats import mock_tokens
from .realtime import mock_audio
from .server import MockHandle, MockRecord, MockState, build_mock_app, serve_mock, start_mock_in_thread

__all__ = [
    "MockHandle",
    "MockRecord",
    "MockState",
    "build_mock_app",
    "mock_audio",
    "mock_tokens",
    "serve_mock",
    "start_mock_in_thread",
]
