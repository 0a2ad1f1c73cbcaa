"""Google account OAuth credentials files for tests, known to the mock's token endpoint.

The refresh token and client are fresh random strings, registered with the
mock as an account whose token exchange (``grant_type=refresh_token``) at the
mock's ``/token`` gives an access token its Code Assist endpoints accept.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from proxy.mock import MockHandle


def make_oauth_file(mock: MockHandle, directory: Path) -> tuple[Path, str]:
    """Write ``directory/oauth_creds.json`` (Google's ``authorized_user`` format, mode 0600,
    its token_uri the mock's) and return its path and refresh token."""
    refresh = "1//0e-REFRESHcanary" + secrets.token_urlsafe(24)
    client_id = f"{secrets.randbelow(10**12)}-mock.apps.googleusercontent.com"
    secret = "GOCSPX-" + secrets.token_urlsafe(18)
    info = {
        "type": "authorized_user",
        "client_id": client_id,
        "client_secret": secret,
        "refresh_token": refresh,
        "token_uri": f"{mock.url}/token",
    }
    path = directory / "oauth_creds.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(info, out)
    mock.state.add_oauth_user(refresh, client_id, secret)
    return path, refresh
