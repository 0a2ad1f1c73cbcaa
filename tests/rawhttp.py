"""A minimal HTTP/1.1 client over a raw socket.

The official SDKs and httpx normalise paths, decode bodies and hide how a
response ended. These tests need the opposite: send exactly these bytes,
see exactly what came back and when, and close the socket at a chosen moment.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    head: bytes
    body: bytes = b""  # de-chunked body
    chunks: list[tuple[float, bytes]] = field(default_factory=list)  # (arrival, data) per chunk
    complete: bool = False  # the terminating chunk (or full Content-Length) arrived

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n == name.lower()]
        return values[-1] if values else None

    def header_count(self, name: str) -> int:
        return sum(1 for n, _ in self.headers if n == name.lower())


class RawConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, base_url: str) -> RawConnection:
        parts = urlsplit(base_url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer)

    async def send_request(
        self,
        method: str,
        target: str | bytes,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> None:
        target_bytes = target if isinstance(target, bytes) else target.encode()
        lines = [method.encode() + b" " + target_bytes + b" HTTP/1.1", b"Host: sluice.test"]
        all_headers = {"content-length": str(len(body))} if body or method in ("POST", "PUT") else {}
        all_headers.update(headers or {})
        lines += [f"{k}: {v}".encode() for k, v in all_headers.items()]
        self.writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        await self.writer.drain()

    async def read_head(self) -> RawResponse:
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = []
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.strip().lower(), value.strip()))
        return RawResponse(int(status_line.split()[1]), headers, head)

    async def read_chunk(self, response: RawResponse) -> bytes | None:
        """One chunk of a chunked body; ``None`` at the terminating chunk. Raises on EOF."""
        size_line = await self.reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            await self.reader.readuntil(b"\r\n")
            response.complete = True
            return None
        data = await self.reader.readexactly(size + 2)
        chunk = data[:-2]
        response.chunks.append((time.monotonic(), chunk))
        response.body += chunk
        return chunk

    async def read_body(self, response: RawResponse) -> RawResponse:
        """Read the rest of the body; ``complete`` says whether it ended properly."""
        length = response.header("content-length")
        try:
            if response.header("transfer-encoding") == "chunked":
                while await self.read_chunk(response) is not None:
                    pass
            elif length is not None:
                response.body = await self.reader.readexactly(int(length))
                response.chunks.append((time.monotonic(), response.body))
                response.complete = True
            else:
                response.body = await self.reader.read()
        except (asyncio.IncompleteReadError, ConnectionError):
            response.complete = False
        return response

    def close(self) -> None:
        self.writer.close()


async def request(
    base_url: str,
    method: str,
    target: str | bytes,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> RawResponse:
    conn = await RawConnection.open(base_url)
    try:
        await conn.send_request(method, target, headers, body)
        response = await conn.read_head()
        if method == "HEAD" or response.status in (204, 304):
            response.complete = True
            return response
        return await conn.read_body(response)
    finally:
        conn.close()
