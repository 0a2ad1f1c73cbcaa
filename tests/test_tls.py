"""Sluice's own TLS (``--ssl-certfile``/``--ssl-keyfile``, proxy/tls.py), in both transport modes.

A throwaway CA made by ``trustme`` signs the server's certificate; the
clients trust that CA and nothing else, so every call below is verified TLS.
The official SDKs make their usual calls over https, a WebSocket handshake
goes over wss (google-genai's live client dials nothing else), and plain
HTTP sent to the TLS port is refused at once.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import trustme
import uvicorn
from google import genai
from google.genai import types as genai_types
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from proxy.asgi import Receive, Scope, Send
from proxy.config import ConfigError, load_settings
from proxy.http import HTTP_MODES, server_options
from proxy.mock import MockHandle, mock_tokens
from proxy.server import bind_socket
from proxy.tls import uvicorn_options
from tests.conftest import SluiceFactory, SluiceProcess, clean_env, upstream_env
from tests.ws_handshake import handshake

pytestmark = pytest.mark.timeout(90)


@dataclass
class Pki:
    ca: trustme.CA
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()  # verifies the peer and its name
        context.load_verify_locations(cadata=self.ca.cert_pem.bytes().decode())
        return context


def make_pki(directory: Path) -> Pki:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = directory / "cert.pem", directory / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return Pki(ca, cert, key)


# ---------------------------------------------------------------- settings


def test_tls_needs_both_files_or_neither(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    assert not load_settings({}).tls
    settings = load_settings({"SLUICE_SSL_CERTFILE": str(pki.cert), "SLUICE_SSL_KEYFILE": str(pki.key)})
    assert settings.tls and settings.ssl_keyfile == pki.key
    with pytest.raises(ConfigError, match="needs both a certificate and its key") as info:
        load_settings({"SLUICE_SSL_CERTFILE": str(pki.cert)})
    assert info.value.setting == "SLUICE_SSL_KEYFILE"
    with pytest.raises(ConfigError) as info:
        load_settings({}, ssl_keyfile=pki.key)  # --ssl-keyfile alone
    assert info.value.setting == "SLUICE_SSL_CERTFILE"


def _problem(cert: Path, key: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings({"SLUICE_SSL_CERTFILE": str(cert), "SLUICE_SSL_KEYFILE": str(key)})
    return info.value


def test_tls_files_are_checked_at_start(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    missing = _problem(tmp_path / "nope.pem", pki.key)
    assert (missing.setting, "cannot read" in missing.problem) == ("SLUICE_SSL_CERTFILE", True)
    # A key that is not the certificate's.
    (tmp_path / "other").mkdir()
    other = make_pki(tmp_path / "other")
    mismatch = _problem(pki.cert, other.key)
    assert mismatch.setting == "SLUICE_SSL_CERTFILE" and "cannot load" in mismatch.problem
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    assert "cannot load" in _problem(garbage, pki.key).problem


def test_an_encrypted_key_is_refused_instead_of_asking_for_a_passphrase(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key(pki.key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    problem = _problem(pki.cert, encrypted)
    assert problem.setting == "SLUICE_SSL_KEYFILE" and "encrypted" in problem.problem


def test_the_command_line_stops_with_one_line_for_half_a_tls_setup(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--port", "0", "--ssl-certfile", str(pki.cert)],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "sluice: configuration error: SLUICE_SSL_KEYFILE: not set, but SLUICE_SSL_CERTFILE is: "
        "TLS needs both a certificate and its key (--ssl-certfile and --ssl-keyfile), or neither"
    ]


# ------------------------------------------------------------------ serving


@dataclass
class TlsSluice:
    process: SluiceProcess
    pki: Pki

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def tls_sluice(
    tmp_path_factory: pytest.TempPathFactory, mock: MockHandle, sluice_factory: SluiceFactory
) -> Iterator[TlsSluice]:
    """A two-worker Sluice serving TLS from its own certificate, in the mode of the run."""
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    process = sluice_factory(
        "--workers", "2", "--ssl-certfile", str(pki.cert), "--ssl-keyfile", str(pki.key), **upstream_env(mock)
    )
    deadline = time.monotonic() + 20
    while process.log().count("Application startup complete") < 2:
        assert time.monotonic() < deadline, process.log()
        time.sleep(0.05)
    yield TlsSluice(process, pki)


def test_the_banner_says_https(tls_sluice: TlsSluice) -> None:
    assert tls_sluice.url.startswith("https://127.0.0.1:")
    assert f"Sluice listening on {tls_sluice.url} (2 workers" in tls_sluice.process.log()


def test_the_sdks_speak_to_sluice_over_verified_tls(tls_sluice: TlsSluice) -> None:
    tls = tls_sluice.pki.client_context()
    client = openai.OpenAI(
        base_url=f"{tls_sluice.url}/v1", api_key="sk-any", http_client=openai.DefaultHttpxClient(verify=tls)
    )
    for _ in range(4):  # new connections, spread over both workers
        streamed = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        assert text == "".join(mock_tokens(12))
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "".join(mock_tokens(12))

    options = genai_types.HttpOptions(base_url=tls_sluice.url, client_args={"verify": tls})
    gemini = genai.Client(api_key="AIza-any", http_options=options)
    streamed_text = "".join(
        c.text or "" for c in gemini.models.generate_content_stream(model="g", contents="hi")
    )
    assert streamed_text == "".join(mock_tokens(12))
    assert gemini.models.generate_content(model="g", contents="hi").text == "".join(mock_tokens(12))


def test_a_client_that_does_not_trust_the_certificate_is_refused(tls_sluice: TlsSluice) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_sluice.url}/healthz", verify=ssl.create_default_context())


async def test_a_websocket_upgrade_over_tls_reaches_sluice(tls_sluice: TlsSluice) -> None:
    """wss:// through the TLS socket and the transport's protocol to the WebSocket protocol and the app."""
    wss = tls_sluice.url.replace("https://", "wss://")
    got = await handshake(f"{wss}/v1/realtime?model=tls-probe", tls=tls_sluice.pki.client_context())
    # With realtime merged, the session opens (the upstream is the mock, which speaks OpenAI Realtime).
    assert (got.outcome, got.status) == ("open", 101), got
    # The WebSocket protocol (not an HTTP 400 from the transport) logged it: the upgrade was seen.
    deadline = time.monotonic() + 10
    while '"WebSocket /v1/realtime?model=tls-probe"' not in tls_sluice.process.log():
        assert time.monotonic() < deadline, tls_sluice.process.log()
        await asyncio.sleep(0.05)


def test_plain_http_to_the_tls_port_fails_at_once(tls_sluice: TlsSluice) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", tls_sluice.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            answer = sock.recv(4096)
        except ConnectionResetError:
            answer = b""
    assert answer == b"", "plain HTTP got an answer from the TLS port"
    with pytest.raises(httpx.TransportError) as info:
        httpx.get(f"http://127.0.0.1:{tls_sluice.port}/healthz", timeout=10)
    assert not isinstance(info.value, httpx.TimeoutException)
    assert time.monotonic() - started < 5, "the TLS port let a plain-HTTP client wait"
    # And the port still serves TLS.
    with httpx.Client(verify=tls_sluice.pki.client_context()) as client:
        assert client.get(f"{tls_sluice.url}/healthz").status_code == 200


# ------------------------------------------------- the transports over TLS


async def _echo_then_close(scope: Scope, receive: Receive, send: Send) -> None:
    """HTTP: the scope's scheme. WebSocket: accept, echo one message, close with 1008 "bye"."""
    if scope["type"] == "http":
        body = scope["scheme"].encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    message = await receive()
    await send({"type": "websocket.send", "text": f"echo:{message['text']} over {scope['scheme']}"})
    await send({"type": "websocket.close", "code": 1008, "reason": "bye"})


@pytest.mark.parametrize("mode", HTTP_MODES)
async def test_an_accepted_websocket_runs_over_tls_in_both_transports(mode: str, tmp_path: Path) -> None:
    """What realtime needs below Sluice's app: the transport's protocol, then the WebSocket protocol
    it hands the upgrade to, on the TLS transport of the production event loop (as Sluice configures
    uvicorn: server_options and proxy/tls.py), with a session accepted, messages both ways and a close."""
    pki = make_pki(tmp_path)
    options = {**server_options(mode, {}), "log_config": None}  # leave this process's logging alone
    config = uvicorn.Config(
        _echo_then_close, lifespan="off", log_level="warning", **options, **uvicorn_options(pki.cert, pki.key)
    )
    server, sock = uvicorn.Server(config), bind_socket("127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            await asyncio.sleep(0.02)
        port = sock.getsockname()[1]
        tls = pki.client_context()
        async with httpx.AsyncClient(verify=tls) as client:
            assert (await client.get(f"https://127.0.0.1:{port}/")).text == "https"
        async with connect(f"wss://127.0.0.1:{port}/rt", ssl=tls, open_timeout=10) as ws:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), 10) == "echo:hi over wss"
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "bye")
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
