"""The composition root: builds config-derived objects, the addon chain and an embedded mitmproxy master.

wxgate embeds mitmproxy with only the core addons it needs (a stripped master serves ~1.7x the requests of
``mitmdump``, whose ~36 default addons each see every hook), in reverse mode with ``connection_strategy=lazy``
(with ``eager`` a dead backend makes mitmproxy drop client connections without an answer). SIGTERM/SIGINT drain:
stop listening, let in-flight requests and background backend calls finish within ``drain_timeout``, exit 0.
SIGHUP reloads the configuration file without dropping a connection (:mod:`proxy.reload`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mitmproxy import http, options
from mitmproxy import master as mitm_master
from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, tlsconfig
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, disable_created_metrics

from addons.admission import Admission
from addons.dedup import Dedup
from addons.envelope import Envelope
from addons.forward import Forward
from addons.metrics import MetricsAddon
from addons.rejection_budget import RejectionBudget, ledger_for
from addons.routing import Routing
from addons.start import ExchangeStart
from addons.tls import TlsTermination
from addons.tracing import TracingAddon
from addons.verify import Verify
from proxy.config import Config
from proxy.cpus import resolve_workers
from proxy.headlimit import bound_request_heads
from proxy.hooks import embedded_master
from proxy.observability.admin import AdminServer
from proxy.observability.instrumented_store import InstrumentedStore
from proxy.observability.logs import UserRef
from proxy.observability.metrics import Metrics
from proxy.observability.otel_env import store_span_min_from_env
from proxy.observability.probes import Probes
from proxy.observability.tracing import Tracing
from proxy.pipeline.backpressure import BackendLimits, BackpressureCounters
from proxy.pipeline.exchange import METADATA_KEY
from proxy.pipeline.outbox import OutboxCounters, OutboxWorker, StoreSettlement
from proxy.pipeline.routes import RouteTable
from proxy.pipeline.settlement import Settlement
from proxy.reload import Loaded, Reloader, prepare
from proxy.stores.base import Store, StoreUnavailable
from proxy.tasks import BackgroundTasks
from proxy.tls import ServerCertificate
from proxy.upstream.client import UpstreamClient
from proxy.worker_role import WorkerRole

logger = logging.getLogger("wxgate")


@dataclass
class Runtime:
    """Everything built from one configuration (what a SIGHUP reload would rebuild)."""

    config: Config
    registry: CollectorRegistry
    metrics: Metrics
    store: Store
    table: RouteTable
    client: UpstreamClient
    tasks: BackgroundTasks = field(default_factory=BackgroundTasks)
    tracer_provider: TracerProvider | None = None  # None: tracing off, and no span is ever made
    tracing: Tracing | None = None
    tls: ServerCertificate | None = None  # the listener's certificate, None for plain HTTP
    workers: int = 1  # processes sharing the backends' backend_concurrency (each holds its share)
    settlement: Settlement = field(init=False)
    limits: BackendLimits = field(init=False)

    def __post_init__(self) -> None:
        self.settlement = StoreSettlement(self.store)
        m = self.metrics
        counters = BackpressureCounters(m.backpressure_waiting, m.backpressure_spill, m.backpressure_drain)
        self.limits = BackendLimits(counters, self.workers)
        self.limits.use(self.config, self.table)


def build_runtime(
    config: Config,
    registry: CollectorRegistry | None = None,
    environ: Mapping[str, str] | None = None,
    workers: int = 1,
) -> Runtime:
    """``environ`` holds the ``OTEL_*`` variables (default: the process environment); ``workers``: how many
    processes serve this configuration (``backend_concurrency`` is shared among them)."""
    disable_created_metrics()  # *_created series double the exposition and no dashboard reads them
    registry = registry or CollectorRegistry()
    metrics = Metrics(registry)
    # The same build `wxgate check` makes: routes and keys, TLS, tracer provider, the (unopened) store.
    env = os.environ if environ is None else environ
    loaded, provider, store = prepare(config, env)
    table = loaded.table
    metrics.init_routes((r.name, r.protocol_name) for r in table.routes)
    tracing = Tracing(provider, store_span_min_from_env(env)) if provider is not None else None
    rt = Runtime(
        config=config,
        registry=registry,
        metrics=metrics,
        store=InstrumentedStore(store, metrics, tracing),
        table=table,
        client=UpstreamClient(config.upstream_pool_size, config.upstream_connect_timeout),
        tracer_provider=provider,
        tracing=tracing,
        tls=loaded.tls,
        workers=workers,
    )
    metrics.track_background_tasks(lambda: len(rt.tasks))
    metrics.tls_certificate(rt.tls.not_after if rt.tls else None)
    return rt


def build_chain(rt: Runtime) -> list[Any]:
    """The addon chain; its order is part of the contract (DESIGN.md "Addon chain")."""
    metrics_addon = MetricsAddon(rt.metrics, UserRef.from_config(rt.config.log_hash_key))
    # Tracing off: no tracing addon at all, so none of its hooks runs.
    tracing = [TracingAddon(rt.tracing)] if rt.tracing is not None else []
    budget = RejectionBudget(ledger_for(rt.config))
    rt.metrics.track_blocked_sources(budget.blocked_sources)
    return [
        *tracing,
        metrics_addon,
        Routing(rt.table, rt.config.unmatched),
        Admission(rt.config.trusted_proxies),
        budget,
        Verify(rt.store.remember),
        Envelope(),
        Dedup(rt.store, rt.settlement),
        Forward(
            rt.client,
            rt.settlement,
            rt.tasks,
            observe=rt.metrics.observe_upstream,
            tracing=rt.tracing,
            limits=rt.limits,
        ),
    ]


class ListenerTls(tlsconfig.TlsConfig):
    """mitmproxy's TLS setup for the listener, without its ``request`` hook: that hook answers any path ending in
    ``/mitmproxy-<serial>.crl`` with mitmproxy's own revocation list and blocks eMudhra lookups, which a forward
    proxy intercepting clients' TLS needs and a reverse proxy serving its own certificate must not do (the path
    would be answered by mitmproxy instead of routed). It also read two options (deep copies) per request."""

    request = None  # type: ignore[assignment]


# Young-generation threshold once serving (Python's default is 700): a request leaves ~85 container objects in
# reference cycles that only the collector frees (mitmproxy's HttpStream holds bound methods of itself and sits
# in its own context's layer list), and ~30 requests are in flight at full load. At 700 a young collection
# every ~8 requests finds most of those alive and promotes them, and a third of them end up in the old
# generation, whose full collections are the longest pauses; at 10,000 (~120 requests) most cycles are already
# garbage when first examined and die young (a young collection over ~10k objects takes well under 1 ms).
GC_YOUNG_THRESHOLD = 10_000


class Lifecycle:
    """Keeps garbage collection off the latency path: freezes the startup heap once serving (gen-2 collections
    over it otherwise dominate p99) and raises the young generation's threshold (:data:`GC_YOUNG_THRESHOLD`),
    and, last in the chain, drops each request's exchange once it is answered.

    mitmproxy's HTTP stream holds a reference cycle, so a finished flow waits for a gen-2 collection to be
    freed; without the exchange (outcome, parsed message, reply, span) hanging off it, each collection has less
    to traverse (GC time -16%, longest pause ~14 -> ~10 ms at full load on the bench machine). Work that
    outlives the answer (a late backend call, the outbox) holds the exchange itself."""

    def running(self) -> None:
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])

    def response(self, flow: http.HTTPFlow) -> None:
        flow.metadata.pop(METADATA_KEY, None)

    def error(self, flow: http.HTTPFlow) -> None:
        flow.metadata.pop(METADATA_KEY, None)


class Sidecar:
    def __init__(
        self,
        rt: Runtime,
        config_path: Path | None = None,
        environ: Mapping[str, str] | None = None,
        role: WorkerRole | None = None,  # one of `workers: N` processes (proxy.workers); None: on its own
    ) -> None:
        self.rt = rt
        self.role = role
        self.draining = False
        self._drain_task: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._probes: asyncio.Task[None] | None = None
        self.master: mitm_master.Master | None = None
        self.chain = build_chain(rt)
        self.admin = AdminServer(rt.registry, self.ready)
        self.tls = TlsTermination(rt.tls, rt.config.tls.plain_http if rt.config.tls else "refuse")
        self.outbox_worker: OutboxWorker | None = None
        self.reloader = (
            Reloader(
                config_path,
                os.environ if environ is None else environ,
                rt.metrics,
                lambda: self.rt.config,
                self.apply,
            )
            if config_path is not None
            else None
        )
        self._reload_tasks: set[asyncio.Task[bool]] = set()

    def _make_master(self) -> mitm_master.Master:
        cfg = self.rt.config
        host, port = cfg.listen_addr
        m = embedded_master(options.Options())
        bound_request_heads(
            cfg.head_timeout, self.rt.metrics.connection_dropped, cfg.body_timeout, cfg.body_size_limit
        )
        m.addons.add(
            core.Core(),
            proxyserver.Proxyserver(),
            next_layer.NextLayer(),
            ExchangeStart(),  # first: every later hook of ours reads the request's Exchange
            self.tls,  # before TlsConfig: it serves our certificate, never mitmproxy's generated ones
            ListenerTls(),
            errorcheck.ErrorCheck(repeat_errors_on_stderr=True),
            *self.chain,
            Lifecycle(),
        )
        m.options.update(
            mode=[f"reverse:{cfg.upstream}@{host}:{port}"],
            connection_strategy="lazy",
            rawtcp=False,  # a 101 that is not WebSocket closes the connection, never opens a tunnel past us
            body_size_limit=str(cfg.body_size_limit),
            stream_large_bodies=None,
        )
        return m

    async def ready(self) -> str | None:
        if self.draining:
            return "draining"
        if self.master is None:
            return "starting"
        ps = self.master.addons.get("proxyserver")
        if ps is None or not ps.listen_addrs():
            return "not listening"
        try:
            await asyncio.wait_for(self.rt.store.ping(), 1.0)
        except (StoreUnavailable, TimeoutError) as e:
            return f"store unreachable ({e or 'timeout'})"
        return None

    def in_flight(self) -> int:
        return self.rt.metrics.requests_in_flight()

    async def drain(self) -> None:
        if self.draining or self.master is None:
            return
        self.draining = True
        deadline = time.monotonic() + self.rt.config.drain_timeout
        logger.info("draining: no new connections; finishing %d in-flight requests", self.in_flight())
        if self.outbox_worker is not None:
            self.outbox_worker.stop()  # no new lease; redeliveries already running get the drain window
        ps = self.master.addons.get("proxyserver")
        if ps is not None:
            await ps.servers.update([])
        # mitmproxy owns the connection handlers; polling the in-flight gauge every 20 ms is enough at shutdown.
        while self.in_flight() > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if self._worker is not None:
            await asyncio.wait({self._worker}, timeout=max(deadline - time.monotonic(), 0.0))
        cancelled = await self.rt.tasks.drain(max(deadline - time.monotonic(), 0.1))
        if cancelled or self.in_flight():
            logger.warning(
                "drain timeout: %d requests and %d backend calls cut short", self.in_flight(), cancelled
            )
        # Claims of calls cut short would otherwise block sender retries and other replicas until they expire.
        try:
            released = await asyncio.wait_for(self.rt.settlement.release_held(), 5.0)
        except TimeoutError:
            released = 0
        if released:
            logger.info("drain: released %d claims of calls cut short", released)
        self.master.shutdown()

    def _on_signal(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self.drain(), name="drain")

    def _on_reload(self) -> None:
        if self.reloader is None or self.draining:
            return
        task = asyncio.get_running_loop().create_task(self.reloader.reload(), name="reload")
        self._reload_tasks.add(task)
        task.add_done_callback(self._reload_tasks.discard)

    def apply(self, loaded: Loaded) -> None:
        """Swap a reloaded configuration in; synchronous, so no request sees half of it."""
        cfg = loaded.config
        self.rt.config, self.rt.table, self.rt.tls = cfg, loaded.table, loaded.tls
        self.rt.limits.use(cfg, loaded.table)
        self.rt.metrics.init_routes((r.name, r.protocol_name) for r in loaded.table.routes)
        self.rt.metrics.tls_certificate(loaded.tls.not_after if loaded.tls else None)
        # As mitmproxy's ``configure`` event: every part that holds reloadable state takes the new one itself.
        for part in (*self.chain, self.tls, self.outbox_worker):
            if (reconfigure := getattr(part, "reconfigure", None)) is not None:
                reconfigure(loaded)
        if self.master is not None:
            self.master.options.update(body_size_limit=str(cfg.body_size_limit))
        bound_request_heads(cfg.head_timeout, None, cfg.body_timeout, cfg.body_size_limit)
        logging.getLogger().setLevel(cfg.log_level.upper())

    async def run(self) -> int:
        cfg = self.rt.config
        try:
            await self.rt.store.open()
        except StoreUnavailable as e:
            if not self.rt.store.url_scheme.startswith("redis"):
                raise  # an embedded store that cannot open is a configuration or disk problem
            # A shared store that is down now may be back in a second: serve meanwhile, as during an outage
            # that starts later (routes' store_down policy; /readyz says why it is not ready; the clients
            # connect on first use). Exiting would crash-loop every restarted replica until it is back.
            logger.warning("%s; serving anyway: routes follow their store_down policy until it answers", e)
        if self.role is not None:
            self.role.adopt_listeners()
        self.master = self._make_master()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload)
        if self.role is None:
            await self.admin.start(*cfg.admin_addr)
        else:  # the supervisor serves `admin` for all workers and reads each one's on a Unix socket
            await self.admin.start_unix(self.role.admin_socket)
            self.role.watch_supervisor(self._on_signal)
        if self.role is None or self.role.runs_outbox:
            counters = OutboxCounters(self.rt.metrics.outbox_redelivery, self.rt.metrics.outbox_dead_letter)
            worker = self.outbox_worker = OutboxWorker(
                self.rt.store,
                self.rt.table,
                self.rt.client,
                counters,
                tracing=self.rt.tracing,
                limits=self.rt.limits,
            )
            self._worker = loop.create_task(worker.run(), name="outbox worker")
        self._probes = loop.create_task(Probes(self.rt.metrics, self.rt.store).run(), name="probes")
        logger.info(
            "wxgate listening on %s%s (admin %s), %d routes, store %s",
            cfg.listen,
            " (TLS)" if cfg.tls else "",
            cfg.admin,
            len(self.rt.table.routes),
            cfg.store.split("://", 1)[0],
        )
        try:
            await self.master.run()
        finally:
            for task in (self._worker, self._probes):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            await self.admin.stop()
            await self.rt.client.close()
            await self.rt.store.close()
            if self.rt.tracer_provider is not None:
                # Flushes the last spans (blocking HTTP export): off the loop.
                await asyncio.to_thread(self.rt.tracer_provider.shutdown)
        return 0


async def serve(config: Config, config_path: Path | None = None, role: WorkerRole | None = None) -> int:
    """Run the sidecar; with ``config_path``, SIGHUP reloads that file; ``role``: as one of ``workers: N``."""
    workers = resolve_workers(config.workers) if role is not None else 1
    return await Sidecar(build_runtime(config, workers=workers), config_path, role=role).run()
