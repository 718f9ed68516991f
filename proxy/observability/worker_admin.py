"""The admin port of ``workers: N``: one ``/metrics``, ``/healthz`` and ``/readyz`` for all worker processes.

Each worker serves its own admin app on a Unix socket (:meth:`AdminServer.start_unix`); the supervisor serves
``admin`` and, per request, reads every worker's:

- ``/metrics``: every worker's exposition (OpenMetrics, so exemplars survive), each series given a
  ``worker="<index>"`` label, families merged by name; encoded as the scraper asked (text or OpenMetrics).
  Names, types and help are the single-process ones; sum over ``worker`` for the sidecar (``sum without
  (worker) (rate(wxgate_requests_total[5m]))``). A restarted worker's counters restart from 0, which
  ``rate()`` treats as the counter reset it is. ``process_*`` and ``python_gc_*`` stay per worker, as they
  should. A worker that does not answer is left out of that scrape (its series go stale) rather than failing it.
- ``/readyz``: 200 when every worker is running and ready; else 503 naming each worker that is not.
- ``/healthz``: 200 when every running worker answers its own ``/healthz`` (a worker whose event loop is stuck
  does not, and a liveness probe then restarts the container, as it would a single process); a worker that is
  restarting does not count: the supervisor restarts it itself, and the pod need not go for that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence

import aiohttp
from aiohttp import web
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
WorkerSockets = Callable[[], Sequence[str | None]]  # each worker's admin socket, None while it is not running


class MergedFamilies:
    """A collector over already-read families, for prometheus_client's encoders."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> list[Metric]:
        return self._families


def merge(expositions: Mapping[str, str]) -> MergedFamilies:
    """Workers' OpenMetrics texts (by worker label value) as one set of families with a ``worker`` label."""
    families: dict[str, Metric] = {}
    for worker, text in expositions.items():
        for fam in text_string_to_metric_families(text):
            merged = families.get(fam.name)
            if merged is None:
                merged = families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            merged.samples.extend(s._replace(labels={**s.labels, "worker": worker}) for s in fam.samples)
    return MergedFamilies(families.values())


class WorkerAdmin:
    def __init__(self, sockets: WorkerSockets, draining: Callable[[], bool], timeout: float = 3.0) -> None:
        self.sockets = sockets
        self.draining = draining
        self.timeout = timeout
        self._runner: web.AppRunner | None = None
        self.app = web.Application()
        self.app.router.add_get("/metrics", self.metrics)
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.readyz)

    async def get(self, path: str | None, url: str, accept: str = "*/*") -> tuple[int, str]:
        """One worker's admin answer; status 0 and the error when it cannot be read."""
        if path is None:
            return 0, "not running"
        try:
            async with (
                aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as session,
                session.get(
                    f"http://worker{url}",
                    headers={"Accept": accept},
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                ) as r,
            ):
                return r.status, await r.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            return 0, f"not answering ({type(e).__name__})"

    async def metrics(self, request: web.Request) -> web.Response:
        answers = await asyncio.gather(*(self.get(s, "/metrics", OPENMETRICS) for s in self.sockets()))
        texts = {str(i): body for i, (status, body) in enumerate(answers) if status == 200}
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = await asyncio.to_thread(lambda: encoder(merge(texts)))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(self, request: web.Request) -> web.Response:
        running = [(i, path) for i, path in enumerate(self.sockets()) if path is not None]
        answers = await asyncio.gather(*(self.get(path, "/healthz") for _, path in running))
        problems = [
            f"worker {i}: {body}"
            for (i, _), (status, body) in zip(running, answers, strict=True)
            if status != 200
        ]
        if not problems:
            return web.Response(text="ok\n")
        return web.Response(status=503, text="unhealthy: " + "; ".join(problems) + "\n")

    async def readyz(self, request: web.Request) -> web.Response:
        if self.draining():
            return web.Response(status=503, text="not ready: draining\n")
        answers = await asyncio.gather(*(self.get(s, "/readyz") for s in self.sockets()))
        problems = [
            f"worker {i}: {body.strip().removeprefix('not ready: ')}"
            for i, (status, body) in enumerate(answers)
            if status != 200
        ]
        if not problems:
            return web.Response(text=f"ready ({len(answers)} workers)\n")
        return web.Response(status=503, text="not ready: " + "; ".join(problems) + "\n")

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
