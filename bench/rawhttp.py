"""A lean HTTP/1.1 client for load generators: keep-alive connections over asyncio streams.

Why not aiohttp: at 300 heartbeats/s the aiohttp generator used a quarter of a core (~0.85 ms of
CPU per request) on a 2-core machine that also runs the ingress, Kafka, Cassandra and the
processor, so at 1,000/s the generator alone would take most of a core from what it measures.
This client writes a pre-formatted request and reads the status line, the headers it needs and a
``Content-Length`` body; nothing else (no chunked bodies, no redirects, no TLS, no cookies). That is
all a load generator against our own ingress needs, and it costs a fraction of the CPU.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType


class HttpProtocolError(Exception):
    """The server answered something this client does not read (or closed the connection)."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def exchange(self, request: bytes) -> Answer:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        try:
            status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError) as exc:
            raise HttpProtocolError(f"bad status line {lines[0]!r}") from exc
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lowered = name.strip().lower()
            if lowered == b"content-length":
                length = int(value)
            elif lowered == b"transfer-encoding":
                raise HttpProtocolError("chunked answers are not read by this client")
        return Answer(status, await self.reader.readexactly(length) if length else b"")

    def close(self) -> None:
        self.writer.close()


class RawHttpPool:
    """Up to ``size`` keep-alive connections to one ``host:port``, one request in flight on each.

    A request waits for a free connection when all are busy (as aiohttp's connector limit does), so
    an open-loop generator's latency includes that wait: it is the server not keeping up."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port, self.size = host, port, size
        self._idle: asyncio.LifoQueue[_Connection] = asyncio.LifoQueue()
        self._opened = 0
        self._host_header = f"{host}:{port}".encode()

    async def __aenter__(self) -> RawHttpPool:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()

    def format(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
        """The request's bytes; format once and send many times when the request repeats."""
        lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + self._host_header]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}".encode())
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(b"Content-Type: application/json")
            lines.append(b"Content-Length: " + str(len(body)).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    async def _open(self) -> _Connection:
        self._opened += 1
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            self._opened -= 1
            raise
        return _Connection(reader, writer)

    async def send(self, request: bytes, timeout_s: float = 30.0) -> Answer:
        """Send formatted ``request`` and read its answer; a broken connection is dropped, not reused.

        A kept-alive connection the server closed while it sat idle (uvicorn closes them after 5 s)
        fails before any answer arrives; that request is sent again once on a new connection, as
        browsers and HTTP libraries do. Nothing else is retried."""
        reused = not self._idle.empty() or self._opened >= self.size
        connection = await self._idle.get() if reused else await self._open()
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(timeout_s):  # no task per request, unlike wait_for
                    answer = await connection.exchange(request)
            except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
                connection.close()
                self._opened -= 1
                stale = reused and attempt == 1 and (not isinstance(exc, asyncio.IncompleteReadError)
                                                     or not exc.partial)
                if not stale:
                    raise
                reused, connection = False, await self._open()
                continue
            except BaseException:
                connection.close()
                self._opened -= 1
                raise
            self._idle.put_nowait(connection)
            return answer
        raise AssertionError("unreachable: the second attempt returns or raises")

    def close(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait().close()
