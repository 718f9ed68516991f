"""The admin HTTP server on its own port: ``/metrics``, ``/healthz`` (process alive), ``/readyz``.

``/readyz`` is 200 only when the configuration is loaded, the proxy is listening and the store answers; its
body says which check failed, so a failing readiness probe explains itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

ReadyCheck = Callable[[], Awaitable[str | None]]  # None when ready, else what is wrong


class AdminServer:
    def __init__(self, registry: CollectorRegistry, ready: ReadyCheck) -> None:
        self.registry = registry
        self.ready = ready
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        self.app = app

    async def metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = await asyncio.to_thread(encoder, self.registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        problem = await self.ready()
        if problem is None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {problem}\n")

    async def start(self, host: str, port: int) -> None:
        await web.TCPSite(await self._setup(), host, port).start()

    async def start_unix(self, path: str) -> None:
        """Serve on a Unix socket: a worker's admin, read by the supervisor that serves ``admin``."""
        await web.UnixSite(await self._setup(), path).start()

    async def _setup(self) -> web.AppRunner:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        return self._runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
