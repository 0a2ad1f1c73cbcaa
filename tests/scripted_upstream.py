"""A real loopback upstream scripted byte by byte, for the tests of the upstream HTTP clients.

:func:`serve` starts an ``asyncio`` server on 127.0.0.1 (plain, or TLS with
the certificates of :func:`make_certificates`) that runs a test's handler for
each connection, and opens a client of either kind to reach it. Through its
:class:`Peer` a handler records the raw bytes of each request on its
connection, answers with exactly the bytes it is given, and can pause, cut
(FIN) or reset the connection, or wait for the client to go; the common
scripts are ready-made (:func:`answer_each`, :func:`answer_first_with`,
:func:`on_the_first_connection`). Nothing of the clients is mocked.
:func:`hanging_listener` is an address whose connects hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.http import Client, Origin, Response, ResponseBroken
from proxy.http.aioclient import AiohttpClient
from proxy.http.h1client import ConnectionPool

KINDS = ("fast", "stock")


def make_client(kind: str, connect_timeout: float = 5.0, idle_timeout: float = 15.0) -> Client:
    """A client of ``kind``: ``fast`` (:class:`ConnectionPool`) or ``stock`` (:class:`AiohttpClient`)."""
    if kind == "fast":
        return ConnectionPool(connect_timeout, idle_timeout=idle_timeout)
    return AiohttpClient(connect_timeout, idle_timeout=idle_timeout)


@dataclass
class Request:
    head: bytes  # request line and headers, through the blank line
    body: bytes  # de-chunked
    raw: bytes  # exactly the bytes received for this request

    @property
    def target(self) -> bytes:
        return self.head.split(b" ", 2)[1]

    def header(self, name: bytes) -> bytes | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name:
                return value.strip()
        return None


class Peer:
    """The upstream's side of one connection."""

    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.index = index  # the how-manieth connection the upstream accepted, from 0
        self.reader = reader
        self.writer = writer
        self.requests: list[Request] = []
        self.got_request = asyncio.Event()

    async def request(self) -> Request | None:
        """The next request, or None if the client closed the connection first."""
        head = await self.read_head()
        return None if head is None else await self.read_body(head)

    async def read_head(self) -> bytes | None:
        try:
            return await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return None
        except ConnectionError:
            return None

    async def read_body(self, head: bytes) -> Request:
        """The body of the request whose head was read (de-chunked), and the request recorded."""
        reader = self.reader
        raw, body = [head], []
        request = Request(head, b"", b"")
        length = request.header(b"content-length")
        if length is not None:
            raw.append(await reader.readexactly(int(length)))
            body = raw[1:]
        elif (request.header(b"transfer-encoding") or b"").lower() == b"chunked":
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                data = await reader.readexactly(size + 2)
                assert data.endswith(b"\r\n"), data[-20:]
                raw += (size_line, data)
                if size == 0:
                    break
                body.append(data[:-2])
        request = Request(head, b"".join(body), b"".join(raw))
        self.requests.append(request)
        self.got_request.set()
        return request

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def close(self) -> None:
        """End the connection with a FIN."""
        self.writer.close()

    def reset(self) -> None:
        """End the connection with a TCP reset."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.writer.transport.abort()

    async def client_left(self, timeout: float = 3.0) -> bytes:
        """Wait until the client's side of the connection is gone; what it sent meanwhile.

        A TimeoutError if the client keeps the connection open.
        """
        extra = b""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    data = await self.reader.read(65536)
                except ConnectionError:
                    return extra
                if not data:
                    return extra
                extra += data


Handler = Callable[[Peer], Awaitable[None]]


@dataclass
class Upstream:
    origin: Origin
    client: Client
    server: asyncio.Server
    peers: list[Peer] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    @property
    def connections(self) -> int:
        """How many connections the upstream accepted (after the TLS handshake, under TLS)."""
        return len(self.peers)

    @property
    def requests(self) -> list[Request]:
        return [request for peer in self.peers for request in peer.requests]

    async def peer(self, index: int) -> Peer:
        await eventually(lambda: len(self.peers) > index)
        return self.peers[index]

    async def get(self, target: bytes = b"/") -> tuple[Response, bytes]:
        """A GET and its whole body."""
        response = await self.client.request(self.origin, "GET", target, [])
        return response, await read_all(response)


async def eventually(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """Wait until ``condition()`` holds (a TimeoutError if it does not within ``timeout``)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def serve(
    kind: str, handler: Handler, *, tls: ssl.SSLContext | None = None, client: Client | None = None
) -> AsyncIterator[Upstream]:
    """A loopback upstream running ``handler`` per connection, and an open client of ``kind``
    (or ``client``, closed on the way out too).

    A handler failing fails the test (handlers that expect the client to go
    catch ConnectionError themselves).
    """
    tasks: set[asyncio.Task[None]] = set()
    upstream: Upstream

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        peer = Peer(len(upstream.peers), reader, writer)
        upstream.peers.append(peer)
        try:
            await handler(peer)
        except asyncio.CancelledError:
            pass  # the test is over (a cancelled handler task would be logged as an error)
        except BaseException as exc:
            upstream.errors.append(exc)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    client = client or make_client(kind)
    await client.open()
    upstream = Upstream(Origin("https" if tls else "http", "127.0.0.1", port), client, server)
    try:
        yield upstream
    finally:
        await client.close()
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if upstream.errors:
        raise upstream.errors[0]


def ok(body: bytes = b"ok", *extra: bytes) -> bytes:
    """A 200 response with a Content-Length, the ``extra`` header lines and ``body``."""
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n" % len(body)
    return head + b"".join(line + b"\r\n" for line in extra) + b"\r\n" + body


async def answer_each(peer: Peer) -> None:
    """Answer every request on the connection with its own target as the body, kept alive."""
    while (request := await peer.request()) is not None:
        await peer.send(ok(request.target))


def answer_first_with(answer: bytes) -> Handler:
    """A handler that answers a connection's first request with exactly ``answer``, and each
    later one as :func:`answer_each` does."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer)
        await answer_each(peer)

    return handler


def on_the_first_connection(handler: Handler) -> Handler:
    """``handler`` on the upstream's first connection; :func:`answer_each` on every later one."""

    async def dispatch(peer: Peer) -> None:
        await (answer_each(peer) if peer.index else handler(peer))

    return dispatch


async def read_all(response: Response) -> bytes:
    data = b""
    while piece := await response.read():
        data += piece
    return data


async def read_until_broken(response: Response) -> tuple[bytes, ResponseBroken]:
    """Read until the body fails; a clean end fails the test."""
    data = b""
    while True:
        try:
            piece = await response.read()
        except ResponseBroken as exc:
            return data, exc
        assert piece, f"a cut-short body ended cleanly after {len(data)} bytes"
        data += piece


@contextlib.contextmanager
def hanging_listener(host: str) -> Iterator[tuple[str, int]]:
    """A listener whose accept queue is full: Linux drops further SYNs, so connects to it hang."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind((host, 0))
        listener.listen(0)  # never accepted
        address = listener.getsockname()
        for _ in range(2):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(address)
            fillers.append(filler)
        time.sleep(0.1)  # the first filler is in the accept queue; the queue is full
        yield address
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


# TLS: a test CA and certificates it signed.


@dataclass
class Certificates:
    ca: bytes  # PEM of the test CA
    chain: Path  # the upstream's certificate, for 127.0.0.1, signed by the CA ...
    key: Path  # ... and its key
    wrong_name_chain: Path  # signed by the same CA, for another name only
    wrong_name_key: Path


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    san: list[x509.GeneralName] | None,
) -> x509.Certificate:
    """A CA's certificate when ``san`` is None, else a server's for the names in ``san``."""
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    if san is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        usage = x509.KeyUsage(True, False, False, False, False, True, True, False, False)  # sign, sign certs
        builder = builder.add_extension(usage, critical=True)
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_certificates(directory: Path) -> Certificates:
    """A fresh test CA, and in ``directory`` two server certificates it signed with their keys."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Sluice test CA", ca_key, None, ca_key, None)

    def leaf(name: str, san: list[x509.GeneralName]) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(name, key, ca, ca_key, san)
        chain, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return chain, key_path

    chain, key = leaf("upstream", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    wrong_chain, wrong_key = leaf("elsewhere", [x509.DNSName("elsewhere.test")])
    return Certificates(ca.public_bytes(serialization.Encoding.PEM), chain, key, wrong_chain, wrong_key)


def server_context(chain: Path, key: Path) -> ssl.SSLContext:
    """The upstream's TLS context: this certificate, and ALPN offering h2 before HTTP/1.1."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(chain, key)
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context
