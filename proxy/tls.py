"""Sluice's own TLS: a certificate and key, checked at start, handed to uvicorn.

Why Sluice speaks TLS at all, when nginx in front is what we recommend:
google-genai's live (WebSocket) client always dials ``wss://`` (it swaps the
base URL's scheme and passes an SSL context), so without a TLS terminator in
front, Sluice must terminate TLS itself.

Guarantees:

* Both files or neither: one alone stops the start, naming the missing
  setting. Both are loaded here, once, before any socket is bound, so a
  missing file, a bad PEM, a key that does not match the certificate, or an
  encrypted key (Sluice would otherwise wait for a passphrase on a terminal
  nobody watches) is one line of configuration error, not a worker crash.
* uvicorn builds the server context from the same files in every worker
  (``loop.create_server(ssl=...)``); it wraps the socket below the HTTP
  protocol, so the fast and the stock protocol, and the WebSocket protocol an
  upgrade hands over to, all run over it unchanged. TLS 1.2 at least, and
  only forward-secret AEAD cipher suites for TLS 1.2 (uvicorn's default
  cipher string, ``TLSv1``, would leave out the AES-GCM suites).
* Plain HTTP sent to the TLS port fails the handshake and the connection is
  closed at once: the client gets an error, never a hang.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

CERT_SETTING = "SLUICE_SSL_CERTFILE"
KEY_SETTING = "SLUICE_SSL_KEYFILE"

# Mozilla's "intermediate" choice for TLS 1.2, in OpenSSL's cipher-string
# terms; TLS 1.3 suites are configured apart from this and all allowed.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL"


class TlsFileError(ValueError):
    """A TLS file Sluice cannot use; ``setting`` names the one to fix."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(problem)
        self.setting = setting


def check_files(certfile: Path | None, keyfile: Path | None) -> None:
    """Raise :class:`TlsFileError` unless both files are given and load as a certificate and its key."""
    if certfile is None and keyfile is None:
        return
    if certfile is None or keyfile is None:
        missing, given = (CERT_SETTING, KEY_SETTING) if certfile is None else (KEY_SETTING, CERT_SETTING)
        raise TlsFileError(
            missing,
            f"not set, but {given} is: TLS needs both a certificate and its key "
            "(--ssl-certfile and --ssl-keyfile), or neither",
        )
    for setting, path in ((CERT_SETTING, certfile), (KEY_SETTING, keyfile)):
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise TlsFileError(setting, f"cannot read {path}: {exc.strerror}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile, password=_no_passphrase)
    except _Encrypted:
        raise TlsFileError(KEY_SETTING, f"{keyfile} is encrypted; Sluice needs an unencrypted key") from None
    except ssl.SSLError as exc:
        raise TlsFileError(
            CERT_SETTING, f"cannot load {certfile} with the key {keyfile}: {exc.reason or exc}"
        ) from None


class _Encrypted(Exception):
    pass


def _no_passphrase() -> bytes:
    raise _Encrypted


def uvicorn_options(certfile: Path | None, keyfile: Path | None) -> dict[str, Any]:
    """The ``uvicorn.Config`` arguments for TLS with these files; none without them."""
    if certfile is None or keyfile is None:
        return {}
    return {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile), "ssl_ciphers": CIPHERS}
