"""A minimal keep-alive HTTP/1.1 client on asyncio streams, for many cheap connections.

Hundreds of stampede callers and an open-loop steady load need a client that costs little
CPU per request (the client shares two cores with the servers) and one connection each:
this writes prepared request bytes and reads a ``Content-Length`` response, nothing more.
It talks only to the broker (uvicorn always sends Content-Length for these endpoints).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

REQUEST_TIMEOUT_SECONDS = 30.0
_HEAD_LIMIT = 64 * 1024


class HttpError(Exception):
    """A response that could not be read (connection closed, malformed, timed out)."""


@dataclass(frozen=True)
class Answer:
    """Status line code, the headers we look at, and the body."""

    status: int
    source: str
    body: bytes


def post_bytes(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """A complete keep-alive POST request as bytes."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += [f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


def get_bytes(host: str, port: int, path: str) -> bytes:
    """A complete keep-alive GET request as bytes."""
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode("latin-1")


class Connection:
    """One keep-alive connection; requests on it are sequential."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        """Connect (bounded)."""
        async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, limit=_HEAD_LIMIT
            )

    async def send(self, request: bytes) -> Answer:
        """Write ``request`` and read its response; reconnects once if the peer had closed."""
        if self._writer is None or self._writer.is_closing():
            await self.open()
        assert self._reader is not None
        assert self._writer is not None
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                self._writer.write(request)
                head = await self._reader.readuntil(b"\r\n\r\n")
                status, length, source = _parse_head(head)
                body = await self._reader.readexactly(length)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await self.close()
            raise HttpError("no complete response") from None
        return Answer(status, source, body)

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        writer, self._writer = self._writer, None
        self._reader = None
        if writer is not None:
            writer.close()
            try:
                async with asyncio.timeout(2):
                    await writer.wait_closed()
            except (TimeoutError, OSError):
                pass


def _parse_head(head: bytes) -> tuple[int, int, str]:
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise HttpError("malformed status line") from None
    length = 0
    source = ""
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        lowered = name.strip().lower()
        if lowered == b"content-length":
            length = int(value.strip())
        elif lowered == b"token-broker-source":
            source = value.strip().decode("latin-1")
        elif lowered == b"transfer-encoding":
            raise HttpError("chunked responses are not supported here")
    return status, length, source
