"""Real-shaped Google service-account key files for tests, trusted by the mock.

The key pair is generated fresh (RSA-2048, as Google issues), so the JWTs a
client signs with the file are verified by the mock's token endpoint exactly
as Google would verify them.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from urllib.parse import quote

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.mock import MockHandle

DEFAULT_EMAIL = "sluice-test@mock-project.iam.gserviceaccount.com"


def make_service_account(mock: MockHandle, directory: Path, email: str = DEFAULT_EMAIL) -> Path:
    """Write ``directory/service-account.json`` (mode 0600) for a new key pair
    whose token_uri is the mock's ``/token``, register the public key with the
    mock, and return the file's path."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = {
        "type": "service_account",
        "project_id": "mock-project",
        "private_key_id": secrets.token_hex(20),
        "private_key": private_pem.decode(),
        "client_email": email,
        "client_id": str(10**20 + secrets.randbelow(9 * 10**20)),  # 21 digits, like Google's
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": f"{mock.url}/token",
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{quote(email)}",
        "universe_domain": "googleapis.com",
    }
    path = directory / "service-account.json"
    # Created 0600 from the start: a private key must never be world-readable,
    # not even for the moment between write and chmod.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(info, out, indent=2)
    path.chmod(0o600)  # O_CREAT's mode does not apply to an existing file
    mock.state.add_service_account(email, public_pem)
    return path


def vertex_config(
    mock: MockHandle,
    directory: Path,
    *,
    endpoint: str | None = None,
    location: str = "us-central1",
    with_api_key: bool = True,
) -> Path:
    """A ``SLUICE_CONFIG`` file whose Gemini pool is a Vertex service account (the mock's token
    endpoint; requests to ``endpoint``, the mock by default), then the API key of ``GEMINI_API_KEY``."""
    config = directory / "sluice.toml"
    text = f"""
[[providers.gemini.credentials]]
label = "vertex"
type = "vertex"
service_account_file = "{make_service_account(mock, directory)}"
location = "{location}"
endpoint = "{endpoint or mock.url}"
"""
    if with_api_key:
        text += """
[[providers.gemini.credentials]]
label = "studio"
type = "api_key"
api_key_env = "GEMINI_API_KEY"
"""
    config.write_text(text)
    return config
