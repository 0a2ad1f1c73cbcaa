"""Gemini requests served by Vertex AI, and Vertex requests served by an API key.

A Gemini *model call* names its model and method in the path, in one of two
forms:

* Gemini API: ``/{v1beta|v1|v1alpha}/models/{model}:{method}``
* Vertex AI:  ``/{v1|v1beta1}/projects/{p}/locations/{l}/publishers/google/models/{model}:{method}``
  (or ``/{version}/publishers/google/models/...`` in Vertex express mode)

Either form can be served by either kind of credential: a Vertex credential
gets ``/v1/projects/{its project}/locations/{its location}/publishers/google/
models/{model}:{method}`` on its endpoint, an API key gets
``/v1beta/models/{model}:{method}`` on the Gemini API. The body and the
streamed response pass through unchanged (see README for the fields the two
APIs treat differently). Other Gemini paths (files, caches, model lists) are
Gemini-API only.

Access tokens come from the service account's own ``token_uri`` through
google-auth, in a worker thread, and are refreshed when less than five
minutes remain: at most one refresh at a time, never one per request.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from .credentials import CredentialSpec

_MODEL_CALL = re.compile(
    r"^/(?P<version>v1|v1beta|v1alpha|v1beta1)/"
    r"(?:projects/[^/]+/locations/[^/]+/publishers/google/|publishers/google/)?"
    r"models/(?P<model>[^/:]+):(?P<method>[A-Za-z]+)$"
)
_CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
REFRESH_MARGIN = 300.0  # seconds before expiry


@dataclass(frozen=True, slots=True)
class ModelCall:
    version: str
    model: str
    method: str
    vertex_form: bool


def model_call(upstream_path: str) -> ModelCall | None:
    match = _MODEL_CALL.match(upstream_path)
    if match is None:
        return None
    vertex_form = "/publishers/google/" in upstream_path
    return ModelCall(match["version"], match["model"], match["method"], vertex_form)


def gemini_path(upstream_path: str) -> str:
    """The path an API key (Gemini API) serves: Vertex-form model calls are rewritten."""
    call = model_call(upstream_path)
    if call is None or not call.vertex_form:
        return upstream_path
    return f"/v1beta/models/{call.model}:{call.method}"


def vertex_path(spec: CredentialSpec, upstream_path: str) -> str | None:
    """The path on the Vertex endpoint, or ``None`` when Vertex cannot serve the request."""
    call = model_call(upstream_path)
    if call is None:
        return None
    version = "v1beta1" if call.version == "v1beta1" else "v1"
    return (
        f"/{version}/projects/{spec.project}/locations/{spec.location}"
        f"/publishers/google/models/{call.model}:{call.method}"
    )


class TokenError(Exception):
    """The token endpoint refused or could not be reached (or, for Code Assist, the project
    could not be had); ``reason`` says which in a word, for logs and metrics."""

    def __init__(self, message: str, reason: str = "token") -> None:
        super().__init__(message)
        self.reason = reason


class VertexToken:
    """An OAuth2 access token for one service account, kept fresh."""

    def __init__(self, spec: CredentialSpec) -> None:
        from google.oauth2 import service_account  # only needed with a Vertex credential

        assert spec.service_account_file is not None
        self._credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
            str(spec.service_account_file), scopes=[_CLOUD_PLATFORM]
        )
        self._lock = asyncio.Lock()
        self.refreshes = 0

    def _fresh(self) -> bool:
        token, expiry = self._credentials.token, self._credentials.expiry
        if not token or expiry is None:
            return False
        remaining = expiry.replace(tzinfo=UTC) - datetime.now(UTC)
        return bool(remaining.total_seconds() > REFRESH_MARGIN)

    async def token(self) -> str:
        if not self._fresh():
            async with self._lock:
                if not self._fresh():  # another request may have refreshed it meanwhile
                    await asyncio.to_thread(self._refresh)
        return str(self._credentials.token)

    def _refresh(self) -> None:
        import google.auth.exceptions
        from google.auth.transport.requests import Request

        try:
            self._credentials.refresh(Request())
        except (google.auth.exceptions.RefreshError, google.auth.exceptions.TransportError) as exc:
            # The message can quote the token endpoint's reply; it never holds the key.
            raise TokenError(f"token refresh failed: {exc.__class__.__name__}") from None
        self.refreshes += 1
