"""A Code Assist credential on its own: its configuration, its token, its project.

The token endpoint and Code Assist are the mock's (a real HTTP server in a
thread); google-auth and requests talk to it as they would to Google.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from proxy.code_assist import GEMINI_CLI_CLIENT_ID, GOOGLE_TOKEN_URI, CodeAssistAuth
from proxy.credentials import CredentialError, CredentialSpec, from_config
from proxy.mock import MockHandle
from proxy.vertex import TokenError
from tests.oauth_user import make_oauth_file

pytestmark = pytest.mark.timeout(30)


def _spec(path: Path, endpoint: str, project: str | None = None) -> CredentialSpec:
    entry: dict[str, object] = {
        "label": "ca",
        "type": "code_assist",
        "oauth_file": str(path),
        "endpoint": endpoint,
    }
    if project is not None:
        entry["project"] = project
    return from_config("gemini", [entry], {})[0]


def test_the_configuration_is_checked_at_start(tmp_path: Path) -> None:
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"refresh_token": "1//REFRESH", "client_id": "c", "client_secret": "s"}))
    spec = _spec(creds, "https://cloudcode-pa.googleapis.com")
    assert (spec.kind, spec.oauth_file, spec.project) == ("code_assist", creds, None)
    assert "REFRESH" not in repr(spec)
    bad = [
        ({"type": "code_assist"}, "needs oauth_file"),
        ({"type": "code_assist", "oauth_file": str(tmp_path / "none.json")}, "cannot read"),
        ({"type": "code_assist", "oauth_file": str(creds), "project": "123456"}, "not a project number"),
        ({"type": "code_assist", "oauth_file": str(creds), "endpoint": "ftp://x"}, r"http\(s\) URL"),
    ]
    for entry, message in bad:
        with pytest.raises(CredentialError, match=message):
            from_config("gemini", [entry], {})
    with pytest.raises(CredentialError, match="gemini provider only"):
        from_config("openai", [{"type": "code_assist", "oauth_file": str(creds)}], {})
    creds.write_text(json.dumps({"access_token": "a"}))
    with pytest.raises(CredentialError, match="no refresh_token"):
        from_config("gemini", [{"type": "code_assist", "oauth_file": str(creds)}], {})
    creds.write_text(json.dumps({"refresh_token": "r", "client_id": "c"}))
    with pytest.raises(CredentialError, match="not both"):
        from_config("gemini", [{"type": "code_assist", "oauth_file": str(creds)}], {})


def test_the_command_line_tools_file_refreshes_with_its_client(tmp_path: Path) -> None:
    """oauth_creds.json names no client: its refresh token belongs to the tool's."""
    creds = tmp_path / "oauth_creds.json"
    cli = {
        "access_token": "ya29.x",
        "refresh_token": "1//r",
        "scope": "s",
        "token_type": "Bearer",
        "expiry_date": 1,
    }
    creds.write_text(json.dumps(cli))
    auth = CodeAssistAuth(_spec(creds, "https://cloudcode-pa.googleapis.com"))
    assert auth._credentials.client_id == GEMINI_CLI_CLIENT_ID
    assert auth._credentials.token_uri == GOOGLE_TOKEN_URI


async def test_200_concurrent_requests_at_expiry_share_one_refresh(tmp_path: Path, mock: MockHandle) -> None:
    path, _ = make_oauth_file(mock, tmp_path)
    auth = CodeAssistAuth(_spec(path, mock.url))
    mock.state.token_lifetime = 1
    first = await auth.token()
    assert auth.project == "mock-ca-project" and mock.state.code_assist_loads == 1
    mock.state.token_lifetime = 3600
    await asyncio.sleep(0.6)  # past half its lifetime: due for a refresh
    tokens = await asyncio.gather(*(auth.token() for _ in range(200)))
    assert len(set(tokens)) == 1 and tokens[0] != first
    assert mock.state.token_requests == 2 and auth.refreshes == 2
    assert mock.state.code_assist_loads == 1


async def test_failures_name_their_reason_and_never_a_token(tmp_path: Path, mock: MockHandle) -> None:
    path, refresh = make_oauth_file(mock, tmp_path)
    mock.state.code_assist_status = 403
    with pytest.raises(TokenError) as denied:
        await CodeAssistAuth(_spec(path, mock.url)).token()
    assert denied.value.reason == "403"
    mock.state.code_assist_status = None
    mock.state.revoked_refresh_tokens.add(refresh)
    with pytest.raises(TokenError) as revoked:
        await CodeAssistAuth(_spec(path, mock.url)).token()
    assert revoked.value.reason == "token"
    with pytest.raises(TokenError) as unreachable:
        mock.state.revoked_refresh_tokens.clear()
        await CodeAssistAuth(_spec(path, "http://127.0.0.1:9")).token()
    assert unreachable.value.reason == "connect"
    for error in (denied.value, revoked.value, unreachable.value):
        assert refresh not in str(error) and not any(t in str(error) for t in mock.state.issued_tokens)


async def test_a_configured_project_skips_discovery(tmp_path: Path, mock: MockHandle) -> None:
    path, _ = make_oauth_file(mock, tmp_path)
    auth = CodeAssistAuth(_spec(path, mock.url, project="my-project"))
    await auth.token()
    assert auth.project == "my-project" and mock.state.code_assist_loads == 0


def test_the_mock_is_told_over_http_to_fail_the_oauth_path(tmp_path: Path, mock: MockHandle) -> None:
    import httpx

    user = {"refresh_token": "1//http-user", "client_id": "cid", "client_secret": "sec"}
    with httpx.Client(base_url=mock.url) as client:
        assert client.post("/_mock/code-assist", json={"user": user, "status": 403}).json() == {"ok": True}
        assert mock.state.code_assist_status == 403 and "1//http-user" in mock.state.oauth_users
        client.post("/_mock/code-assist", json={"status": None, "revoke": "1//http-user"})
        assert mock.state.code_assist_status is None
        form = {"grant_type": "refresh_token", **user}
        revoked = client.post("/token", data=form)
        assert revoked.status_code == 400 and revoked.json()["error"] == "invalid_grant"
        client.post("/_mock/code-assist", json={"restore": "1//http-user"})
        assert client.post("/token", data=form).json()["access_token"].startswith("ya29.mock-")
        wrong = client.post("/token", data={**form, "client_secret": "other"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
        assert client.post("/_mock/code-assist", json={"user": {}}).status_code == 400
