"""Gemini Live in Vertex AI's form, end to end: google-genai in Vertex mode → Sluice (TLS) → mock.

The client holds only its Sluice key (Vertex "express mode": an API key);
Sluice serves the session with a service account, whose access token it gets
from the mock's token endpoint, and the mock's Vertex Live route accepts
only tokens that endpoint issued.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from google import genai
from google.genai import types as genai_types

from proxy.mock import MockHandle, mock_tokens
from tests.conftest import CANARY_KEYS, CLIENT_KEY, SluiceFactory
from tests.realtime_clients import GUARD, gemini_session, tls_files
from tests.service_account import vertex_config

pytestmark = pytest.mark.timeout(90)


async def test_vertex_live_through_sluice_with_a_service_account(
    mock: MockHandle, sluice_factory: SluiceFactory, tmp_path: Path
) -> None:
    tls = tls_files(tmp_path)
    config = vertex_config(mock, tmp_path, with_api_key=False)
    sluice = sluice_factory(
        "--ssl-certfile",
        str(tls.chain),
        "--ssl-keyfile",
        str(tls.key),
        **CANARY_KEYS,
        SLUICE_GEMINI_UPSTREAM=mock.url,
        SLUICE_CONFIG=str(config),
    )
    options = genai_types.HttpOptions(base_url=sluice.url, async_client_args={"ssl": tls.client_context()})
    client = genai.Client(vertexai=True, api_key=CLIENT_KEY, http_options=options)
    turn = await asyncio.wait_for(gemini_session(client, modalities=["TEXT"]), GUARD)
    assert turn.text == mock_tokens(12) and turn.usage.response_token_count == 12
    rec = await mock.state.wait_for_end(mock.state.last("LlmBidiService/BidiGenerateContent").id, GUARD)
    token = rec.headers["authorization"].removeprefix("Bearer ")
    assert token in mock.state.issued_tokens  # the service account's, from the mock's /token
    assert CLIENT_KEY not in json.dumps(rec.headers) + rec.query and "x-goog-api-key" not in rec.headers
    assert json.loads(rec.frames_in[0])["setup"]["model"].endswith("/models/gemini-live-2.5-flash")
    assert rec.outcome == "completed"
