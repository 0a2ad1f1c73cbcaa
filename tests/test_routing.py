from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from proxy.config import Upstream
from proxy.credentials import CredentialSpec
from proxy.http import Origin
from proxy.pool import Credential
from proxy.routing import (
    _PLAIN_PATH,
    BadPath,
    _check_one_by_one,
    guess_provider,
    resolve,
    strip_query_credentials,
    validate_path,
)

GOOD_PATHS = [
    b"/v1/chat/completions",
    b"/openai/v1/chat/completions",
    b"/v1beta/models/gemini-2.0-flash:streamGenerateContent",
    b"/v1/models/ft:gpt-4o-mini:org:custom:abc123",
    b"/v1/models/gpt-4.1",
    b"/v1/files/file-abc/content",
    b"/v1/models/",  # a trailing slash is a real path some clients send
    b"/v1/models/name%20with%20space",
]

BAD_PATHS = {
    b"/v1/../x": "dot-dot segment",
    b"/v1/./x": "dot segment",
    b"/v1/..;/x": "Tomcat-style dot-dot",
    b"/v1/%2e%2e/x": "encoded dots",
    b"/v1/%2E%2E/x": "encoded dots, upper case",
    b"/v1/.%2e/x": "half-encoded dots",
    b"/v1%2fchat": "encoded slash",
    b"/v1%5cchat": "encoded backslash",
    b"/v1/chat%00": "encoded NUL",
    b"/v1/%252e%252e/x": "double-encoded dots",
    b"/v1/%40evil.example": "encoded @",
    b"//evil.example/v1/chat": "scheme-relative",
    b"/@evil.example/v1": "userinfo trick",
    b"/v1\\..\\x": "backslashes",
    b"/v1//chat": "empty segment",
    b"/v1/chat\x00": "NUL",
    b"/v1/chat\r\nX-Injected: 1": "CRLF",
    b"http://evil.example/v1/chat": "absolute-form target",
    b"*": "asterisk-form",
    b"/v1/%zz": "malformed escape",
    b"/v1/%2": "truncated escape",
    b"/v1/caf\xc3\xa9": "raw non-ASCII",
}


@pytest.mark.parametrize("path", GOOD_PATHS)
def test_plain_paths_are_accepted(path: bytes) -> None:
    validate_path(path)


@pytest.mark.parametrize(("path", "why"), list(BAD_PATHS.items()))
def test_tricky_paths_are_rejected(path: bytes, why: str) -> None:
    with pytest.raises(BadPath):
        validate_path(path)


def test_overlong_path_is_rejected() -> None:
    with pytest.raises(BadPath):
        validate_path(b"/v1/" + b"a" * 5000)


ANTHROPIC = [(b"anthropic-version", b"2023-06-01"), (b"x-api-key", b"k")]
GEMINI = [(b"x-goog-api-key", b"k")]
OPENAI = [(b"authorization", b"Bearer k")]


@pytest.mark.parametrize(
    ("path", "headers", "query", "provider", "upstream_path"),
    [
        (b"/openai/v1/chat/completions", [], b"", "openai", "/v1/chat/completions"),
        (b"/gemini/v1beta/models/m:generateContent", [], b"", "gemini", "/v1beta/models/m:generateContent"),
        (b"/anthropic/v1/messages", [], b"", "anthropic", "/v1/messages"),
        (b"/v1/chat/completions", OPENAI, b"", "openai", "/v1/chat/completions"),
        (b"/v1/responses", OPENAI, b"", "openai", "/v1/responses"),
        (b"/v1/messages", [], b"", "anthropic", "/v1/messages"),
        (b"/v1/messages/count_tokens", [], b"", "anthropic", "/v1/messages/count_tokens"),
        (b"/v1beta/models/m:streamGenerateContent", [], b"alt=sse", "gemini", None),
        (b"/upload/v1beta/files", GEMINI, b"", "gemini", None),
        # /v1/models is shared: told apart by the credential header each SDK sends.
        (b"/v1/models", ANTHROPIC, b"", "anthropic", None),
        (b"/v1/models", GEMINI, b"", "gemini", None),
        (b"/v1/models", [], b"key=abc", "gemini", None),
        (b"/v1/models", OPENAI, b"", "openai", None),
        (b"/v1/models", [], b"", "openai", None),
        # google-genai 3.x defaults to API version v1.
        (b"/v1/models/gemini-2.0-flash:streamGenerateContent", GEMINI, b"alt=sse", "gemini", None),
    ],
)
def test_resolve(
    path: bytes,
    headers: list[tuple[bytes, bytes]],
    query: bytes,
    provider: str,
    upstream_path: str | None,
) -> None:
    route = resolve(path, headers, query)
    assert route is not None
    assert route.provider == provider
    assert route.upstream_path == (upstream_path or path.decode())


@pytest.mark.parametrize("path", [b"/", b"/v2/chat", b"/admin", b"/openaix/v1/chat"])
def test_unknown_prefixes_do_not_resolve(path: bytes) -> None:
    assert resolve(path, [], b"") is None


def test_guess_provider_for_errors() -> None:
    assert guess_provider(b"/anthropic/../x", []) == "anthropic"
    assert guess_provider(b"/v1beta/%2e%2e", []) == "gemini"
    assert guess_provider(b"/v1/x", ANTHROPIC) == "anthropic"
    assert guess_provider(b"/v1/x", GEMINI) == "gemini"
    assert guess_provider(b"/nope", []) == "openai"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"alt=sse&key=secret", b"alt=sse"),
        (b"key=secret&alt=sse", b"alt=sse"),
        (b"k%65y=secret&alt=sse", b"alt=sse"),  # an encoded name is still `key`
        (b"alt=sse&KEY=x", b"alt=sse&KEY=x"),  # names are case-sensitive
        (b"keys=1&monkey=2", b"keys=1&monkey=2"),
        (b"a=1&b=%20x", b"a=1&b=%20x"),  # the rest passes byte for byte
        (b"", b""),
    ],
)
def test_query_credentials_are_stripped(query: bytes, expected: bytes) -> None:
    assert strip_query_credentials(query) == expected


_PATH_ALPHABET = st.sampled_from(
    [
        "/",
        ".",
        "..",
        "%2e",
        "%2f",
        "%5c",
        "%40",
        "@",
        ":",
        "a",
        "v1",
        "\\",
        "%",
        "%25",
        "?",
        "#",
        ";",
        "//",
        "~",
    ]
)


@given(parts=st.lists(_PATH_ALPHABET, max_size=12), query=st.binary(max_size=20))
def test_no_accepted_path_changes_the_upstream_origin(parts: list[str], query: bytes) -> None:
    """Whatever the client sends, a path that passes validation keeps the configured origin."""
    raw = ("/" + "".join(parts)).encode()
    upstream = Upstream(
        "openai", "http://127.0.0.1:9000/base", (CredentialSpec("k", "api_key", "k"),), "OPENAI_API_KEY"
    )
    try:
        validate_path(raw)
    except BadPath:
        return
    route = resolve(b"/openai" + raw, [], b"")
    assert route is not None
    destination = Credential(upstream, upstream.credentials[0]).destination(route, query.replace(b"#", b""))
    assert destination is not None
    assert destination.origin == Origin("http", "127.0.0.1", 9000)
    assert destination.target.startswith(b"/base/")
    # As the stock client builds its URL: the target cannot move the origin either.
    url = URL(destination.origin.url + destination.target.decode("latin-1"), encoded=True)
    assert (url.scheme, url.host, url.port) == ("http", "127.0.0.1", 9000)
    assert url.raw_path.startswith("/base/")
    assert "key" not in url.query


# Bytes around every rule's edge: separators, dots, escapes, what may start a segment.
_EDGE_BYTES = st.sampled_from(
    [b"/", b".", b"..", b";", b"%", b"%2e", b"a", b"Z", b"9", b"-", b"~", b":", b"@", b"\\", b" "]
)


@given(pieces=st.lists(_EDGE_BYTES | st.binary(max_size=3), max_size=16))
def test_the_plain_path_pattern_accepts_nothing_the_rules_refuse(pieces: list[bytes]) -> None:
    """validate_path's one-regex fast path must be a strict subset of the rules checked one by one."""
    raw = b"/" + b"".join(pieces)
    if _PLAIN_PATH.fullmatch(raw):
        _check_one_by_one(raw)  # must not raise


@pytest.mark.parametrize("path", GOOD_PATHS)
def test_the_plain_path_pattern_takes_the_common_paths(path: bytes) -> None:
    assert _PLAIN_PATH.fullmatch(path) or b"%" in path  # escapes go the long way, on purpose


def test_anthropic_version_wins_over_a_gemini_key_whatever_the_header_order() -> None:
    both = [*GEMINI, *ANTHROPIC]
    assert resolve(b"/v1/models", both, b"") == resolve(b"/v1/models", both[::-1], b"")
    route = resolve(b"/v1/models", both, b"")
    assert route is not None and route.provider == "anthropic"
