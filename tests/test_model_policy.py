"""Model aliases, a key's forced and default model, and its cap on output tokens, with the official SDKs.

The upstream must receive the rewritten model and otherwise the very bytes
the client sent (checked by the SHA-256 the mock records), and streams must
come back untouched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from proxy.keybook import create_key
from proxy.limits import Limits
from proxy.mock import MockHandle
from tests.accesslog import wait_for_line
from tests.conftest import SluiceFactory, SluiceProcess, upstream_env
from tests.helpers import GUARD, text

pytestmark = pytest.mark.timeout(60)

CONFIG = """
[models.aliases]
fast = "openai/gpt-4o-mini"
flash = "gemini/gemini-2.0-flash"
"""


@dataclass
class Setup:
    sluice: SluiceProcess
    log: Path
    secrets: dict[str, str]


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, mock: MockHandle, sluice_factory: SluiceFactory
) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("policy")
    keys, config, log = tmp / "keys.toml", tmp / "sluice.toml", tmp / "access.log"
    config.write_text(CONFIG)
    secrets = {
        "plain": create_key(keys, "plain", Limits()),
        "pinned": create_key(keys, "pinned", Limits(), force_model="anthropic/claude-sonnet-4-5"),
        "defaulted": create_key(keys, "defaulted", Limits(), default_model="openai/gpt-4.1-mini"),
        "capped": create_key(keys, "capped", Limits(), max_output_tokens=50),
        "listed": create_key(keys, "listed", Limits(), models=("gpt-4o-mini",)),
    }
    sluice = sluice_factory(
        **upstream_env(mock),
        SLUICE_KEYS_FILE=str(keys),
        SLUICE_CONFIG=str(config),
        SLUICE_ACCESS_LOG=str(log),
    )
    yield Setup(sluice, log, secrets)


def _post(setup: Setup, key: str, path: str, body: bytes) -> httpx.Response:
    headers = {"authorization": f"Bearer {setup.secrets[key]}", "content-type": "application/json"}
    return httpx.post(f"{setup.sluice.url}{path}", content=body, headers=headers, timeout=GUARD)


def _sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def test_an_alias_rewrites_the_model_and_nothing_else(setup: Setup, mock: MockHandle) -> None:
    # Odd spacing, escapes, key order and number formats: all must reach the upstream as written.
    body = (
        b'{ "messages" : [{"role":"user","content":"caf\\u00e9 \\"q\\""}],\n'
        b' "model":"fast" ,"temperature": 1.50e0}'
    )
    response = _post(setup, "plain", "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    record = mock.state.last()
    assert record.body_sha256 == _sha(body.replace(b'"fast"', b'"gpt-4o-mini"'))
    assert response.json()["model"] == "gpt-4o-mini"
    line = wait_for_line([setup.log], response.headers["x-request-id"])
    assert line["model"] == "gpt-4o-mini"


def test_a_stream_through_an_alias_is_untouched(setup: Setup, mock: MockHandle) -> None:
    client = openai.OpenAI(
        base_url=f"{setup.sluice.url}/v1", api_key=setup.secrets["plain"], max_retries=0, timeout=GUARD
    )
    stream = client.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    deltas = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(deltas) == text(mock.state.default_tokens)
    assert len(deltas) == mock.state.default_tokens  # one chunk per event, nothing batched
    # The bytes Sluice sent back are the bytes the mock wrote for that request.
    body = b'{"model":"fast","messages":[{"role":"user","content":"hi"}],"stream":true}'
    headers = {"authorization": f"Bearer {setup.secrets['plain']}", "content-type": "application/json"}
    with httpx.stream(
        "POST", f"{setup.sluice.url}/v1/chat/completions", content=body, headers=headers, timeout=GUARD
    ) as response:
        received = response.read()
    assert received and received == mock.state.last().sent


def test_a_gemini_alias_rewrites_the_path(setup: Setup, mock: MockHandle) -> None:
    client = genai.Client(
        api_key=setup.secrets["plain"],
        http_options=genai_types.HttpOptions(base_url=setup.sluice.url, api_version="v1beta"),
    )
    chunks = list(client.models.generate_content_stream(model="flash", contents="hi"))
    assert "".join(c.text or "" for c in chunks) == text(mock.state.default_tokens)
    assert mock.state.last().path == "/v1beta/models/gemini-2.0-flash:streamGenerateContent"


def test_an_alias_for_another_provider_is_refused(setup: Setup, mock: MockHandle) -> None:
    client = openai.OpenAI(
        base_url=f"{setup.sluice.url}/v1", api_key=setup.secrets["plain"], max_retries=0, timeout=GUARD
    )
    with pytest.raises(openai.BadRequestError, match=r"flash.*gemini"):
        client.chat.completions.create(model="flash", messages=[{"role": "user", "content": "hi"}])
    assert mock.state.records == []


def test_a_forced_model_wins_and_other_apis_are_refused(setup: Setup, mock: MockHandle) -> None:
    client = anthropic.Anthropic(
        base_url=setup.sluice.url, api_key=setup.secrets["pinned"], max_retries=0, timeout=GUARD
    )
    answer = client.messages.create(
        model="claude-opus-4-1", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.model == "claude-sonnet-4-5"
    oai = openai.OpenAI(
        base_url=f"{setup.sluice.url}/v1", api_key=setup.secrets["pinned"], max_retries=0, timeout=GUARD
    )
    with pytest.raises(openai.PermissionDeniedError, match="only anthropic/claude-sonnet-4-5"):
        oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert len(mock.state.records) == 1


def test_a_default_model_fills_in_a_missing_one(setup: Setup, mock: MockHandle) -> None:
    body = b'{"messages":[{"role":"user","content":"hi"}]}'
    response = _post(setup, "defaulted", "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    assert mock.state.last().body_sha256 == _sha(b'{"model":"gpt-4.1-mini",' + body[1:])
    named = _post(setup, "defaulted", "/v1/chat/completions", b'{"model":"o3","messages":[]}')
    assert named.status_code == 200 and named.json()["model"] == "o3"  # a default, not a force


def test_the_output_cap_refuses_more_and_fills_in_a_missing_limit(setup: Setup, mock: MockHandle) -> None:
    client = openai.OpenAI(
        base_url=f"{setup.sluice.url}/v1", api_key=setup.secrets["capped"], max_retries=0, timeout=GUARD
    )
    with pytest.raises(openai.BadRequestError, match="at most 50 output tokens"):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=500
        )
    assert mock.state.records == []
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=50
    )
    body = b'{"model":"gpt-4o-mini","messages":[]}'
    assert _post(setup, "capped", "/v1/chat/completions", body).status_code == 200
    assert mock.state.last().body_sha256 == _sha(b'{"max_completion_tokens":50,' + body[1:])

    gemini = genai.Client(
        api_key=setup.secrets["capped"],
        http_options=genai_types.HttpOptions(base_url=setup.sluice.url, api_version="v1beta"),
    )
    with pytest.raises(genai_errors.ClientError, match="maxOutputTokens=99"):
        gemini.models.generate_content(
            model="gemini-2.0-flash",
            contents="hi",
            config=genai_types.GenerateContentConfig(max_output_tokens=99),
        )
    assert gemini.models.generate_content(model="gemini-2.0-flash", contents="hi").text
    raw = b'{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"temperature":0.5}}'
    response = httpx.post(
        f"{setup.sluice.url}/v1beta/models/gemini-2.0-flash:generateContent",
        content=raw,
        headers={"x-goog-api-key": setup.secrets["capped"], "content-type": "application/json"},
        timeout=GUARD,
    )
    assert response.status_code == 200, response.text
    expected = raw.replace(b'"generationConfig":{', b'"generationConfig":{"maxOutputTokens":50,')
    assert mock.state.last().body_sha256 == _sha(expected)


def test_a_model_list_is_checked_after_aliases(setup: Setup, mock: MockHandle) -> None:
    ok = _post(setup, "listed", "/v1/chat/completions", b'{"model":"fast","messages":[]}')
    assert ok.status_code == 200 and ok.json()["model"] == "gpt-4o-mini"
    refused = _post(setup, "listed", "/v1/chat/completions", b'{"model":"gpt-4o","messages":[]}')
    assert refused.status_code == 403 and "gpt-4o" in refused.json()["error"]["message"]
