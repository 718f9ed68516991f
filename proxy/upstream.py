"""The backend call: one pooled aiohttp session with connect/read timeouts and a per-call deadline.

mitmproxy has no upstream timeouts and cannot answer a flow that waits on its upstream, so wxgate makes the
backend call itself. :meth:`UpstreamClient.send` never raises: every failure becomes an :class:`UpstreamResult`
whose ``kind`` is a closed label (``timeout``, ``refused``, ``error``) next to the status classes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

MAX_REPLY_BYTES = 1024 * 1024  # WeChat replies are tiny; a runaway backend must not exhaust memory


@dataclass(frozen=True, slots=True)
class UpstreamResult:
    kind: str  # 2xx | 3xx | 4xx | 5xx | timeout | refused | error
    status: int = 0
    content_type: str = ""
    body: bytes = b""
    seconds: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == "2xx"


class UpstreamClient:
    """A keep-alive connection pool to the backend(s)."""

    def __init__(self, pool_size: int = 100, connect_timeout: float = 1.0) -> None:
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None

    def _ensure(self) -> aiohttp.ClientSession:
        # Created lazily inside the running loop (aiohttp binds a session to the loop it was made in).
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._pool_size, keepalive_timeout=30, ttl_dns_cache=60)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Content-Type", "Accept", "Accept-Encoding"),
            )
        return self._session

    async def send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> UpstreamResult:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                async with self._ensure().request(
                    method, url, headers=dict(headers), data=body, allow_redirects=False
                ) as resp:
                    data = await resp.content.read(MAX_REPLY_BYTES + 1)
            if len(data) > MAX_REPLY_BYTES:
                return UpstreamResult(
                    "error",
                    resp.status,
                    seconds=time.perf_counter() - started,
                    error="reply larger than 1 MiB",
                )
            return UpstreamResult(
                f"{resp.status // 100}xx",
                resp.status,
                resp.headers.get("content-type", ""),
                data,
                time.perf_counter() - started,
            )
        except TimeoutError:
            return UpstreamResult("timeout", seconds=time.perf_counter() - started, error="timed out")
        except aiohttp.ClientConnectorError as e:
            return UpstreamResult("refused", seconds=time.perf_counter() - started, error=str(e.os_error))
        except (aiohttp.ClientError, OSError) as e:
            return UpstreamResult("error", seconds=time.perf_counter() - started, error=type(e).__name__)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
