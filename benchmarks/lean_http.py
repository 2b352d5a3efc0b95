"""A minimal keep-alive HTTP/1.1 client for load generation on small machines.

httpx's async client costs ~20 ms of CPU per request at 200 concurrent connections on a
2-core machine, so a flood measured with it mostly measures the load generator (it took
0.6-0.8 of a core, out of 2). This client does only what the benchmarks need: POST a JSON
body over a persistent connection per in-flight request, read the status, headers and a
``Content-Length`` or chunked body. No TLS, no redirects, no proxies.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    """Status, lower-case headers and raw body of one response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class LeanClient:
    """POSTs JSON to one URL over a pool of persistent connections (one per in-flight request).

    Args:
        url: ``http://host:port/path``.
    """

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"LeanClient needs an http:// URL, got {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.path = parts.path or "/"
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post_json(self, body: dict[str, Any], timeout_s: float, headers: dict[str, str] | None = None) -> Reply:
        """Sends one POST; raises ``OSError`` / ``TimeoutError`` / ``ValueError`` on transport failures."""
        payload = json.dumps(body).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{extra}"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
        request = head + payload
        if not self._idle:
            return await self._exchange(await asyncio.open_connection(self.host, self.port), request, timeout_s)
        try:
            return await self._exchange(self._idle.pop(), request, timeout_s)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            # A kept-alive connection the server closed meanwhile fails before any answer: send
            # once more on a fresh one, as browsers and httpx do (the request was not received).
            if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                raise
            return await self._exchange(await asyncio.open_connection(self.host, self.port), request, timeout_s)

    async def _exchange(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes,
                        timeout_s: float) -> Reply:
        """One request/response on ``conn``; keeps the connection for reuse unless the server closes it."""
        reader, writer = conn
        try:
            writer.write(request)
            reply = await asyncio.wait_for(self._read(reader), timeout_s)
        except BaseException:
            writer.close()
            raise
        if reply.headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self._idle.append(conn)
        return reply

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> Reply:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        if "content-length" in headers:
            return Reply(status, headers, await reader.readexactly(int(headers["content-length"])))
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return Reply(status, headers, b"".join(chunks))
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
        raise ValueError("response has neither Content-Length nor chunked encoding")

    async def aclose(self) -> None:
        """Closes idle connections."""
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()
