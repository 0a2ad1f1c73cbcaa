"""Secrets stay on the server and odd request targets never reach an upstream."""

from __future__ import annotations

import json

import pytest

from proxy.mock import MockHandle
from tests.conftest import CANARIES, CLIENT_KEY, SluiceFactory, SluiceProcess, assert_no_canary, upstream_env
from tests.rawhttp import RawResponse, request

pytestmark = pytest.mark.timeout(30)

CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()

ATTACKS = [
    b"/v1/../admin",
    b"/openai/../../etc/passwd",
    b"/v1/%2e%2e/%2e%2e/x",
    b"/v1/%2E%2e/x",
    b"/v1%2fchat%2fcompletions",
    b"/openai/v1%2f..%2fx",
    b"/v1/chat%5c..%5cx",
    b"/v1/chat%00.json",
    b"//evil.example/v1/chat/completions",
    b"/@evil.example/v1/chat/completions",
    b"/openai@evil.example/v1/chat",
    b"/v1/..;/chat/completions",
    b"/v1/%252e%252e/x",
]


@pytest.mark.parametrize("target", ATTACKS)
async def test_path_attacks_get_400_and_never_reach_the_upstream(
    target: bytes, sluice: SluiceProcess, mock: MockHandle
) -> None:
    response = await request(sluice.url, "POST", target, {"authorization": f"Bearer {CLIENT_KEY}"}, CHAT)
    assert response.status == 400
    assert json.loads(response.body)["error"]["message"].startswith("Bad request path")
    assert mock.state.records == []


@pytest.mark.parametrize(
    "target",
    [
        # Absolute-form: a forward-proxy request. The host in it must not matter, and must not be used.
        "http://{mock}/v1/chat/completions",
        "http://evil.example/v1/chat/completions",
        "http://{mock}@evil.example/v1/chat/completions",
    ],
)
async def test_absolute_form_targets_never_choose_the_upstream(
    target: str, sluice: SluiceProcess, mock: MockHandle, http_mode: str
) -> None:
    target = target.format(mock=f"127.0.0.1:{mock.port}")
    response = await request(sluice.url, "POST", target, {"authorization": f"Bearer {CLIENT_KEY}"}, CHAT)
    if http_mode == "fast":
        # Sluice's server keeps the whole target in raw_path, and path validation refuses it.
        assert response.status == 400
        assert mock.state.records == []
        return
    # uvicorn's protocol hands the app only the target's path (proxy/http/README.md,
    # "Stock mode"): the request goes where configuration says, as origin-form.
    assert response.status == 200
    record = mock.state.last()
    assert record.path == "/openai-prefix/v1/chat/completions"
    assert record.headers["host"] == f"127.0.0.1:{mock.port}"
    assert len(mock.state.records) == 1


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("TRACE", "/v1/chat/completions"),
        ("TRACE", "/v1beta/models/gemini-2.0-flash:generateContent"),
        ("TRACE", "/api/chat"),
        ("CONNECT", "/v1/messages"),
        ("CONNECT", "127.0.0.1:443"),
    ],
)
async def test_trace_and_connect_are_refused_and_never_forwarded(
    method: str, target: str, sluice: SluiceProcess, mock: MockHandle
) -> None:
    """Regression: both reached the upstream with the server-held key attached."""
    headers = {"authorization": f"Bearer {CLIENT_KEY}", "x-goog-api-key": CLIENT_KEY}
    response = await request(sluice.url, method, target, headers, b"")
    # uvicorn's protocol may refuse an authority-form CONNECT target itself, before the app.
    if method == "CONNECT" and not target.startswith("/"):
        assert response.status in (400, 405)
    else:
        assert response.status == 405
        assert method in json.loads(response.body)["error"]["message"]
        assert b"\r\nallow: get, head, post, put, patch, delete, options\r\n" in response.head.lower()
    assert mock.state.records == []


async def test_host_header_cannot_choose_the_upstream(sluice: SluiceProcess, mock: MockHandle) -> None:
    headers = {"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"}
    conn_headers = {**headers, "x-forwarded-host": "evil.example", "forwarded": "host=evil.example"}
    response = await request(sluice.url, "POST", "/v1/chat/completions", conn_headers, CHAT)
    assert response.status == 200
    record = mock.state.last()
    assert record.path == "/openai-prefix/v1/chat/completions"
    assert record.headers["host"] == f"127.0.0.1:{mock.port}"
    assert "x-forwarded-host" not in record.headers and "forwarded" not in record.headers


async def test_no_client_credential_reaches_the_upstream(sluice: SluiceProcess, mock: MockHandle) -> None:
    headers = {
        "authorization": f"Bearer {CLIENT_KEY}",
        "x-api-key": CLIENT_KEY,
        "x-goog-api-key": CLIENT_KEY,
        "api-key": CLIENT_KEY,
        "cookie": f"session={CLIENT_KEY}",
        "proxy-authorization": f"Basic {CLIENT_KEY}",
        "content-type": "application/json",
    }
    # Explicit prefixes: on bare /v1/… the credential header itself picks the provider.
    for target in (
        "/v1beta/models/m:generateContent?key=" + CLIENT_KEY + "&alt=json",
        "/openai/v1/chat/completions",
    ):
        await request(sluice.url, "POST", target, headers, CHAT)
        record = mock.state.last()
        everything = json.dumps(record.headers) + record.query + record.path
        assert CLIENT_KEY not in everything
    gemini, openai = mock.state.records
    assert gemini.headers["x-goog-api-key"] == CANARIES[1]
    assert gemini.query == "alt=json"
    assert openai.headers["authorization"] == f"Bearer {CANARIES[0]}"
    assert "cookie" not in openai.headers and "api-key" not in openai.headers


def _all_text(response: RawResponse) -> bytes:
    return response.head + response.body


async def test_server_held_keys_never_leave(mock: MockHandle, sluice_factory: SluiceFactory) -> None:
    """Every path through Sluice, error paths included: no canary in any response or log line."""
    # Its own Sluice: the refusals below cool its credentials, which must not
    # leak into tests sharing the session's Sluice (its readiness says "cooling").
    sluice = sluice_factory(**upstream_env(mock))
    json_headers = {"content-type": "application/json"}
    openai = {**json_headers, "authorization": f"Bearer {CLIENT_KEY}"}
    anthropic = {**json_headers, "x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
    claude = json.dumps(
        {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    gemini = {**json_headers, "x-goog-api-key": CLIENT_KEY}
    cases = [
        ("POST", "/v1/chat/completions", openai, CHAT),
        ("POST", "/v1/chat/completions", {**openai, "x-mock-status": "500"}, CHAT),
        ("POST", "/v1/chat/completions", {**openai, "x-mock-status": "429"}, CHAT),
        ("POST", "/v1/messages", {**anthropic, "x-mock-status": "401"}, claude),
        ("POST", "/v1/messages", {**anthropic, "x-mock-status": "403"}, claude),
        ("POST", "/v1beta/models/m:generateContent?key=abc", {**gemini, "x-mock-status": "401"}, b"{}"),
        ("POST", "/v1/messages", {**anthropic, "x-mock-drop-after": "1"}, claude),
        ("POST", "/v1/%2e%2e/x", openai, CHAT),
        ("GET", "/nowhere", openai, b""),
        ("GET", "/v1/models", gemini, b""),
    ]
    responses = [await request(sluice.url, m, t, h, b) for m, t, h, b in cases]
    assert [r.status for r in responses] == [200, 500, 429, 502, 502, 502, 200, 400, 404, 200]
    assert_no_canary(*(_all_text(r) for r in responses))
    # The upstream's 401/403 bodies did quote the key: Sluice kept them back.
    refusals = [r for r in mock.state.records if r.status in (401, 403)]
    assert len(refusals) == 3
    assert all(any(c.encode() in r.sent for c in CANARIES) for r in refusals)

    # Failures Sluice produces itself: unreachable upstream, timeout, missing key.
    failing = sluice_factory(
        **{
            **upstream_env(mock),
            "SLUICE_OPENAI_UPSTREAM": "http://127.0.0.1:9",  # discard port: nothing listens
            "SLUICE_HEADERS_TIMEOUT": "0.5",
            "ANTHROPIC_API_KEY": "",
        }
    )
    more = [
        await request(failing.url, "POST", "/v1/chat/completions", openai, CHAT),
        await request(
            failing.url,
            "POST",
            "/gemini/v1beta/models/m:generateContent",
            {**gemini, "x-mock-headers-delay-ms": "3000"},
            b"{}",
        ),
        await request(failing.url, "POST", "/v1/messages", anthropic, claude),
    ]
    assert [r.status for r in more] == [502, 504, 503]
    assert_no_canary(*(_all_text(r) for r in more))
    assert_no_canary(sluice.log(), failing.log())
    assert b"ANTHROPIC_API_KEY" in more[2].body  # names the setting, not its value
