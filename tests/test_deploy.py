"""The shipped deployment, end to end: official SDKs → nginx (deploy/nginx.conf, TLS) → Sluice → mock.

deploy/nginx.conf is used as shipped, with only its ports, upstream
addresses and certificate paths replaced, so the file users copy is the one
under test.
"""

from __future__ import annotations

import asyncio
import configparser
import hashlib
import itertools
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from proxy.config import load_settings
from proxy.keybook import create_key
from proxy.limits import Limits
from proxy.mock import MockHandle, mock_tokens
from tests.accesslog import read_lines, wait_for_count, wait_for_line
from tests.conftest import SluiceFactory, SluiceProcess, upstream_env
from tests.nginx_server import NginxServer, free_port, start_nginx
from tests.redis_server import RedisServer
from tests.ws_handshake import handshake

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = (ROOT / "deploy" / "nginx.conf").read_text()


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, f"deploy/nginx.conf no longer contains {old!r}: update the test's adaptation"
    return text.replace(old, new)


def adapt_nginx_conf(tls_port: int, http_port: int, sluice_ports: list[int], cert: Path, key: Path) -> str:
    """deploy/nginx.conf with only ports, addresses and paths changed."""
    conf = _replace(
        SHIPPED,
        "    server 127.0.0.1:8000 max_fails=0;\n",
        "".join(f"    server 127.0.0.1:{port} max_fails=0;\n" for port in sluice_ports),
    )
    conf = _replace(conf, "    listen 80;\n    listen [::]:80;\n", f"    listen 127.0.0.1:{http_port};\n")
    conf = _replace(
        conf,
        "    listen 443 ssl http2;\n    listen [::]:443 ssl http2;\n",
        f"    listen 127.0.0.1:{tls_port} ssl http2;\n",
    )
    conf = _replace(conf, "/etc/ssl/sluice/fullchain.pem", str(cert))
    return _replace(conf, "/etc/ssl/sluice/privkey.pem", str(key))


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed (make test installs it)"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@dataclass
class Deployment:
    nginx: NginxServer
    tls_url: str
    sluices: list[SluiceProcess]
    access_logs: list[Path]
    tls: ssl.SSLContext
    secrets: dict[str, str]

    def wait_for_log(self, request_id: str) -> dict[str, object]:
        return wait_for_line(self.access_logs, request_id)


def deploy(
    tmp: Path,
    mock: MockHandle,
    sluice_factory: SluiceFactory,
    redis: RedisServer,
    instances: list[tuple[str, ...]],
    keys: dict[str, Limits],
) -> Iterator[Deployment]:
    keys_file = tmp / "keys.toml"
    secrets = {name: create_key(keys_file, name, limits) for name, limits in keys.items()}
    logs = [tmp / f"access-{i}.log" for i in range(len(instances))]
    sluices = [
        sluice_factory(
            *args,
            **upstream_env(mock),
            SLUICE_KEYS_FILE=str(keys_file),
            SLUICE_REDIS_URL=redis.url,
            SLUICE_TRUSTED_PROXIES="127.0.0.1",
            SLUICE_ACCESS_LOG=str(log),
        )
        for args, log in zip(instances, logs, strict=True)
    ]
    cert, key = make_certificate(tmp)
    tls_port = free_port()
    ports = [int(s.url.rsplit(":", 1)[1]) for s in sluices]
    conf = adapt_nginx_conf(tls_port, free_port(), ports, cert, key)
    nginx = start_nginx(tmp / "nginx", conf, tls_port)
    tls = ssl.create_default_context(cafile=str(cert))
    try:
        yield Deployment(nginx, f"https://127.0.0.1:{tls_port}", sluices, logs, tls, secrets)
    finally:
        nginx.stop()


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory,
    mock: MockHandle,
    sluice_factory: SluiceFactory,
    redis_server: RedisServer,
) -> Iterator[Deployment]:
    """nginx in front of one Sluice with two workers."""
    keys = {"app": Limits(rpm=10_000, concurrency=100), "tight": Limits(rpm=3)}
    yield from deploy(
        tmp_path_factory.mktemp("deploy"), mock, sluice_factory, redis_server, [("--workers", "2")], keys
    )


def test_the_instance_runs_two_workers(deployment: Deployment) -> None:
    deadline = time.monotonic() + 10
    while deployment.sluices[0].log().count("Application startup complete") < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_sdks_through_nginx_receive_tokens_as_the_mock_paced_them(deployment: Deployment) -> None:
    key = deployment.secrets["app"]
    pacing = {"x-mock-tokens": "10", "x-mock-delay-ms": "100"}
    client = openai.OpenAI(
        base_url=f"{deployment.tls_url}/v1",
        api_key=key,
        http_client=openai.DefaultHttpxClient(verify=deployment.tls),
        default_headers=pacing,
    )
    arrivals, text = [], ""
    for chunk in client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
            text += chunk.choices[0].delta.content
    assert text == "".join(mock_tokens(10))
    gaps = sorted(b - a for a, b in itertools.pairwise(arrivals))
    # Paced, not batched: gaps around the mock's 100 ms. One stall of this VM
    # (tens of ms, anywhere on the path) makes one gap long and the next one
    # short, so one short gap is allowed; buffering would make most of them short.
    assert 0.08 < gaps[len(gaps) // 2] < 0.15, f"gaps not like the mock's 100 ms: {gaps}"
    assert sum(gap < 0.05 for gap in gaps) <= 1 and gaps[-1] < 0.3, f"batched or stalled: {gaps}"
    assert gaps[-1] > 0.05, "the last tokens came in a burst"

    an = anthropic.Anthropic(
        base_url=deployment.tls_url,
        api_key=key,
        http_client=anthropic.DefaultHttpxClient(verify=deployment.tls),
    )
    with an.messages.stream(model="c", max_tokens=9, messages=[{"role": "user", "content": "hi"}]) as stream:
        assert "".join(stream.text_stream) == "".join(mock_tokens(12))
    options = genai_types.HttpOptions(base_url=deployment.tls_url, client_args={"verify": deployment.tls})
    ge = genai.Client(api_key=key, http_options=options)
    streamed = "".join(c.text or "" for c in ge.models.generate_content_stream(model="g", contents="hi"))
    assert streamed == "".join(mock_tokens(12))


async def _body(total: int) -> AsyncIterator[bytes]:
    block = bytes(range(256)) * 1024
    for offset in range(0, total, len(block)):
        yield block[: min(len(block), total - offset)]


async def test_a_20_mb_request_body_goes_through(deployment: Deployment, mock: MockHandle) -> None:
    total = 20 * 1024 * 1024
    expected = hashlib.sha256()
    async for piece in _body(total):
        expected.update(piece)
    headers = {
        "authorization": f"Bearer {deployment.secrets['app']}",
        "content-type": "application/octet-stream",
    }
    async with httpx.AsyncClient(base_url=deployment.tls_url, verify=deployment.tls, timeout=30) as client:
        response = await client.post("/v1/files", headers=headers, content=_body(total))
    assert response.status_code == 200, response.text
    assert (response.json()["bytes"], response.json()["sha256"]) == (total, expected.hexdigest())


def test_client_keys_and_limits_work_through_nginx(deployment: Deployment) -> None:
    with httpx.Client(base_url=deployment.tls_url, verify=deployment.tls) as client:
        assert client.post("/v1/chat/completions", json={}).status_code == 401
        tight = {"authorization": f"Bearer {deployment.secrets['tight']}"}
        statuses = [client.post("/v1/chat/completions", json={}, headers=tight) for _ in range(4)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    assert statuses[-1].headers["retry-after"]
    assert statuses[-1].json()["error"]["code"] == "rate_limit_exceeded"


def test_access_log_shows_the_client_behind_nginx_and_ignores_forged_headers(deployment: Deployment) -> None:
    headers = {"authorization": f"Bearer {deployment.secrets['app']}", "x-forwarded-for": "203.0.113.9"}
    # Through nginx, from 127.0.0.3: nginx replaces whatever X-Forwarded-For the client sent.
    via_nginx = httpx.HTTPTransport(local_address="127.0.0.3", verify=deployment.tls)
    with httpx.Client(base_url=deployment.tls_url, transport=via_nginx) as client:
        client.post("/v1/chat/completions", json={}, headers={**headers, "x-request-id": "through-nginx"})
    # Straight to Sluice from 127.0.0.2, an untrusted peer, with a forged header.
    direct = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=deployment.sluices[0].url, transport=direct) as client:
        client.post("/v1/chat/completions", json={}, headers={**headers, "x-request-id": "forged"})
    assert deployment.wait_for_log("through-nginx")["client"] == "127.0.0.3"
    assert deployment.wait_for_log("forged")["client"] == "127.0.0.2"


def test_metrics_are_not_public_through_nginx(deployment: Deployment) -> None:
    via = httpx.HTTPTransport(local_address="127.0.0.3", verify=deployment.tls)
    with httpx.Client(base_url=deployment.tls_url, transport=via) as client:
        assert client.get("/metrics").status_code == 403
    with httpx.Client(base_url=deployment.tls_url, verify=deployment.tls) as client:
        assert client.get("/metrics").status_code == 200  # from 127.0.0.1, allowed


def test_plain_http_redirects_to_tls(deployment: Deployment) -> None:
    http_port = int(
        deployment.nginx.prefix.joinpath("nginx.conf").read_text().split("listen 127.0.0.1:")[1].split(";")[0]
    )
    response = httpx.get(f"http://127.0.0.1:{http_port}/v1/models")
    assert response.status_code == 301
    assert response.headers["location"].startswith("https://")


def test_two_instances_behind_nginx_enforce_one_combined_limit(
    tmp_path: Path, mock: MockHandle, sluice_factory: SluiceFactory, redis_server: RedisServer
) -> None:
    keys = {"shared": Limits(rpm=6)}
    for setup in deploy(tmp_path, mock, sluice_factory, redis_server, [(), ()], keys):
        headers = {"authorization": f"Bearer {setup.secrets['shared']}"}
        statuses = []
        for i in range(12):
            # A new connection each time, so nginx spreads them over both instances.
            with httpx.Client(base_url=setup.tls_url, verify=setup.tls) as client:
                r = client.post("/v1/chat/completions", json={}, headers={**headers, "x-request-id": f"r{i}"})
                statuses.append(r.status_code)
        assert statuses.count(200) == 6, statuses
        assert statuses.count(429) == 6
        wait_for_count(setup.access_logs, 12)
        served = [len(read_lines(path)) for path in setup.access_logs]
        assert all(count > 0 for count in served), f"nginx did not use both instances: {served}"


def test_several_workers_without_redis_warn_at_start(sluice_factory: SluiceFactory, mock: MockHandle) -> None:
    process = sluice_factory("--workers", "2", **upstream_env(mock))
    assert "2 workers without SLUICE_REDIS_URL" in process.log()


def test_the_systemd_unit_verifies_and_outwaits_the_drain(tmp_path: Path) -> None:
    unit = (ROOT / "deploy" / "sluice.service").read_text()
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(unit)
    service = parser["Service"]
    assert float(service["TimeoutStopSec"]) >= load_settings({}).drain_timeout + 10
    assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed"
    assert service["EnvironmentFile"] and "sluice serve" in service["ExecStart"]
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed (make test installs it)"
    # Only the path of the executable changes: point it at this checkout's.
    adapted = tmp_path / "sluice.service"
    adapted.write_text(
        unit.replace("/opt/sluice/.venv/bin/sluice", str(Path(sys.executable).with_name("sluice")))
    )
    result = subprocess.run([analyze, "verify", str(adapted)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "sluice.service" in line]
    assert problems == [], problems


def test_concurrent_streams_through_nginx_keep_their_own_bytes(
    deployment: Deployment, mock: MockHandle
) -> None:
    """Two workers, keep-alive to nginx: parallel streams never mix or lose bytes."""

    async def one(i: int) -> None:
        headers = {"authorization": f"Bearer {deployment.secrets['app']}", "x-mock-tokens": str(5 + i)}
        async with httpx.AsyncClient(base_url=deployment.tls_url, verify=deployment.tls) as client:
            body = {"model": f"m{i}", "stream": True, "messages": []}
            response = await client.post("/v1/chat/completions", json=body, headers=headers)
        assert response.text.count('"content":"') == 5 + i + 1
        assert f'"model":"m{i}"' in response.text

    async def all_of_them() -> None:
        await asyncio.gather(*(one(i) for i in range(20)))

    asyncio.run(all_of_them())


async def test_a_websocket_handshake_through_nginx_reaches_sluice(deployment: Deployment) -> None:
    """The realtime APIs' WebSocket upgrade passes nginx: what comes back is Sluice's answer, not nginx's."""
    wss = deployment.tls_url.replace("https://", "wss://")
    key = deployment.secrets["app"]
    got = await handshake(
        f"{wss}/v1/realtime?model=through-nginx",
        tls=deployment.tls,
        headers={"authorization": f"Bearer {key}"},
    )
    # Sluice accepts the session (the mock speaks OpenAI Realtime): a 101 with
    # Sluice's own headers (its rate-limit headers), not an answer of nginx's.
    assert got.outcome == "open" and got.status == 101, got
    assert got.headers.get("ratelimit-limit") == "10000", got
    # Sluice's WebSocket protocol saw the handshake: nginx passed the upgrade on.
    deadline = time.monotonic() + 10
    while not any('"WebSocket /v1/realtime?model=through-nginx"' in s.log() for s in deployment.sluices):
        assert time.monotonic() < deadline, "the handshake never reached Sluice as a WebSocket"
        await asyncio.sleep(0.05)


def _connections_to(port: int) -> set[tuple[str, str]]:
    """The TCP connections (either end on ``port``, listeners aside) in /proc/net/tcp, as address pairs."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        if state != "0A" and f":{port:04X}" in (local[-5:], remote[-5:]):  # 0A: LISTEN
            found.add((local, remote))
    return found


def test_plain_http_through_nginx_keeps_its_upstream_connection_alive(deployment: Deployment) -> None:
    """The WebSocket headers must not cost plain HTTP its keep-alive to Sluice (TIME_WAIT stays listed)."""
    port = int(deployment.sluices[0].url.rsplit(":", 1)[1])
    before = _connections_to(port)
    headers = {"authorization": f"Bearer {deployment.secrets['app']}"}
    for _ in range(20):  # a new client connection each time: only nginx's side can reuse
        with httpx.Client(base_url=deployment.tls_url, verify=deployment.tls) as client:
            assert client.post("/v1/chat/completions", json={}, headers=headers).status_code == 200
    new = _connections_to(port) - before
    assert len(new) <= 4, f"{len(new)} new nginx-to-Sluice connections for 20 requests: no keep-alive"
