"""Code Assist (``cloudcode-pa``) for the mock: the way Gemini's command-line tool reaches Gemini.

* Google accounts: a refresh token (with the OAuth client it was issued to)
  that the mock's ``/token`` endpoint exchanges for an access token
  (``grant_type=refresh_token``), unless the token was revoked.
* ``v1internal:loadCodeAssist`` (the account's tier and project),
  ``v1internal:onboardUser`` (a long-running operation, done on the first
  ``GET v1internal/operations/…``) for an account not onboarded yet.
* ``v1internal:generateContent``, ``:streamGenerateContent?alt=sse`` and
  ``:countTokens``, which check the envelope (model, the account's project,
  the request object) and answer the same scripted text as the Gemini API,
  each response wrapped as ``{"response": …, "traceId": …}``.
* Faults: ``code_assist_status`` makes every Code Assist call answer that
  status (401: the OAuth path revoked; 429: the quota gone), and a revoked
  refresh token makes the token exchange fail (``invalid_grant``). The
  ``/_mock/code-assist`` control sets both over HTTP.

Every Code Assist call demands an access token the mock issued and that is still live.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import auth
from . import formats as fmt

if TYPE_CHECKING:
    from aiohttp import web

    from .server import _Exchange

REFRESH_GRANT = "refresh_token"
PROJECT = "mock-ca-project"
_TIERS = [
    {"id": "free-tier", "name": "Gemini Code Assist for individuals", "isDefault": True},
    {"id": "standard-tier", "name": "Gemini Code Assist", "userDefinedCloudaicompanionProject": True},
]


@dataclass(frozen=True)
class OAuthUser:
    client_id: str
    client_secret: str


class CodeAssistState:
    """Accounts, onboarding and faults of the mock's Code Assist; a base of ``MockState``."""

    def __init__(self) -> None:
        self.oauth_users: dict[str, OAuthUser] = {}  # refresh token -> the client it was issued to
        self.revoked_refresh_tokens: set[str] = set()
        self.code_assist_status: int | None = None
        self.code_assist_onboarded = True
        self.code_assist_project = PROJECT
        self.code_assist_loads = 0
        self.code_assist_onboards = 0
        self.code_assist_bodies: list[dict[str, Any]] = []  # the envelopes of the wrapped calls
        self._operations = itertools.count(1)

    def reset_code_assist(self) -> None:
        self.revoked_refresh_tokens.clear()
        self.code_assist_status = None
        self.code_assist_onboarded = True
        self.code_assist_loads = self.code_assist_onboards = 0
        self.code_assist_bodies.clear()

    def add_oauth_user(self, refresh_token: str, client_id: str, client_secret: str) -> None:
        self.oauth_users[refresh_token] = OAuthUser(client_id, client_secret)

    def refresh_grant(self, fields: dict[str, list[str]]) -> None:
        """Check a ``grant_type=refresh_token`` request; raise ``auth.GrantError`` as Google would."""
        token = fields.get("refresh_token", [""])[0]
        user = self.oauth_users.get(token)
        client_id, secret = fields.get("client_id", [""])[0], fields.get("client_secret", [""])[0]
        if user is None or token in self.revoked_refresh_tokens:
            raise auth.GrantError("Token has been expired or revoked.")
        if (client_id, secret) != (user.client_id, user.client_secret):
            raise auth.GrantError("The OAuth client was not found.", "invalid_client", 401)

    def code_assist_control(self, spec: object) -> None:
        """``/_mock/code-assist``: {"status": 401 or null, "revoke": "<refresh token>", "restore": …,
        "user": {"refresh_token", "client_id", "client_secret"}} (an account to accept)."""
        if not isinstance(spec, dict):
            raise TypeError("expected a JSON object")
        user = spec.get("user")
        if user is not None:
            if not isinstance(user, dict):
                raise TypeError("user must be an object")
            self.add_oauth_user(
                str(user["refresh_token"]), str(user["client_id"]), str(user["client_secret"])
            )
        if "status" in spec:
            self.code_assist_status = None if spec["status"] is None else int(spec["status"])
        if "revoke" in spec:
            self.revoked_refresh_tokens.add(str(spec["revoke"]))
        if "restore" in spec:
            self.revoked_refresh_tokens.discard(str(spec["restore"]))


_WRAPPED = re.compile(r"/v1internal:(?P<method>generateContent|streamGenerateContent|countTokens)$")


async def serve(ex: _Exchange, method: str, path: str) -> web.StreamResponse | None:
    """Answer a Code Assist call, or ``None`` when ``path`` is not one."""
    if not path.rpartition("/")[2].startswith("v1internal") and "/v1internal/operations/" not in path:
        return None
    ex.provider = "gemini"  # Google's error format
    state = ex.state
    if not state.token_valid(auth.bearer_token(ex.rec.headers)):
        body = fmt.error_body("gemini", 401, auth.UNAUTHENTICATED_MESSAGE)
        return await ex.send_json(body, 401, auth.UNAUTHENTICATED_HEADERS)
    if state.code_assist_status is not None:
        ex.rec.close("error_injected")
        status = state.code_assist_status
        return await ex.send_error(status, f"Mock Code Assist error {status}")
    if method == "POST" and path.endswith("/v1internal:loadCodeAssist"):
        return await _load(ex)
    if method == "POST" and path.endswith("/v1internal:onboardUser"):
        return await _onboard(ex)
    if method == "GET" and "/v1internal/operations/" in path:
        state.code_assist_onboarded = True
        project = {"id": state.code_assist_project, "name": state.code_assist_project}
        name = path.split("/v1internal/", 1)[1]
        done = {"cloudaicompanionProject": project}
        return await ex.send_json({"name": name, "done": True, "response": done})
    match = _WRAPPED.search(path)
    if method == "POST" and match is not None:
        return await _wrapped(ex, match["method"])
    return await ex.send_error(404, f"Unknown Code Assist method {method} {path}")


async def _load(ex: _Exchange) -> web.StreamResponse:
    state = ex.state
    state.code_assist_loads += 1
    if not isinstance(ex.body.get("metadata"), dict):
        return await ex.send_error(400, "metadata is required")
    if not state.code_assist_onboarded:
        return await ex.send_json({"allowedTiers": _TIERS})
    project = state.code_assist_project
    loaded = {"currentTier": _TIERS[0], "allowedTiers": _TIERS, "cloudaicompanionProject": project}
    return await ex.send_json(loaded)


async def _onboard(ex: _Exchange) -> web.StreamResponse:
    state = ex.state
    state.code_assist_onboards += 1
    tier = ex.body.get("tierId")
    if tier not in {t["id"] for t in _TIERS}:
        return await ex.send_error(400, f"Unknown tier {tier!r}")
    if tier == "free-tier" and ex.body.get("cloudaicompanionProject"):
        return await ex.send_error(400, "Precondition Failed: the free tier's project is managed by Google")
    return await ex.send_json({"name": f"operations/onboard-{next(state._operations)}", "done": False})


async def _wrapped(ex: _Exchange, method: str) -> web.StreamResponse:
    state, body = ex.state, ex.body
    request = body.get("request")
    state.code_assist_bodies.append(body)
    if not isinstance(request, dict):
        return await ex.send_error(400, "request must be an object")
    if method == "countTokens":
        model = request.get("model")
        if not isinstance(model, str) or not model.startswith("models/"):
            return await ex.send_error(400, "request.model must be models/{model}")
        return await ex.send_json({"totalTokens": ex.reply(model).input_tokens})
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return await ex.send_error(400, "model is required")
    if not state.code_assist_onboarded or body.get("project") != state.code_assist_project:
        return await ex.send_error(403, f"Permission denied on project {body.get('project')!r}")
    reply = ex.reply(model)
    if method == "generateContent":
        return await ex.send_json(_wrap(fmt.gemini_response(reply)))
    if ex.query.get("alt") != "sse":
        return await ex.send_error(400, "streamGenerateContent needs alt=sse")
    frames = [fmt.sse(_wrap(chunk), sep="\r\n") for chunk in fmt.gemini_chunks(reply)]
    return await ex.send_stream(fmt.StreamPlan("text/event-stream", [], frames, []))


def _wrap(response: dict[str, Any]) -> dict[str, Any]:
    # Code Assist's responses carry a traceId beside them, not a responseId in them.
    inner = dict(response)
    trace = inner.pop("responseId", None)
    return {"response": inner, "traceId": trace}
