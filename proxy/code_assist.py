"""Gemini through Code Assist (``cloudcode-pa``), with a Google account's OAuth credentials.

This is how Gemini's command-line tool reaches Gemini for a signed-in user
with no API key and no Vertex project (google-gemini/gemini-cli,
``packages/core/src/code_assist``). Three Gemini API methods have a Code
Assist counterpart, ``POST {endpoint}/v1internal:{method}``:

==========================  =======================================================
Gemini API (from the SDK)   Code Assist
==========================  =======================================================
``:generateContent``        body ``{"model", "project", "request": <body>}``;
                            answer ``{"response": <GenerateContentResponse>, "traceId"}``
``:streamGenerateContent``  the same, ``?alt=sse``: each event's data wrapped so
``:countTokens``            body ``{"request": {"model": "models/<m>", …<body>}}``;
                            answer as the Gemini API's
==========================  =======================================================

Anything else (files, caches, model lists, embeddings, a stream without
``alt=sse``) is not served: the pool gives it to another credential, or the
client gets a Gemini-format error saying why.

The request body is wrapped by adding bytes around it (or splicing the model
in, for ``countTokens``), never by parsing it, so a streamed upload stays
streamed. Answers are unwrapped by :mod:`proxy.envelope`.

Tokens and the project (:class:`CodeAssistAuth`):

* The access token comes from the refresh token through google-auth, in a
  worker thread, under one lock: concurrent requests share one refresh. It is
  refreshed when less than five minutes (or half its lifetime) remain.
* The project is the configured one, or is discovered once with
  ``loadCodeAssist`` after the first token; an account that has none yet is
  onboarded with ``onboardUser`` on its default tier (polling the long-running
  operation), as the command-line tool does.
* A failure of either raises :class:`~proxy.vertex.TokenError` with a short
  reason (``token``, ``401``, ``403``, ``project``): the pool fails over.
  Neither token ever appears in a message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from .credentials import CredentialSpec, read_oauth_file
from .http import Body
from .vertex import TokenError, model_call

API_VERSION = "v1internal"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 (a URL)
# The command-line tool's OAuth client, used when the credentials file names
# none (its oauth_creds.json does not): a refresh token can only be refreshed
# by the client it was issued to. Google's installed-application flow makes
# this secret public by design; gemini-cli publishes it in its source.
GEMINI_CLI_CLIENT_ID = "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com"
GEMINI_CLI_CLIENT_SECRET = "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"  # noqa: S105 (public, see above)
REFRESH_MARGIN = 300.0  # seconds before expiry, or half the lifetime when that is shorter
# What the command-line tool says about itself in loadCodeAssist and onboardUser.
CLIENT_METADATA = {"ideType": "IDE_UNSPECIFIED", "platform": "PLATFORM_UNSPECIFIED", "pluginType": "GEMINI"}
FREE_TIER, LEGACY_TIER = "free-tier", "legacy-tier"
_HTTP_TIMEOUT = 30.0
_ONBOARD_POLLS = (0.5, 1.0, 2.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0)  # about a minute

Unwrap = Literal["sse", "json", "none"]
_METHODS: dict[str, Unwrap] = {
    "streamGenerateContent": "sse",
    "generateContent": "json",
    "countTokens": "none",
}
SERVED_METHODS = "generateContent, streamGenerateContent (alt=sse) and countTokens"


@dataclass(frozen=True, slots=True)
class Envelope:
    """What a request to Code Assist needs: its method, model, and how its answer is unwrapped."""

    method: str
    model: str
    unwrap: Unwrap


def code_assist_call(upstream_path: str, query_string: bytes) -> tuple[str, Envelope] | None:
    """The Code Assist path (with its query) and envelope, or ``None`` if Code Assist cannot serve it."""
    call = model_call(upstream_path)
    if call is None or call.method not in _METHODS:
        return None
    unwrap = _METHODS[call.method]
    if unwrap == "sse":
        if b"alt=sse" not in query_string.split(b"&"):
            return None  # the JSON-array stream has no Code Assist counterpart
        return f"/{API_VERSION}:{call.method}?alt=sse", Envelope(call.method, call.model, unwrap)
    return f"/{API_VERSION}:{call.method}", Envelope(call.method, call.model, unwrap)


def unserved_reason(upstream_path: str) -> str:
    call = model_call(upstream_path)
    what = f"{call.method}" if call is not None else "this path"
    return f"Code Assist does not serve {what}; it serves {SERVED_METHODS}"


class EnvelopeError(ValueError):
    """The request body cannot be put in the envelope (countTokens needs a JSON object)."""


def wrap_body(envelope: Envelope, project: str, data: Body, length: int | None) -> tuple[Body, int | None]:
    """The request body in Code Assist's envelope, and its new declared length."""
    if envelope.unwrap == "none":  # countTokens: {"request": {"model": "models/m", …}}
        head = b'{"request":{"model":' + orjson.dumps("models/" + envelope.model)
        if not isinstance(data, bytes | None):
            raise EnvelopeError("countTokens bodies this large cannot go through Code Assist")
        inner = (data or b"{}").strip()
        if not inner.startswith(b"{"):
            raise EnvelopeError("the request body must be a JSON object")
        rest = inner[1:].lstrip()
        return head + (b"" if rest.startswith(b"}") else b",") + rest + b"}", None
    head = (
        b'{"model":' + orjson.dumps(envelope.model) + b',"project":' + orjson.dumps(project) + b',"request":'
    )
    if data is None or data == b"":
        return head + b"{}}", None
    if isinstance(data, bytes):
        return head + data + b"}", None
    size = None if length is None else len(head) + length + 1
    return _around(head, data, b"}"), size


async def _around(head: bytes, pieces: AsyncIterator[bytes], tail: bytes) -> AsyncIterator[bytes]:
    yield head
    async for piece in pieces:
        yield piece
    yield tail


class CodeAssistAuth:
    """One Google account's access token and Code Assist project, kept fresh."""

    def __init__(self, spec: CredentialSpec) -> None:
        from google.oauth2.credentials import Credentials  # only needed with a Code Assist credential

        assert spec.oauth_file is not None and spec.endpoint is not None
        info = read_oauth_file(spec.oauth_file, spec.label)
        self._credentials = Credentials(  # type: ignore[no-untyped-call]
            token=None,
            refresh_token=info["refresh_token"],
            token_uri=info.get("token_uri") or GOOGLE_TOKEN_URI,
            client_id=info.get("client_id", GEMINI_CLI_CLIENT_ID),
            client_secret=info.get("client_secret", GEMINI_CLI_CLIENT_SECRET),
        )
        self.endpoint = spec.endpoint
        self.project: str | None = spec.project
        self.tier: str | None = None
        self._lock = asyncio.Lock()
        self._lifetime = 0.0
        self.refreshes = 0

    def _fresh(self) -> bool:
        token, expiry = self._credentials.token, self._credentials.expiry
        if not token or expiry is None:
            return False
        remaining = (expiry.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds()
        return bool(remaining > min(REFRESH_MARGIN, self._lifetime / 2))

    async def token(self) -> str:
        """A live access token, the project known: one refresh at a time, never one per request."""
        if not self._fresh() or self.project is None:
            async with self._lock:
                if not self._fresh():  # another request may have refreshed it meanwhile
                    await asyncio.to_thread(self._refresh)
                if self.project is None:
                    self.project = await asyncio.to_thread(self._discover, str(self._credentials.token))
        return str(self._credentials.token)

    def invalidate(self) -> None:
        """Forget the access token (Code Assist refused it): the next request refreshes."""
        self._credentials.token = None

    def _refresh(self) -> None:
        import google.auth.exceptions
        from google.auth.transport.requests import Request

        started = time.time()
        try:
            self._credentials.refresh(Request())  # type: ignore[no-untyped-call]
        except (google.auth.exceptions.RefreshError, google.auth.exceptions.TransportError) as exc:
            # The message can quote the token endpoint's reply; it never holds the token.
            raise TokenError(f"token refresh failed: {exc.__class__.__name__}") from None
        expiry = self._credentials.expiry
        self._lifetime = expiry.replace(tzinfo=UTC).timestamp() - started if expiry is not None else 0.0
        self.refreshes += 1

    # ------------------------------------------------------------ the project
    def _discover(self, token: str) -> str:
        """``loadCodeAssist``, then ``onboardUser`` if the account has no tier yet."""
        loaded = self._post(token, "loadCodeAssist", {"metadata": dict(CLIENT_METADATA)})
        if loaded.get("currentTier"):
            project = loaded.get("cloudaicompanionProject")
            self.tier = _tier_id(loaded.get("currentTier"))
            if isinstance(project, str) and project:
                return project
            raise TokenError(_no_project(loaded), "project")
        tier = next(
            (t for t in loaded.get("allowedTiers") or [] if isinstance(t, dict) and t.get("isDefault")),
            {"id": LEGACY_TIER},
        )
        self.tier = _tier_id(tier)
        # The free tier's project is managed by Google: naming one is refused.
        request: dict[str, Any] = {"tierId": self.tier, "metadata": dict(CLIENT_METADATA)}
        operation = self._post(token, "onboardUser", request)
        for pause in _ONBOARD_POLLS:
            if operation.get("done") or not isinstance(operation.get("name"), str):
                break
            time.sleep(pause)
            operation = self._get(token, f"/{API_VERSION}/{operation['name']}")
        response = operation.get("response") if operation.get("done") else None
        project = response.get("cloudaicompanionProject") if isinstance(response, dict) else None
        project_id = project.get("id") if isinstance(project, dict) else None
        if isinstance(project_id, str) and project_id:
            return project_id
        raise TokenError(_no_project(loaded), "project")

    def _post(self, token: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(token, "POST", f"/{API_VERSION}:{method}", body)

    def _get(self, token: str, path: str) -> dict[str, Any]:
        return self._call(token, "GET", path, None)

    def _call(self, token: str, verb: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        import requests

        headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        try:
            reply = requests.request(
                verb, self.endpoint + path, json=body, headers=headers, timeout=_HTTP_TIMEOUT
            )
        except requests.RequestException as exc:
            raise TokenError(f"Code Assist unreachable: {exc.__class__.__name__}", "connect") from None
        if reply.status_code != 200:
            reason = str(reply.status_code) if reply.status_code in (401, 403, 429) else "project"
            raise TokenError(f"Code Assist {path} answered {reply.status_code}", reason)
        try:
            parsed = reply.json()
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise TokenError(f"Code Assist {path} answered no JSON object", "project")
        return parsed


def _tier_id(tier: object) -> str:
    value = tier.get("id") if isinstance(tier, dict) else None
    return value if isinstance(value, str) and value else LEGACY_TIER


def _no_project(loaded: dict[str, Any]) -> str:
    reasons = [
        str(t["reasonMessage"])
        for t in loaded.get("ineligibleTiers") or []
        if isinstance(t, dict) and isinstance(t.get("reasonMessage"), str)
    ]
    if reasons:
        return "Code Assist: the account is not eligible: " + "; ".join(reasons)
    return "Code Assist: the account has no project; set project in the credential's configuration"
