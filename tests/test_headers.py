from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.errors import error_body
from proxy.headers import client_response_headers, line_breaks, upstream_request_headers

_CONTROLS_BUT_HTAB = {*range(32), 127} - {9}


@given(st.binary(max_size=300))
def test_line_breaks_counts_cr_lf_and_every_control_byte_but_htab(data: bytes) -> None:
    assert line_breaks(data) == sum(byte in _CONTROLS_BUT_HTAB for byte in data)


def test_a_well_formed_head_has_two_line_breaks_per_line() -> None:
    head = b"HTTP/1.1 200 OK\r\nx-text: a\tb \x80\xff\r\ncontent-length: 2\r\n\r\n"
    assert line_breaks(head) == 2 * 4
    assert line_breaks(head.replace(b"a\tb", b"a\rb")) == 2 * 4 + 1


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


def test_request_headers_may_be_list_pairs_in_any_iterable() -> None:
    # ASGI allows [name, value] lists and any iterable of them; read once.
    pairs = [[b"connection", b"x-hop"], [b"x-hop", b"1"], [b"accept", b"*/*"], [b"host", b"h"]]
    out = upstream_request_headers(iter(pairs))
    assert out == [(b"accept", b"*/*")]
    assert all(type(pair) is tuple for pair in out)


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
