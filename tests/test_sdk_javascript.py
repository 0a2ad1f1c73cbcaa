"""The official JavaScript SDKs (``openai``, ``@google/genai``) through Sluice, run by node.

Browsers and Node services are where a server-held key matters most; these
check that the JavaScript clients, which build their requests differently from
the Python ones, stream through Sluice unchanged.
"""

from __future__ import annotations

from proxy.mock import MockHandle, mock_tokens
from tests.conftest import CLIENT_KEY, SluiceProcess
from tests.node import run_node


def test_openai_and_genai_stream_through_sluice(sluice: SluiceProcess, mock: MockHandle) -> None:
    out = run_node("http_stream.mjs", SLUICE_URL=sluice.url, SLUICE_KEY=CLIENT_KEY)
    tokens = mock_tokens(mock.state.default_tokens)
    assert "".join(out["openaiDeltas"]) == "".join(tokens)
    assert len(out["openaiDeltas"]) == len(tokens)  # one delta per event: nothing batched
    assert out["openaiUsage"]["completion_tokens"] == len(tokens)
    assert "".join(out["geminiDeltas"]) == "".join(tokens)
