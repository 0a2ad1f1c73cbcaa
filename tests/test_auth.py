"""Where auth finds the client's key, without a server (the SDKs' view is in test_gatekeeping)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.middleware.auth import presented_key

PREFERENCE = (b"x-goog-api-key", b"x-api-key", b"api-key")


def reference(headers: list[tuple[bytes, bytes]], query: bytes) -> str | None:
    """The rule as the docstring states it, written the slow way."""
    last = {name: value.strip() for name, value in headers if name in PREFERENCE}
    for name in PREFERENCE:
        if last.get(name):
            return last[name].decode("latin-1")
    bearers = [v for n, v in headers if n == b"authorization" and v[:7].lower() == b"bearer "]
    if bearers and bearers[-1][7:].strip():
        return bearers[-1][7:].strip().decode("latin-1")
    for part in query.split(b"&"):
        if part.startswith(b"key=") and part[4:]:
            return part[4:].decode("latin-1")
    return None


def scope(headers: list[tuple[bytes, bytes]], query: bytes = b"") -> dict[str, object]:
    return {"type": "http", "headers": headers, "query_string": query}


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        ([(b"authorization", b"Bearer sk-1")], b"", "sk-1"),
        ([(b"authorization", b"bearer  sk-1 ")], b"", "sk-1"),
        ([(b"authorization", b"Basic abc")], b"", None),
        ([(b"x-api-key", b"a"), (b"x-goog-api-key", b"g")], b"", "g"),
        ([(b"authorization", b"Bearer b"), (b"api-key", b"az")], b"", "az"),
        ([(b"x-goog-api-key", b" "), (b"x-api-key", b"a")], b"", "a"),  # empty: the next place
        ([(b"x-api-key", b"first"), (b"x-api-key", b"last")], b"", "last"),
        ([(b"authorization", b"Bearer ")], b"alt=sse&key=q", "q"),
        ([], b"key=", None),
        ([(b"host", b"x"), (b"x-api-keys", b"no")], b"", None),
    ],
)
def test_the_key_comes_from_the_first_place_an_sdk_puts_it(
    headers: list[tuple[bytes, bytes]], query: bytes, expected: str | None
) -> None:
    assert presented_key(scope(headers, query)) == expected


names = st.sampled_from([*PREFERENCE, b"authorization", b"host", b"x-api-keys", b"api"])
values = st.binary(max_size=12) | st.sampled_from([b"Bearer k", b"bearer ", b"BEARER  k2 ", b" k3"])


@given(st.lists(st.tuples(names, values), max_size=8), st.sampled_from([b"", b"key=q", b"a=1&key=r"]))
def test_matches_the_stated_rule(headers: list[tuple[bytes, bytes]], query: bytes) -> None:
    assert presented_key(scope(headers, query)) == reference(headers, query)


def test_header_pairs_may_be_lists_as_asgi_allows() -> None:
    # A layer before auth may add [name, value] lists rather than tuples.
    headers = [[b"host", b"x"], [b"x-api-key", b"listed"]]
    assert presented_key(scope(headers)) == "listed"  # type: ignore[arg-type]
