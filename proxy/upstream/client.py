"""The backend call: a keep-alive HTTP/1.1 connection pool with a connect timeout and a per-call deadline.

mitmproxy has no upstream timeouts and cannot answer a flow that waits on its upstream, so wxgate makes the
backend call itself. :meth:`UpstreamClient.send` never raises: every failure becomes an :class:`UpstreamResult`
whose ``kind`` is a closed label (``timeout``, ``refused``, ``error``) next to the status classes.

The client is wxgate's own (:mod:`proxy.upstream.http1` frames the bytes; an ``asyncio.Protocol`` per connection), not
aiohttp's: a backend call through ``aiohttp.ClientSession`` cost ~0.14 ms more CPU than this one, a tenth of a
verified request. It does what the forward needs and no more: ``http://`` and ``https://`` backends, at most
``pool_size`` connections (more calls wait for one within their deadline), idle connections kept for
``keepalive`` seconds, no redirects, no cookies, no proxies from the environment, replies up to 1 MiB. A call
that fails on a reused connection before any answer is retried once on a new one only for idempotent methods
(RFC 9112 §9.3.1), as aiohttp does: a POST may already have been processed.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from proxy.upstream.http1 import BodyTooLarge, ProtocolError, Response, ResponseParser, request_bytes

MAX_REPLY_BYTES = 1024 * 1024  # WeChat replies are tiny; a runaway backend must not exhaust memory
UpstreamKind = Literal["2xx", "3xx", "4xx", "5xx", "timeout", "refused", "error"]
_CLASSES: dict[int, UpstreamKind] = {2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


@dataclass(frozen=True, slots=True)
class UpstreamResult:
    kind: UpstreamKind
    status: int = 0
    content_type: str = ""
    body: bytes = b""
    seconds: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == "2xx"


class ConnectFailed(OSError):
    """The backend could not be reached (refused, unreachable, TLS handshake failed)."""


class StaleConnection(ConnectionError):
    """A reused keep-alive connection ended before any byte of the answer."""


class _Connection(asyncio.Protocol):
    """One connection to the backend; carries one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser: ResponseParser | None = None
        self.waiter: asyncio.Future[Response] | None = None
        self.answered = False  # some byte of the current answer arrived
        self.lost = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def exchange(self, request: bytes, parser: ResponseParser) -> asyncio.Future[Response]:
        assert self.transport is not None
        waiter = asyncio.get_running_loop().create_future()
        if self.lost or self.transport.is_closing():
            waiter.set_exception(StaleConnection("the connection closed while idle"))
            return waiter
        self.parser, self.answered, self.waiter = parser, False, waiter
        self.transport.write(request)
        return waiter

    def data_received(self, data: bytes) -> None:
        if self.parser is None:  # nothing was asked: a misbehaving backend
            self.close()
            return
        self.answered = True
        try:
            response = self.parser.feed(data)
        except ProtocolError as e:
            self._finish(error=e)
            self.close()
            return
        if response is not None:
            self._finish(response=response)

    def eof_received(self) -> bool:
        if self.parser is not None:
            try:
                self._finish(response=self.parser.eof())
            except ProtocolError as e:
                self._finish(error=e if self.answered else StaleConnection(str(e)))
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.parser is not None:
            err = exc or ProtocolError("the backend closed the connection before the answer was complete")
            self._finish(error=err if self.answered else StaleConnection(str(err)))

    def _finish(self, response: Response | None = None, error: BaseException | None = None) -> None:
        waiter, self.waiter, self.parser = self.waiter, None, None
        if waiter is None or waiter.done():
            return
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(response)  # type: ignore[arg-type]

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


@dataclass(frozen=True, slots=True)
class _Target:
    scheme: str
    host: str
    port: int
    request_target: str  # path and query, as sent

    @property
    def authority(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def split_url(url: str) -> _Target:
    """``http://host:port/path?query`` into its parts (the URL is built by wxgate from a validated base)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {url!r}")
    slash = rest.find("/")
    authority, target = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    if authority.startswith("["):
        host, _, port = authority[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = authority.rpartition(":") if ":" in authority else (authority, "", "")
    if not host or (port and not port.isdigit()):
        raise ValueError(f"bad host or port in {url!r}")
    return _Target(scheme, host, int(port) if port else (443 if scheme == "https" else 80), target)


class UpstreamClient:
    """A keep-alive connection pool to the backend(s)."""

    def __init__(self, pool_size: int = 100, connect_timeout: float = 1.0, keepalive: float = 30.0) -> None:
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._slots = asyncio.Semaphore(pool_size)  # binds to the running loop on first use
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> UpstreamResult:
        started = time.perf_counter()
        try:
            target = split_url(url)
            request = request_bytes(method, target.request_target, target.authority, headers, body)
            async with asyncio.timeout(timeout):
                response = await self._call(target, method, request)
        except TimeoutError:
            return UpstreamResult("timeout", seconds=time.perf_counter() - started, error="timed out")
        except ConnectFailed as e:
            return UpstreamResult("refused", seconds=time.perf_counter() - started, error=str(e))
        except BodyTooLarge as e:
            return UpstreamResult(
                "error", e.status, seconds=time.perf_counter() - started, error="reply larger than 1 MiB"
            )
        except (ProtocolError, OSError, ValueError) as e:
            return UpstreamResult("error", seconds=time.perf_counter() - started, error=type(e).__name__)
        return UpstreamResult(
            _CLASSES.get(response.status // 100, "error"),
            response.status,
            response.headers.get("content-type", ""),
            response.body,
            time.perf_counter() - started,
        )

    async def _call(self, target: _Target, method: str, request: bytes) -> Response:
        async with self._slots:
            key = (target.scheme, target.host, target.port)
            conn = self._take_idle(key)
            retry = conn is not None and method in IDEMPOTENT
            if conn is None:
                conn = await self._connect(target)
            while True:
                try:
                    response = await conn.exchange(request, ResponseParser(MAX_REPLY_BYTES, method == "HEAD"))
                except StaleConnection:
                    conn.close()
                    if not retry:
                        raise
                    retry = False
                    conn = await self._connect(target)
                    continue
                except BaseException:  # timeout, cancellation, a broken answer: never reuse it
                    conn.close()
                    raise
                break
            if response.keep_alive and not conn.lost and not self._closed:
                conn.idle_since = time.monotonic()
                self._idle.setdefault(key, []).append(conn)
            else:
                conn.close()
            return response

    def _take_idle(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = time.monotonic()
        while idle and (idle[0].lost or now - idle[0].idle_since > self._keepalive):
            idle.pop(0).close()  # the oldest first: a list kept in the order connections went idle
        while idle:
            conn = idle.pop()
            if not conn.lost:
                return conn
        return None

    async def _connect(self, target: _Target) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = _Connection()
        tls = self._tls() if target.scheme == "https" else None
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: conn,
                    target.host,
                    target.port,
                    ssl=tls,
                    server_hostname=target.host if tls else None,
                ),
                self._connect_timeout,
            )
        except OSError as e:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            raise ConnectFailed(str(e) or type(e).__name__) from e
        return conn

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def close(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
