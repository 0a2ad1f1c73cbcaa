"""No client key in any log line (proxy/redact.py), whatever the layer, route or outcome.

The unit tests hold :func:`proxy.redact.redact` and its logging filter to
their guarantees. The end-to-end test runs a real Sluice (both transport
modes, two workers, DEBUG logging: the websockets library then logs every
handshake header) and puts canary keys in every place a client puts one, on
HTTP and WebSocket routes, accepted and refused; then it reads everything the
process wrote (stdout and stderr) and its access-log file.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types as genai_types
from uvicorn.logging import AccessFormatter, DefaultFormatter

from proxy.http import server_options
from proxy.keybook import create_key
from proxy.limits import Limits
from proxy.mock import MockHandle
from proxy.redact import REDACTED, RedactingFilter, loggable_target, redact
from proxy.server import logging_config
from tests.conftest import SluiceFactory, assert_no_canary, upstream_env
from tests.ws_handshake import handshake

pytestmark = pytest.mark.timeout(180)

SECRET = "Zq7CANARYsecret0123456789"  # no key shape: only its position can redact it


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '127.0.0.1:5 - "WebSocket /v1/realtime?model=m&key=Zq7CANARY&alt=sse" 403',
            '127.0.0.1:5 - "WebSocket /v1/realtime?model=m&key=[redacted]&alt=sse" 403',
        ),
        ("/v1/x?%6Bey=Zq7CANARY", "/v1/x?%6Bey=[redacted]"),  # the name percent-encoded
        ("/ws/x?access_token=Zq7CANARY", "/ws/x?access_token=[redacted]"),  # Gemini's ephemeral tokens
        ("/x?KEY=Zq7CANARY;api_key=Zq7CANARY", "/x?KEY=[redacted];api_key=[redacted]"),
        ("/x?monkey=1&keys=2", "/x?monkey=1&keys=2"),  # not credential names
        ("< Authorization: Bearer Zq7CANARY", "< Authorization: [redacted]"),
        ("< x-goog-api-key: Zq7CANARY", "< x-goog-api-key: [redacted]"),
        ("< X-Api-Key: Zq7CANARY\n< Host: h", "< X-Api-Key: [redacted]\n< Host: h"),
        ("< api-key: Zq7CANARY", "< api-key: [redacted]"),
        (
            "< Sec-WebSocket-Protocol: realtime, openai-insecure-api-key.Zq7CANARY",
            "< Sec-WebSocket-Protocol: [redacted]",
        ),
        (
            "protocols: ['openai-insecure-api-key.Zq7CANARY']",
            "protocols: ['openai-insecure-api-key.[redacted]']",
        ),
        (
            "[(b'authorization', b'Bearer Zq7CANARY'), (b'host', b'h')]",
            "[(b'authorization', b'[redacted]'), (b'host', b'h')]",
        ),
        ("{'X-Goog-Api-Key': 'Zq7CANARY', 'a': 'b'}", "{'X-Goog-Api-Key': '[redacted]', 'a': 'b'}"),
        ('{"cookie": "s=Zq7CANARY"}', '{"cookie": "[redacted]"}'),
        ("refused: bearer Zq7CANARY", "refused: bearer [redacted]"),
        ("raised on sk-proj-CANARYopenai7f3a9c1e", "raised on [redacted]"),
        ("AIzaSyCANARYgemini7f3a9c1e5b2d8f4a6c0 and ya29.c.CANARYtoken123", "[redacted] and [redacted]"),
        ("token auth_tokens/CANARY123", "token [redacted]"),
        ("a plain line: 3 workers, key 'app', /v1/models", "a plain line: 3 workers, key 'app', /v1/models"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact(expected) == expected  # twice is once


def test_loggable_target() -> None:
    assert (
        loggable_target(b"/v1beta/models/g:x", b"alt=sse&key=Zq7CANARY")
        == "/v1beta/models/g:x?alt=sse&key=[redacted]"
    )
    assert loggable_target(b"/v1/models", b"") == "/v1/models"


def _handler(formatter: logging.Formatter) -> tuple[logging.Handler, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter())
    return handler, stream


def test_uvicorn_access_lines_keep_their_format_and_lose_the_key() -> None:
    handler, stream = _handler(
        AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False)
    )
    args = ("127.0.0.1:9", "GET", "/v1beta/models?key=Zq7CANARY", "1.1", 200)
    handler.handle(
        logging.makeLogRecord(
            {"name": "uvicorn.access", "levelno": 20, "msg": '%s - "%s %s HTTP/%s" %d', "args": args}
        )
    )
    assert stream.getvalue() == '127.0.0.1:9 - "GET /v1beta/models?key=[redacted] HTTP/1.1" 200 OK\n'


def test_messages_arguments_and_tracebacks_are_redacted() -> None:
    handler, stream = _handler(DefaultFormatter("%(levelprefix)s %(message)s", use_colors=False))
    log = logging.getLogger("tests.redaction")
    log.propagate, log.level = False, logging.DEBUG
    log.addHandler(handler)
    try:
        log.info("< %s: %s", "Authorization", SECRET)  # the header's name and value apart
        log.info("headers %r", [(b"x-api-key", SECRET.encode())])  # not a str argument
        log.info(b"raw bytes ?key=" + SECRET.encode())  # type: ignore[arg-type]  # not even a str message
        try:
            raise ValueError(f"bad request /x?key={SECRET}")
        except ValueError:
            log.exception("failed")
        log.warning("plain %d", 3)
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    assert SECRET not in out
    assert "Authorization: [redacted]" in out and "(b'x-api-key', b'[redacted]')" in out
    assert "ValueError: bad request /x?key=[redacted]" in out and "plain 3" in out


def test_every_handler_of_sluices_logging_redacts_in_both_modes() -> None:
    for mode in ("fast", "stock"):
        config = server_options(mode, logging_config("info"))["log_config"]  # type: ignore[arg-type]
        assert config["root"]["handlers"] == ["default"]  # other libraries' warnings too
        for name, handler in config["handlers"].items():
            assert "sluice_redact" in handler["filters"], name


# ----------------------------------------------------------- end to end


def _sdk_calls(url: str, key: str) -> None:
    """One call per SDK, each with ``key`` where that SDK puts it."""
    failures = (openai.APIStatusError, anthropic.APIStatusError, genai.errors.APIError)
    # Kept in a name: a google-genai client closes its HTTP client when collected.
    gemini = genai.Client(api_key=key, http_options=genai_types.HttpOptions(base_url=url))
    calls = [
        lambda: openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        ),
        lambda: anthropic.Anthropic(base_url=url, api_key=key, max_retries=0).messages.create(
            model="c", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        ),
        lambda: gemini.models.generate_content(model="g", contents="hi"),
    ]
    for call in calls:
        with contextlib.suppress(failures):  # refused keys: a 401 is the point
            call()


def _http_calls(url: str, key: str) -> list[int]:
    """``key`` in every credential position, on provider, plain, bad and unknown paths."""
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    gemini = {"contents": [{"parts": [{"text": "hi"}]}]}
    bearer = {"authorization": f"Bearer {key}"}
    protocol = {"sec-websocket-protocol": f"realtime, openai-insecure-api-key.{key}"}
    requests: list[tuple[str, str, dict[str, str], object]] = [
        ("POST", "/openai/v1/chat/completions", bearer, chat),
        ("POST", "/openai/v1/chat/completions", {"api-key": key}, chat),
        ("POST", "/openai/v1/chat/completions", {"x-api-key": key}, chat),
        ("POST", "/v1beta/models/g:generateContent", {"x-goog-api-key": key}, gemini),
        ("POST", f"/v1beta/models/g:streamGenerateContent?alt=sse&key={key}", {}, gemini),
        ("POST", f"/v1beta/models/g:generateContent?%6Bey={key}", {}, gemini),
        ("GET", f"/healthz?key={key}", bearer, None),
        ("GET", f"/no/such/route?key={key}", {"x-goog-api-key": key}, None),
        ("GET", f"/v1/%2e%2e/x?key={key}", {"x-api-key": key}, None),
        ("GET", "/v1/models", {**protocol, **bearer}, None),
    ]
    with httpx.Client(base_url=url, timeout=30) as client:
        return [
            client.request(m, target, headers=h, json=body).status_code for m, target, h, body in requests
        ]


def _malformed(port: int, key: str) -> bytes:
    """A request the server cannot parse, with the key in its target and a header."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"GET /v1/models?key={key} HTTP/1.1\r\nAuthorization: Bearer {key}\r\nno colon\r\n\r\n".encode()
        )
        return sock.recv(4096)


WS_PATHS = (
    "/v1/realtime?model=gpt-realtime",
    "/openai/v1/realtime?model=gpt-realtime",
    "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent",
)


async def _ws_calls(ws_url: str, key: str) -> list[str]:
    outcomes = []
    for path in WS_PATHS:
        joiner = "&" if "?" in path else "?"
        tries: list[tuple[str, dict[str, str], list[str] | None]] = [
            (path, {"authorization": f"Bearer {key}"}, None),
            (path, {"x-goog-api-key": key}, None),
            (path, {"x-api-key": key}, None),
            (path, {"api-key": key}, None),
            (f"{path}{joiner}key={key}", {}, None),
            (path, {}, ["realtime", f"openai-insecure-api-key.{key}", "openai-beta.realtime-v1"]),
        ]
        for target, headers, protocols in tries:
            # Only the handshake matters here (its log lines): a session that opens is not
            # waited on (a Gemini one would wait for its setup message, or its refusal for it).
            got = await handshake(f"{ws_url}{target}", headers=headers, subprotocols=protocols, wait=0.3)
            outcomes.append(got.outcome)
    return outcomes


async def test_no_client_key_reaches_any_log_line(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory, http_mode: str
) -> None:
    keys_file, access_log = tmp_path / "keys.toml", tmp_path / "access.log"
    valid = create_key(keys_file, "app", Limits())
    refused = ["sk-sluice-CANARYid0000_" + SECRET, SECRET]  # a Sluice-shaped key, and one of no shape
    sluice = sluice_factory(
        "--workers", "2", "--log-level", "debug",
        **upstream_env(mock), SLUICE_KEYS_FILE=str(keys_file), SLUICE_ACCESS_LOG=str(access_log),
    )  # fmt: skip
    port = int(sluice.url.rsplit(":", 1)[1])
    ws_url = sluice.url.replace("http://", "ws://")
    for key in [valid, *refused]:
        _sdk_calls(sluice.url, key)
        statuses = _http_calls(sluice.url, key)
        assert (200 if key == valid else 401) in statuses, statuses
        assert _malformed(port, key).startswith(b"HTTP/1.1 400")
        assert all(outcome in ("refused", "closed", "open") for outcome in await _ws_calls(ws_url, key))
    # Stopped, so every worker has flushed what it had to write.
    assert sluice.stop() == 0
    output, lines = sluice.log(), access_log.read_text()
    for key in [valid, *refused]:
        assert key not in output, _around(output, key)
        assert key not in lines, _around(lines, key)
    # The valid key's secret part alone (its id is not secret, and a refused
    # key's id is what the operator needs to see).
    assert valid.partition("_")[2] not in output + lines
    assert_no_canary(output, lines)
    # The lines are there, only without the keys: the test saw what it guards.
    assert f'"WebSocket /v1/realtime?model=gpt-realtime&key={REDACTED}"' in output
    # The websockets library's DEBUG lines: every request header of a handshake.
    assert f"< sec-websocket-protocol: {REDACTED}" in output.lower()
    assert f"< authorization: {REDACTED}" in output.lower()
    logged = [json.loads(line) for line in lines.splitlines()]
    assert {r["status"] for r in logged} >= {200, 401, 400, 404}, logged


def _around(text: str, key: str) -> str:
    at = text.find(key)
    return text[max(0, at - 300) : at + 100]
