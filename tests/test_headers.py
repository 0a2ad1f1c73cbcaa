from __future__ import annotations

import json

import pytest

from proxy.errors import error_body
from proxy.headers import client_response_headers, request_headers, upstream_request_headers


def test_request_headers_lose_credentials_hop_by_hop_and_connection_tokens() -> None:
    headers = [
        (b"host", b"sluice.local"),
        (b"authorization", b"Bearer sk-client"),
        (b"x-api-key", b"client"),
        (b"x-goog-api-key", b"client"),
        (b"api-key", b"client"),
        (b"cookie", b"session=1"),
        (b"connection", b"keep-alive, x-custom-hop"),
        (b"x-custom-hop", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"te", b"trailers"),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"content-type", b"application/json"),
        (b"content-length", b"12"),
        (b"anthropic-version", b"2023-06-01"),
        (b"x-stainless-lang", b"python"),
    ]
    # Content-Length too: the upstream client writes the framing of the body it sends.
    out = dict(upstream_request_headers(headers))
    assert out == {
        b"content-type": b"application/json",
        b"anthropic-version": b"2023-06-01",
        b"x-stainless-lang": b"python",
    }


@pytest.mark.parametrize("make", [list, tuple, iter], ids=["list", "tuple", "iterator"])
def test_request_headers_may_be_list_pairs_in_any_iterable(make: object) -> None:
    # ASGI allows [name, value] lists and any iterable of them: read as tuples, converted once.
    pairs = [[b"connection", b"x-hop"], [b"x-hop", b"1"], [b"accept", b"*/*"], [b"host", b"h"]]
    scope = {"headers": make(pairs)}  # type: ignore[operator]
    converted = request_headers(scope)
    assert converted == [(b"connection", b"x-hop"), (b"x-hop", b"1"), (b"accept", b"*/*"), (b"host", b"h")]
    assert all(type(pair) is tuple for pair in converted)
    assert scope["headers"] is converted and request_headers(scope) is converted  # the scope keeps them
    assert upstream_request_headers(converted) == [(b"accept", b"*/*")]


def test_request_headers_that_are_tuples_are_read_in_place() -> None:
    scope = {"headers": [(b"accept", b"*/*")]}
    assert request_headers(scope) is scope["headers"]


def test_response_headers_keep_provider_facts_and_mark_event_streams() -> None:
    raw = [  # names lower-cased by the upstream client
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"transfer-encoding", b"chunked"),
        (b"connection", b"keep-alive"),
        (b"server", b"cloudflare"),
        (b"date", b"Sat, 21 Nov 2026 10:00:00 GMT"),
        (b"set-cookie", b"__cf_bm=abc"),
        (b"x-request-id", b"req_1"),
        (b"retry-after", b"7"),
        (b"anthropic-ratelimit-requests-remaining", b"0"),
    ]
    out, is_sse = client_response_headers(raw)
    assert is_sse
    assert out == [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"x-request-id", b"req_1"),
        (b"retry-after", b"7"),
        (b"anthropic-ratelimit-requests-remaining", b"0"),
        (b"x-accel-buffering", b"no"),
        (b"cache-control", b"no-cache"),
    ]


def test_json_responses_are_not_marked() -> None:
    out, is_sse = client_response_headers(
        [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]
    )
    assert not is_sse
    assert out == [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429, 502, 503, 504, 599])
def test_error_bodies_have_each_providers_shape(status: int) -> None:
    openai = json.loads(error_body("openai", status, "m"))
    assert set(openai["error"]) == {"message", "type", "param", "code"}
    gemini = json.loads(error_body("gemini", status, "m"))
    assert gemini["error"]["code"] == status and gemini["error"]["status"].isupper()
    anthropic = json.loads(error_body("anthropic", status, "m"))
    assert anthropic["type"] == "error" and anthropic["error"]["message"] == "m"
