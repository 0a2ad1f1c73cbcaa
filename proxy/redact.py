"""Credentials out of log text: the one redaction every log line of Sluice goes through.

Clients put keys where their SDKs put them: ``Authorization: Bearer``,
``x-goog-api-key``, ``x-api-key``, ``api-key``, Gemini's ``?key=`` (and
``?access_token=`` for its ephemeral tokens), and, from a browser that cannot
set headers on a WebSocket, the subprotocol ``openai-insecure-api-key.<key>``
in ``Sec-WebSocket-Protocol``. Any of them can reach a log line: uvicorn's
WebSocket protocol logs each handshake's path *with its query string*, the
websockets library logs every request header at DEBUG, and a traceback may
quote whatever an exception held.

Guarantees of :func:`redact` (and so of every record through a handler that
:func:`redacting` set up, which is every handler of Sluice's logging, uvicorn's
included, in both transport modes and every worker):

* the value of a credential query parameter (:data:`CREDENTIAL_PARAMS`, names
  compared case-insensitively after percent-decoding) after ``?``, ``&`` or
  ``;`` is replaced by ``[redacted]``, the rest of the URL kept;
* the value of a credential header (:data:`CREDENTIAL_HEADERS`) is replaced,
  written as ``Name: value`` (to the end of the line), or quoted as in a
  ``repr`` of headers (``'name': 'value'``, ``(b'name', b'value')``);
* ``Bearer <token>`` and ``openai-insecure-api-key.<key>`` lose the token;
* anything shaped like a provider or Sluice key (``sk-…``, ``AIza…``,
  ``ya29.…``, ``ek_…``, ``auth_tokens/…``) is replaced wherever it stands:
  the net under the rules above, for a key in a place nobody foresaw.

Redacting twice gives the same text. Sluice's JSON access log never takes the
query string or a header in the first place (``proxy/accesslog/line.py``);
code that logs a request target itself should call :func:`loggable_target`.
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any
from urllib.parse import unquote

REDACTED = "[redacted]"

# Query parameters that carry a credential, with any provider's SDK:
# Gemini's `key` and, for ephemeral tokens, `access_token`; the rest are the
# usual names of other APIs and OAuth flows.
CREDENTIAL_PARAMS = frozenset(
    {
        "key",
        "api_key",
        "api-key",
        "apikey",
        "x-goog-api-key",
        "x-api-key",
        "access_token",
        "id_token",
        "refresh_token",
        "token",
        "auth",
        "authorization",
        "client_secret",
        "password",
        "secret",
        "sig",
        "signature",
    }
)

# Headers whose value is a credential, or may hold one (a browser's
# WebSocket subprotocols: `openai-insecure-api-key.<key>`).
CREDENTIAL_HEADERS = (
    "authorization",
    "proxy-authorization",
    "x-goog-api-key",
    "x-api-key",
    "api-key",
    "openai-api-key",
    "cookie",
    "set-cookie",
    "sec-websocket-protocol",
)

_HEADER_NAMES = "|".join(re.escape(name) for name in CREDENTIAL_HEADERS)

# `name=value` after ?, & or ; — the value runs to the next separator, space or quote.
_QUERY_PARAM = re.compile(r"(?<=[?&;])([^=&;?\s#\"'<>]+)=([^&;\s#\"'<>]*)")
# 'name': 'value', "name": "value", (b'name', b'value'): a repr of headers.
_QUOTED_HEADER = re.compile(
    rf"""(?i)(b?(['"])(?:{_HEADER_NAMES})\2\s*[:,]\s*b?(['"]))((?:\\.|(?!\3).)*)(\3)"""
)
# Name: value, to the end of the line (a header as written on the wire or by
# the websockets library), unless the value is a quoted one handled above.
_LINE_HEADER = re.compile(rf"(?im)((?<![\w-])(?:{_HEADER_NAMES})[ \t]*:[ \t]*)(?!['\"]|b['\"])([^\r\n]+)")
_TOKENS = re.compile(
    r"""(?ix)
    (\bbearer\s+)[^\s'",;]+                     # Authorization: Bearer <token>
    | (openai-insecure-api-key\.)[^\s'",;]+     # a browser's WebSocket subprotocol
    """
)
# Key shapes: OpenAI and Anthropic (sk-…, Sluice's own sk-sluice-…), OpenAI's
# ephemeral realtime keys (ek_…), Google API keys (AIza…), Google OAuth access
# tokens (ya29.…) and Gemini's ephemeral tokens (auth_tokens/…).
_KEY_SHAPES = re.compile(
    r"(?<![\w-])(?:sk-[\w-]{12,}|ek_[\w-]{12,}|AIza[\w-]{20,}|ya29\.[\w.-]{12,}|auth_tokens/[\w-]+)"
)


def _param(match: re.Match[str]) -> str:
    name = match.group(1)
    if unquote(name).lower() in CREDENTIAL_PARAMS and match.group(2) != REDACTED:
        return f"{name}={REDACTED}"
    return match.group(0)


def _token(match: re.Match[str]) -> str:
    return f"{match.group(1) or match.group(2)}{REDACTED}"


def redact(text: str) -> str:
    """``text`` without any credential value it held (see the module's guarantees)."""
    text = _QUERY_PARAM.sub(_param, text)
    text = _QUOTED_HEADER.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(5)}", text)
    text = _LINE_HEADER.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    text = _TOKENS.sub(_token, text)
    return _KEY_SHAPES.sub(REDACTED, text)


def loggable_target(raw_path: bytes, query_string: bytes) -> str:
    """A request's path and query as a log line may show them: credential parameters redacted."""
    path = raw_path.decode("latin-1")
    if not query_string:
        return path
    return redact(f"{path}?{query_string.decode('latin-1')}")


def _redact_arg(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(value.decode("latin-1")).encode("latin-1")
    return value  # numbers keep their %d; anything else is caught in the whole message


# uvicorn's access formatter reads the record's arguments one by one, so its
# records keep their shape; every other record may become its message.
_KEEP_ARGS = frozenset({"uvicorn.access"})


class RedactingFilter(logging.Filter):
    """A handler filter: the record's message, arguments, traceback and stack, redacted in place."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_redact_arg(a) for a in args)
        elif isinstance(args, dict):
            record.args = {k: _redact_arg(v) for k, v in args.items()}
        if record.name not in _KEEP_ARGS:
            try:
                message = record.getMessage()
            except Exception:  # a malformed call: logging reports it itself
                message = None
            if message is not None:
                clean = redact(message)
                if clean != message:
                    record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


FILTER_NAME = "sluice_redact"


def redacting(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a logging dictConfig, changed in place) with :class:`RedactingFilter` on every handler."""
    config.setdefault("filters", {})[FILTER_NAME] = {"()": f"{__name__}.RedactingFilter"}
    for handler in config.get("handlers", {}).values():
        filters = handler.setdefault("filters", [])
        if FILTER_NAME not in filters:
            filters.append(FILTER_NAME)
    return config
