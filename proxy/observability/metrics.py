"""Prometheus metrics: every series wxgate exports, declared together on an injected registry.

Label sets are closed: configured route names, protocol names and result enums — never paths, ids or
addresses. Series for every configured route are pre-initialised so dashboards and alerts see zeros, not gaps,
and their label children are bound once per route (:class:`RouteSeries`) so counting a request costs a few
dict lookups. The request and backend-call histograms carry OpenMetrics exemplars with the trace id of the
request (sampled traces only; ``/metrics`` serves OpenMetrics to scrapers that ask for it).

Other components report through the methods below rather than touching metric objects, so this module stays
the one place a series is declared: :meth:`Metrics.observe` (the outcome record), :meth:`observe_upstream`,
:meth:`store_call` (``proxy.observability.instrumented_store``), :meth:`outbox_redelivery` / :meth:`outbox_dead_letter`
(the outbox worker's counters), :meth:`outbox_stats` / :meth:`loop_lag` (``proxy.observability.probes``),
:meth:`backpressure_waiting` / :meth:`backpressure_spill` / :meth:`backpressure_drain` (``backend_concurrency``),
:meth:`track_blocked_sources` (``rejection_budget``).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from opentelemetry import trace
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.metrics import MetricWrapperBase

from proxy import __version__
from proxy.observability.outcome import DEDUP_RESULTS, POLICIES, UPSTREAM_RESULTS, Outcome
from proxy.observability.tracing import hex_ids
from proxy.stores.base import OutboxStats
from proxy.upstream.client import UpstreamResult

# Inbound latency is bounded by the route deadline (default 4.5 s, WeChat waits 5 s): dense below 50 ms where
# a healthy sidecar answers, then steps that separate "slow backend" from "answered at the deadline" (4-4.5 s)
# from "the sender gave up" (> 5 s).
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    3.0,
    4.0,
    4.5,
    5.0,
    10.0,
)
# Backend calls go on after an early answer up to backend_timeout (default 30 s): the same low end, then the
# deadline (4.5/5 s) and the points a slow legacy backend lands on (10, 15 s) up to the timeout itself.
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 4.5, 5.0, 10.0, 15.0, 30.0)
# Store calls: sqlite on its own thread and Redis on a LAN answer in 0.1-2 ms; 5-50 ms means contention or a
# remote/failing-over Redis; settle() waits for an in-flight attempt up to the deadline (hence up to 5 s).
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
# Event-loop lag: 1 ms is healthy, 10-100 ms delays every request in flight, 1 s is a stall.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

VERIFICATION_RESULTS = ("ok", "rejected", "probe")
REDELIVERY_RESULTS = ("delivered", "duplicate", "failed")
STORE_OPERATIONS = (
    "ping",
    "claim",
    "complete",
    "release",
    "settle",
    "remember",
    "remember_signed",
    "claim_signed",
    "outbox_put",
    "outbox_lease",
    "outbox_ack",
    "outbox_retry",
    "outbox_defer",
    "outbox_bury",
    "outbox_list",
    "outbox_get",
    "outbox_revive",
    "outbox_purge",
    "outbox_stats",
)
PROBE_REASONS = frozenset({"signature_probe"})  # WeChat Pay's deliberate bad signatures (PROTOCOLS.md §4.7)
# proxy.headlimit: why a client connection was closed before its request was read
DROP_REASONS = (
    "head_too_large",
    "head_timeout",
    "body_timeout",
    "pipelined_too_large",
    "chunk_line_too_large",
)
UNMATCHED = ("unmatched", "none")  # the route/protocol labels of requests no route matched


def _dist(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


@dataclass(slots=True)
class RouteSeries:
    """One route's label children, bound once: the per-request path does dict lookups, not label resolution."""

    route: str
    protocol: str
    duration: Histogram
    upstream: dict[str, Counter]
    upstream_duration: dict[str, Histogram]
    dedup: dict[str, Counter]
    deadline: dict[str, Counter]
    unacked: Counter
    enqueued: Counter
    enqueue_errors: Counter
    verified: Counter
    codes: dict[int, Counter] = field(default_factory=dict)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = r = registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, fds, start
        PlatformCollector(registry=r)  # python_info
        GCCollector(registry=r)  # python_gc_*: gen-2 collections show up in p99 (hence gc.freeze at start)
        self.build_info = Info("wxgate_build", "wxgate build: version and runtime versions", registry=r)
        self.build_info.info(
            {
                "version": __version__,
                "python_version": platform.python_version(),
                "mitmproxy_version": _dist("mitmproxy"),
            }
        )
        self._inbound(r)
        self._outbound(r)
        self._state(r)
        self._config(r)
        self._routes: dict[tuple[str, str], RouteSeries] = {}  # by (route, protocol): a reload may change it
        self._by_name: dict[str, RouteSeries] = {}  # the latest series of each route name

    def _inbound(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            "wxgate_requests",
            "Inbound requests by route, protocol and HTTP status code answered",
            ["route", "protocol", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "wxgate_request_duration_seconds",
            "Time from request headers to the answer sent to the sender",
            ["route", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("wxgate_requests_in_flight", "Inbound requests being handled", registry=r)
        self.connections_dropped = Counter(
            "wxgate_connections_dropped",
            "Client connections closed before their request was read, by reason: head_too_large (431, over 64 "
            "KiB), head_timeout (408), body_timeout (408), pipelined_too_large (sent too much while answered), "
            "chunk_line_too_large (a chunk-size line or trailer section over 64 KiB)",
            ["reason"],
            registry=r,
        )
        for reason in DROP_REASONS:
            self.connections_dropped.labels(reason)
        self.verifications = Counter(
            "wxgate_verifications",
            "Verification results (ok, rejected, probe) by reason and the key that verified (current/previous)",
            ["route", "protocol", "result", "reason", "key"],
            registry=r,
        )
        self.dedup = Counter(
            "wxgate_dedup",
            "Deduplication results (new, duplicate_done, duplicate_inflight, store_error, no_key)",
            ["route", "result"],
            registry=r,
        )
        self.normalized = Counter(
            "wxgate_replies_normalized",
            "Backend answers replaced to honour the sender's contract, by reason",
            ["route", "reason"],
            registry=r,
        )
        self.deadline_fired = Counter(
            "wxgate_deadline_fired",
            "Answers sent at the deadline before the backend replied, by policy",
            ["route", "policy"],
            registry=r,
        )
        self.loop_lag_seconds = Histogram(
            "wxgate_event_loop_lag_seconds",
            "How late the event loop runs a timer: every request in flight waits this long too",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.background_tasks = Gauge(
            "wxgate_background_tasks",
            "Backend calls still running after their request was answered",
            registry=r,
        )

    def _outbound(self, r: CollectorRegistry) -> None:
        self.upstream = Counter(
            "wxgate_upstream_requests",
            "Backend calls by result (status class, timeout, refused, error)",
            ["route", "result"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "wxgate_upstream_duration_seconds",
            "Backend call latency by result, including calls that outlived the deadline",
            ["route", "result"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.unacked_failures = Counter(
            "wxgate_unacked_failures",
            "Notifications acknowledged to the sender that no outbox holds",
            ["route"],
            registry=r,
        )
        self.outbox_enqueued = Counter(
            "wxgate_outbox_enqueued",
            "Notifications written to the outbox before wxgate acknowledged them for the backend",
            ["route"],
            registry=r,
        )
        self.outbox_enqueue_errors = Counter(
            "wxgate_outbox_enqueue_errors",
            "Outbox writes that failed (the sender was not acknowledged and will retry)",
            ["route"],
            registry=r,
        )
        self.outbox_redeliveries = Counter(
            "wxgate_outbox_redeliveries",
            "Outbox redelivery attempts by result (delivered, duplicate: already delivered, failed)",
            ["route", "result"],
            registry=r,
        )
        self.outbox_dead_lettered = Counter(
            "wxgate_outbox_dead_lettered",
            "Outbox items moved to the dead letters (attempts or age exhausted): need a manual replay",
            ["route"],
            registry=r,
        )
        self.backpressure_queued = Gauge(
            "wxgate_backpressure_queued",
            "Backend calls waiting for a slot of their backend's backend_concurrency (requests and redeliveries)",
            ["route"],
            registry=r,
        )
        self.backpressure_spilled = Counter(
            "wxgate_backpressure_spilled",
            "Requests answered without the backend because its backend_concurrency stayed full (on_backend_failure "
            "answered: ack after the outbox took them, relay/fail asking the sender to retry)",
            ["route"],
            registry=r,
        )
        self.backpressure_drained = Counter(
            "wxgate_backpressure_drained",
            "Outbox items delivered to a backend under its backend_concurrency",
            ["route"],
            registry=r,
        )
        self.rejection_budget_blocked = Gauge(
            "wxgate_rejection_budget_blocked_sources",
            "Sources answered 429 without verification for failing it too often (rejection_budget)",
            registry=r,
        )

    def _state(self, r: CollectorRegistry) -> None:
        self.outbox_depth = Gauge("wxgate_outbox_depth", "Outbox items waiting for redelivery", registry=r)
        self.outbox_oldest_age = Gauge(
            "wxgate_outbox_oldest_age_seconds", "Age of the oldest item waiting in the outbox", registry=r
        )
        self.outbox_dead_letters = Gauge(
            "wxgate_outbox_dead_letters", "Items in the outbox's dead letters", registry=r
        )
        self.store_up = Gauge(
            "wxgate_store_up", "1 when the last periodic store read (outbox stats) succeeded", registry=r
        )
        self.store_duration = Histogram(
            "wxgate_store_operation_duration_seconds",
            "Store call latency by operation (settle includes its wait for an in-flight attempt)",
            ["operation"],
            buckets=STORE_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "wxgate_store_errors",
            "Store calls that failed (store unreachable or erroring)",
            ["operation"],
            registry=r,
        )
        self._store = {
            op: (self.store_duration.labels(op), self.store_errors.labels(op)) for op in STORE_OPERATIONS
        }

    def _config(self, r: CollectorRegistry) -> None:
        # Named like Prometheus's own reload series, so the same alert (last reload failed) reads the same.
        self.config_reloads = Counter(
            "wxgate_config_reloads",
            "Configuration reloads (SIGHUP) by result: success, or failure (the running configuration was kept)",
            ["result"],
            registry=r,
        )
        for result in ("success", "failure"):
            self.config_reloads.labels(result)
        self.config_last_reload_successful = Gauge(
            "wxgate_config_last_reload_successful",
            "1 when the last configuration load (start or SIGHUP) succeeded, 0 when it was rejected",
            registry=r,
        )
        self.config_last_reload_successful.set(1)
        self.config_last_reload_success = Gauge(
            "wxgate_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load (start or SIGHUP)",
            registry=r,
        )
        self.config_last_reload_success.set_to_current_time()
        self.config_restart_required = Gauge(
            "wxgate_config_restart_required",
            "1 when a reloaded configuration changed a key that only a restart applies (listen, admin, store, ...)",
            registry=r,
        )
        self.tls_certificate_expiry = Gauge(
            "wxgate_tls_certificate_expiry_timestamp_seconds",
            "Unix time the served TLS certificate expires (NaN without tls)",
            registry=r,
        )
        self.tls_certificate_expiry.set(float("nan"))

    # -- pre-initialisation ----------------------------------------------------------------------------------
    def init_routes(self, routes: Iterable[tuple[str, str]]) -> None:
        """Pre-initialise (and bind) the series every route will have, and those of unmatched requests."""
        for route, protocol in (*routes, UNMATCHED):
            self._series(route, protocol)

    def _series(self, route: str, protocol: str) -> RouteSeries:
        s = self._routes.get((route, protocol))
        if s is not None:
            return s
        s = self._routes[(route, protocol)] = self._by_name[route] = RouteSeries(
            route=route,
            protocol=protocol,
            duration=self.request_duration.labels(route, protocol),
            upstream={res: self.upstream.labels(route, res) for res in UPSTREAM_RESULTS},
            upstream_duration={res: self.upstream_duration.labels(route, res) for res in UPSTREAM_RESULTS},
            dedup={res: self.dedup.labels(route, res) for res in DEDUP_RESULTS},
            deadline={p: self.deadline_fired.labels(route, p) for p in POLICIES},
            unacked=self.unacked_failures.labels(route),
            enqueued=self.outbox_enqueued.labels(route),
            enqueue_errors=self.outbox_enqueue_errors.labels(route),
            verified=self.verifications.labels(route, protocol, "ok", "", "current"),
        )
        for res in REDELIVERY_RESULTS:
            self.outbox_redeliveries.labels(route, res)
        self.outbox_dead_lettered.labels(route)
        for metric in (self.backpressure_queued, self.backpressure_spilled, self.backpressure_drained):
            metric.labels(route)
        return s

    # -- the hot path: one call per request, one per backend call ---------------------------------------------
    def observe(self, o: Outcome, exemplar: dict[str, str] | None = None) -> None:
        """Count one finished request from its outcome record (``exemplar``: its trace id, if traced)."""
        s = self._series(o.route, o.protocol)
        code = s.codes.get(o.status)
        if code is None:
            code = s.codes[o.status] = self.requests.labels(o.route, o.protocol, str(o.status))
        code.inc()
        s.duration.observe(o.duration_seconds, exemplar)
        if o.verdict in ("verified", "direct"):
            if o.verdict == "verified" and o.key_id in ("", "current"):
                s.verified.inc()
            else:
                reason = "url_verification" if o.verdict == "direct" else ""
                self.verifications.labels(o.route, o.protocol, "ok", reason, o.key_id or "current").inc()
        elif o.verdict == "rejected" and o.route != UNMATCHED[0]:
            result = "probe" if o.reason in PROBE_REASONS else "rejected"
            self.verifications.labels(o.route, o.protocol, result, o.reason, "").inc()
        if o.dedup:
            _child(s.dedup, o.dedup, self.dedup, o.route).inc()
        if o.normalized:
            self.normalized.labels(o.route, o.normalized).inc()
        if o.deadline:
            _child(s.deadline, o.deadline, self.deadline_fired, o.route).inc()
        if o.outbox == "queued":
            s.enqueued.inc()
        elif o.outbox == "failed":
            s.enqueue_errors.inc()
        elif o.outbox == "unacked":
            s.unacked.inc()

    def observe_upstream(self, route: str, result: UpstreamResult) -> None:
        """Count one backend call; called inside the request's context, so its trace (if any) is the exemplar."""
        s = self._by_name.get(route) or self._series(route, "none")
        _child(s.upstream, result.kind, self.upstream, route).inc()
        exemplar = exemplar_of(trace.get_current_span())
        _child(s.upstream_duration, result.kind, self.upstream_duration, route).observe(
            result.seconds, exemplar
        )

    # -- reported by other components ------------------------------------------------------------------------
    def store_call(self, operation: str, seconds: float, failed: bool) -> None:
        pair = self._store.get(operation)
        if pair is None:
            pair = self._store[operation] = (
                self.store_duration.labels(operation),
                self.store_errors.labels(operation),
            )
        pair[0].observe(seconds)
        if failed:
            pair[1].inc()

    def outbox_redelivery(self, route: str, result: str) -> None:
        self.outbox_redeliveries.labels(route, result).inc()

    def outbox_dead_letter(self, route: str) -> None:
        self.outbox_dead_lettered.labels(route).inc()

    def backpressure_waiting(self, route: str, delta: int) -> None:
        self.backpressure_queued.labels(route).inc(delta)

    def backpressure_spill(self, route: str) -> None:
        self.backpressure_spilled.labels(route).inc()

    def backpressure_drain(self, route: str) -> None:
        self.backpressure_drained.labels(route).inc()

    def track_blocked_sources(self, count: Callable[[], int]) -> None:
        self.rejection_budget_blocked.set_function(lambda: float(count()))

    def outbox_stats(self, stats: OutboxStats | None) -> None:
        """The store's outbox gauges; ``None`` when the store could not be read (the gauges keep their value)."""
        self.store_up.set(0 if stats is None else 1)
        if stats is not None:
            self.outbox_depth.set(stats.depth)
            self.outbox_oldest_age.set(stats.oldest_age)
            self.outbox_dead_letters.set(stats.dead)

    def connection_dropped(self, reason: str) -> None:
        self.connections_dropped.labels(reason).inc()

    def requests_in_flight(self) -> int:
        """Inbound requests being handled now: what a drain waits for."""
        (gauge,) = self.in_flight.collect()
        return int(gauge.samples[0].value)

    def loop_lag(self, seconds: float) -> None:
        self.loop_lag_seconds.observe(seconds)

    def track_background_tasks(self, count: Callable[[], int]) -> None:
        self.background_tasks.set_function(lambda: float(count()))

    def config_reloaded(self, ok: bool, when: float, restart_required: bool = False) -> None:
        self.config_reloads.labels("success" if ok else "failure").inc()
        self.config_last_reload_successful.set(1 if ok else 0)
        if ok:
            self.config_last_reload_success.set(when)
            self.config_restart_required.set(1 if restart_required else 0)

    def tls_certificate(self, not_after: float | None) -> None:
        """The served certificate's expiry; NaN without TLS (an expiry alert must not fire on a plain listener)."""
        self.tls_certificate_expiry.set(float("nan") if not_after is None else not_after)


def exemplar_of(span: trace.Span | None) -> dict[str, str] | None:
    """OpenMetrics exemplar labels naming ``span``'s trace (sampled traces only: others cannot be looked up)."""
    if span is None:
        return None
    if not span.get_span_context().trace_flags.sampled:
        return None
    trace_id, span_id = hex_ids(span)
    return {"trace_id": trace_id, "span_id": span_id}


def _child[M: MetricWrapperBase](bound: dict[str, M], value: str, metric: M, route: str) -> M:
    """The pre-bound child for a known value, else the labelled one (values outside the enum still count)."""
    child = bound.get(value)
    return child if child is not None else metric.labels(route, value)
