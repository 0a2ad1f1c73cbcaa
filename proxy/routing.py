"""Which provider a request is for, and which upstream path it maps to.

Routing works on the raw, still percent-encoded request target
(``scope["raw_path"]``), never on the decoded ``scope["path"]``: decoding first
is how ``%2e%2e%2f`` turns into ``../``. A path is accepted only if it is plain:
the upstream receives exactly the bytes validated here, appended to a base URL
that comes from configuration, so no request can choose the upstream host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_to_bytes

from .config import ProviderName
from .http import Headers

PREFIXES: dict[bytes, ProviderName] = {
    b"openai": "openai",
    b"gemini": "gemini",
    b"anthropic": "anthropic",
    b"vertex": "gemini",  # Vertex AI's paths, served by the Gemini credential pool
}

# First segments that only the Gemini API uses.
GEMINI_ROOTS = frozenset({b"v1beta", b"v1alpha", b"v1beta1", b"upload", b"download"})
# `/v1/...` paths that only Vertex AI (Gemini) has.
VERTEX_V1 = frozenset({b"projects", b"publishers"})
# `/v1/...` paths that only the Anthropic API has.
ANTHROPIC_V1 = frozenset({b"messages", b"complete"})

MAX_PATH_BYTES = 4096

# Bytes that have no business in an API path, even percent-encoded: they are
# the ingredients of traversal (`.` `/` `\`), host confusion (`@`), double
# decoding (`%`) and header/log injection (controls).
_FORBIDDEN_DECODED: Final = frozenset(b"./\\@%") | frozenset(range(0x20)) | {0x7F}
_ALLOWED_RAW: Final = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:/%"
)
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
# The paths SDKs send, accepted in one regex match: non-empty segments of
# allowed bytes, none beginning with "." (so no "." or ".." segment, with or
# without ";"), no "%" escape, an optional trailing "/". Anything else takes
# the checks one by one, which say what is wrong with it.
_PLAIN_PATH: Final = re.compile(rb"(?:/[A-Za-z0-9\-_~!$&'()*+,;=:][A-Za-z0-9\-._~!$&'()*+,;=:]*)+/?")


class BadPath(ValueError):
    """The request target is not a plain path; answer 400 without going upstream."""


# Its own __init__ (init=False): made for every request, and a hand-written
# one is much cheaper than the one @dataclass generates (proxy/http/README.md).
@dataclass(slots=True, init=False)
class Route:
    provider: ProviderName
    upstream_path: str  # percent-encoded, starts with "/", appended to the base URL

    def __init__(self, provider: ProviderName, upstream_path: str) -> None:
        self.provider = provider
        self.upstream_path = upstream_path


def validate_path(raw_path: bytes) -> None:
    """Raise :class:`BadPath` unless ``raw_path`` is a plain absolute path."""
    if not raw_path.startswith(b"/"):
        raise BadPath("the request target must be a path starting with '/'")
    if len(raw_path) > MAX_PATH_BYTES:
        raise BadPath(f"the path is longer than {MAX_PATH_BYTES} bytes")
    if not _PLAIN_PATH.fullmatch(raw_path):
        _check_one_by_one(raw_path)


def _check_one_by_one(raw_path: bytes) -> None:
    """The rules a plain path satisfies, each with its own message (``_PLAIN_PATH`` implies them all)."""
    if not _ALLOWED_RAW.issuperset(raw_path):
        raise BadPath("the path contains characters that are not allowed (controls, '\\', '@', spaces)")
    _check_escapes(raw_path)
    segments = raw_path[1:].split(b"/")
    for i, segment in enumerate(segments):
        if segment == b"" and i != len(segments) - 1:
            raise BadPath("the path contains an empty segment ('//')")
        # `..;/` is read as `../` by some servers (Tomcat and friends).
        if segment.split(b";", 1)[0] in (b".", b".."):
            raise BadPath("the path contains a '.' or '..' segment")


def _check_escapes(raw_path: bytes) -> None:
    start = raw_path.find(b"%")
    while start != -1:
        hex_digits = raw_path[start + 1 : start + 3]
        if len(hex_digits) != 2 or not _HEX.issuperset(hex_digits):
            raise BadPath("the path contains a malformed percent-escape")
        if int(hex_digits, 16) in _FORBIDDEN_DECODED:
            raise BadPath("the path contains an encoded '.', '/', '\\', '@', '%' or control character")
        start = raw_path.find(b"%", start + 3)


def _may_hold_key(query_string: bytes) -> bool:
    # The common case, decided without parsing: no "key", not even encoded.
    # find(), not `in`: on Python 3.11, `x in some_bytes` first tries x as an
    # integer and handles the TypeError, which costs far more than the search.
    return query_string.lower().find(b"key") != -1 or query_string.find(b"%") != -1


def _is_key(part: bytes) -> bool:
    """Whether one ``name=value`` part is the ``key`` parameter (the name may be percent-encoded)."""
    return unquote_to_bytes(part.split(b"=", 1)[0]) == b"key"


def query_has_key(query_string: bytes) -> bool:
    return _may_hold_key(query_string) and any(_is_key(p) for p in query_string.split(b"&"))


def query_key(query_string: bytes) -> bytes | None:
    """The decoded value of the first non-empty ``key=`` parameter (a Gemini client's key)."""
    if _may_hold_key(query_string):
        for part in query_string.split(b"&"):
            value = part.partition(b"=")[2]
            if value and _is_key(part):
                return unquote_to_bytes(value)
    return None


def strip_query_credentials(query_string: bytes) -> bytes:
    """Drop every ``key=`` parameter (the Gemini client credential), keep the rest byte for byte."""
    if not _may_hold_key(query_string):
        return query_string
    return b"&".join(p for p in query_string.split(b"&") if not _is_key(p))


def resolve(raw_path: bytes, headers: Headers, query_string: bytes) -> Route | None:
    """Map a validated path to a provider, or ``None`` when no provider serves it.

    ``/openai/…``, ``/gemini/…`` and ``/anthropic/…`` are explicit. Un-prefixed
    paths follow the SDKs' defaults; ``/v1/…`` is shared by all three SDKs
    (google-genai 3.x defaults to API version ``v1``), so it is told apart by
    path first and by the credential header the SDK sends second.
    """
    first, _, rest = raw_path[1:].partition(b"/")
    provider = PREFIXES.get(first)
    if provider is not None:
        return Route(provider, "/" + rest.decode("ascii"))
    path = raw_path.decode("ascii")
    if first in GEMINI_ROOTS:
        return Route("gemini", path)
    if first != b"v1":
        return None
    return Route(_provider_for_v1(rest, headers, query_string), path)


def _provider_for_v1(rest: bytes, headers: Headers, query_string: bytes) -> ProviderName:
    head = rest.split(b"/", 1)[0]
    if head in ANTHROPIC_V1:
        return "anthropic"
    if head in VERTEX_V1:
        return "gemini"
    goog = False
    for name, _ in headers:
        if name == b"anthropic-version":
            return "anthropic"
        goog = goog or name == b"x-goog-api-key"
    if goog or query_has_key(query_string):
        return "gemini"
    return "openai"


def guess_provider(raw_path: bytes, headers: Headers) -> ProviderName:
    """Best effort for error bodies on requests that cannot be routed or validated."""
    head = raw_path.lstrip(b"/").split(b"/", 1)[0].split(b"?", 1)[0]
    if head in PREFIXES:
        return PREFIXES[head]
    if head in GEMINI_ROOTS:
        return "gemini"
    names = {name for name, _ in headers}
    if b"anthropic-version" in names or b"x-api-key" in names:
        return "anthropic"
    if b"x-goog-api-key" in names:
        return "gemini"
    return "openai"
