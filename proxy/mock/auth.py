"""Credential handling for the mock LLM provider (``proxy.mock``).

* Per-key rules: make the mock answer a fixed error status to one credential,
  to test key rotation, failover and cooldowns in the proxy.
* A Google OAuth2 token endpoint for the service-account JWT-bearer grant,
  which verifies the assertion for real (RS256 signature, ``aud``, ``exp``,
  ``iat``) so a proxy that signs badly fails here as it would against Google.
* The access tokens it issued, so the Vertex AI route can demand one.

Kept apart from the HTTP server so ``proxy.mock.server`` stays about transport.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

JWT_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth (since 1.33) and Google's other client libraries always put this
# in "aud", whatever token_uri they POST to (Private Service Connect routes the
# request to Google anyway), and Google's endpoint accepts it: so must we.
GOOGLE_OAUTH2_AUDIENCE = "https://oauth2.googleapis.com/token"
# Google's own 401 message for a missing/expired/unknown OAuth2 token.
UNAUTHENTICATED_MESSAGE = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
    "or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
# Google rejects assertions valid for longer than an hour, and tolerates a
# little clock skew on iat/exp.
_MAX_ASSERTION_LIFETIME = 3600
_CLOCK_SKEW = 60
_TIMEFRAME = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
    "Check your iat and exp values in the JWT claim."
)
UNAUTHENTICATED_HEADERS = {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'}
_CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-goog-api-key")


@dataclass(frozen=True)
class KeyRule:
    """The fixed answer the mock gives every request presenting one key."""

    status: int
    retry_after: float | None = None

    @property
    def retry_after_header(self) -> str | None:
        return None if self.retry_after is None else f"{self.retry_after:g}"


def presented_credentials(headers: Mapping[str, str], query: str = "") -> list[str]:
    """The credentials a request carries (lower-case header names), in the
    order Authorization (Bearer only), x-api-key, x-goog-api-key, ?key=."""
    found: list[str] = []
    for name in _CREDENTIAL_HEADERS:
        value = headers.get(name, "")
        if name == "authorization":
            scheme, _, value = value.partition(" ")
            value = value.strip() if scheme.lower() == "bearer" else ""
        if value and value not in found:
            found.append(value)
    # Gemini also takes its API key in the query string.
    for value in parse_qs(query).get("key", []):
        if value and value not in found:
            found.append(value)
    return found


def bearer_token(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _normalise_url(url: str) -> tuple[str, str, int | None, str]:
    """scheme, host, port, path: case-insensitive where URLs are, default
    ports made explicit, query and fragment ignored."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:  # a garbage port in a client-supplied aud
        port = -1
    return scheme, (parts.hostname or "").lower(), port, parts.path.rstrip("/") or "/"


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


class GrantError(Exception):
    """A rejected token request: Google's OAuth2 error code and description."""

    def __init__(self, description: str, error: str = "invalid_grant", status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def verify_assertion(
    assertion: str, keys: Mapping[str, list[rsa.RSAPublicKey]], token_url: str, now: float
) -> dict[str, Any]:
    """Check a JWT-bearer assertion as Google's token endpoint does; return
    its claims or raise :class:`GrantError`."""
    try:
        head_b64, claims_b64, sig_b64 = assertion.split(".")
        header = json.loads(_b64url(head_b64))
        claims = json.loads(_b64url(claims_b64))
        signature = _b64url(sig_b64)
    except (ValueError, binascii.Error) as exc:  # JSONDecodeError is a ValueError
        raise GrantError(f"Invalid JWT: malformed assertion ({exc})") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise GrantError("Invalid JWT: malformed assertion")
    # Only RS256: accepting "none" or HS256 is the classic JWT verification hole.
    if header.get("alg") != "RS256":
        raise GrantError(f"Invalid JWT: unsupported algorithm {header.get('alg')!r}")
    public_keys = keys.get(str(claims.get("iss")))
    if not public_keys:
        raise GrantError("Invalid grant: account not found")
    signed = f"{head_b64}.{claims_b64}".encode()
    if not any(_signature_ok(key, signature, signed) for key in public_keys):
        raise GrantError("Invalid JWT Signature.")
    aud = claims.get("aud")
    accepted = {_normalise_url(token_url), _normalise_url(GOOGLE_OAUTH2_AUDIENCE)}
    if not isinstance(aud, str) or _normalise_url(aud) not in accepted:
        raise GrantError("Invalid JWT: Failed audience check.")
    exp, iat = _seconds(claims.get("exp")), _seconds(claims.get("iat"))
    if exp is None or iat is None:
        raise GrantError(_TIMEFRAME)
    if exp <= now - _CLOCK_SKEW or iat > now + _CLOCK_SKEW or exp - iat > _MAX_ASSERTION_LIFETIME:
        raise GrantError(_TIMEFRAME)
    # google-auth sends scope="" when the credentials were built without
    # scopes; Google then refuses, and so should a faithful mock.
    if not claims.get("scope") and not claims.get("target_audience"):
        raise GrantError("Invalid OAuth scope or ID token audience provided.", "invalid_scope")
    return claims


def _seconds(value: object) -> float | None:
    # bool is an int subclass, but "exp": true is no timestamp.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _signature_ok(key: rsa.RSAPublicKey, signature: bytes, signed: bytes) -> bool:
    try:
        key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


class AuthState:
    """Key rules, service accounts and issued OAuth2 tokens; a base of
    ``proxy.mock.server.MockState``. Mutated on the mock's loop, read by tests: each
    access is a single dict operation, atomic under the GIL."""

    def __init__(self) -> None:
        self.key_rules: dict[str, KeyRule] = {}
        self.service_accounts: dict[str, list[rsa.RSAPublicKey]] = {}
        # access token -> time.monotonic() at which it stops being accepted
        self.issued_tokens: dict[str, float] = {}
        self.token_lifetime: float = 3600
        self.token_requests = 0  # every POST to a token endpoint, failed ones too
        # When set, the token endpoint refuses every request with this status.
        self.token_endpoint_status: int | None = None
        self._token_ids = itertools.count(1)

    def reset_auth(self) -> None:
        """Forget per-test faults and counters. Service accounts and issued
        tokens survive, like real credentials: a long-lived proxy under test
        may hold a cached token across tests."""
        self.key_rules.clear()
        self.token_requests = 0
        self.token_endpoint_status = None

    # -------------------------------------------------------------- key rules
    def set_key_rule(self, key: str, status: int, retry_after: float | None = None) -> None:
        """Answer ``status`` (with the provider's error body) to every request
        presenting ``key``; ``retry_after`` seconds go in a retry-after header."""
        if not key or not 400 <= status <= 599:
            raise ValueError(f"a key rule needs a key and an error status, got {key!r}, {status}")
        self.key_rules[key] = KeyRule(status, retry_after)

    def clear_key_rules(self) -> None:
        self.key_rules.clear()

    def key_rule_control(self, spec: object) -> None:
        """The ``/_mock/keys`` control: a JSON rule to add, or None to clear."""
        if spec is None:
            self.clear_key_rules()
            return
        if not isinstance(spec, dict):
            raise TypeError("expected a JSON object")
        retry = spec.get("retry_after")
        self.set_key_rule(str(spec["key"]), int(spec["status"]), None if retry is None else float(retry))

    def key_rule_for(self, credentials: list[str]) -> KeyRule | None:
        return next((self.key_rules[c] for c in credentials if c in self.key_rules), None)

    # --------------------------------------------------------- OAuth2 / Vertex
    def add_service_account(self, client_email: str, public_key_pem: bytes) -> None:
        """Trust ``public_key_pem`` (an RSA SubjectPublicKeyInfo PEM) for JWTs
        issued by ``client_email``; an account may have several keys."""
        key = load_pem_public_key(public_key_pem)
        if not isinstance(key, rsa.RSAPublicKey):
            raise TypeError("service-account keys are RSA")
        self.service_accounts.setdefault(client_email, []).append(key)

    def exchange_token(self, form: bytes, token_url: str) -> tuple[int, dict[str, Any]]:
        """Handle one token-endpoint request body; return (status, JSON body)."""
        self.token_requests += 1
        try:
            if self.token_endpoint_status is not None:
                raise GrantError("Mock injected token endpoint failure", status=self.token_endpoint_status)
            fields = parse_qs(form.decode("utf-8", "replace"))
            grant = fields.get("grant_type", [""])[0]
            if grant == "refresh_token":  # a Google account's (Code Assist: proxy.mock.code_assist)
                self.refresh_grant(fields)
            elif grant != JWT_GRANT_TYPE:
                raise GrantError(f"Invalid grant_type: {grant}", "unsupported_grant_type")
            else:
                assertion = fields.get("assertion", [""])[0]
                verify_assertion(assertion, self.service_accounts, token_url, time.time())
        except GrantError as err:
            return err.status, err.body()
        token = f"ya29.mock-{next(self._token_ids)}"
        self.issued_tokens[token] = time.monotonic() + self.token_lifetime
        # Google sends an integer; a fractional lifetime (fast expiry tests) stays as is.
        lifetime = self.token_lifetime
        expires_in = int(lifetime) if float(lifetime).is_integer() else lifetime
        return 200, {"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}

    def refresh_grant(self, fields: dict[str, list[str]]) -> None:
        """Check a refresh-token grant (``CodeAssistState`` knows the accounts)."""
        raise GrantError("Token has been expired or revoked.")

    def token_valid(self, token: str | None) -> bool:
        expiry = self.issued_tokens.get(token or "")
        return expiry is not None and time.monotonic() < expiry
