"""Prometheus metrics: every series wxgate exports, declared together on an injected registry.

Label sets are closed: configured route names, protocol names and result enums — never paths, ids or
addresses. Series for every configured route are pre-initialised so dashboards and alerts see zeros, not gaps.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from proxy import __version__
from proxy.exchange import Outcome
from proxy.upstream import UpstreamResult

# Request latency is bounded by the 4.5 s deadline; buckets are dense below 50 ms where a healthy sidecar
# lives and reach past 5 s so a missed WeChat deadline is visible.
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
# Backend calls may run up to backend_timeout (30 s) in the background.
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 4.5, 5.0, 10.0, 15.0, 30.0)
UPSTREAM_RESULTS = ("2xx", "3xx", "4xx", "5xx", "timeout", "refused", "error")
DEDUP_RESULTS = ("new", "duplicate_done", "duplicate_inflight", "store_error", "no_key")
POLICIES = ("ack", "relay", "fail")


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.build_info = Info("wxgate_build", "wxgate version", registry=r)
        self.build_info.info({"version": __version__})
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
        self.verifications = Counter(
            "wxgate_verifications",
            "Verification results by reason (ok, or the rejection reason) and key used",
            ["route", "protocol", "result", "reason", "key"],
            registry=r,
        )
        self.upstream = Counter(
            "wxgate_upstream_requests",
            "Backend calls by result (status class, timeout, refused, error)",
            ["route", "result"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "wxgate_upstream_duration_seconds",
            "Backend call latency, including calls that outlived the deadline",
            ["route"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.dedup = Counter("wxgate_dedup", "Deduplication results", ["route", "result"], registry=r)
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
        self.unacked_failures = Counter(
            "wxgate_unacked_failures",
            "Notifications acknowledged to the sender that no outbox holds",
            ["route"],
            registry=r,
        )

    def init_routes(self, routes: Iterable[tuple[str, str]]) -> None:
        """Pre-initialise the series every route will have."""
        for route, protocol in routes:
            self.request_duration.labels(route, protocol)
            self.upstream_duration.labels(route)
            self.unacked_failures.labels(route)
            self.verifications.labels(route, protocol, "ok", "", "current")
            for res in UPSTREAM_RESULTS:
                self.upstream.labels(route, res)
            for res in DEDUP_RESULTS:
                self.dedup.labels(route, res)
            for policy in POLICIES:
                self.deadline_fired.labels(route, policy)

    def observe(self, o: Outcome) -> None:
        """Count one finished request from its outcome record."""
        self.requests.labels(o.route, o.protocol, str(o.status)).inc()
        self.request_duration.labels(o.route, o.protocol).observe(o.duration_seconds)
        if o.verdict in ("verified", "direct"):
            self.verifications.labels(o.route, o.protocol, "ok", "", o.key_id or "current").inc()
        elif o.verdict == "rejected" and o.route != "unmatched":
            self.verifications.labels(o.route, o.protocol, "rejected", o.reason, "").inc()
        if o.dedup:
            self.dedup.labels(o.route, o.dedup).inc()
        if o.normalized:
            self.normalized.labels(o.route, o.normalized).inc()
        if o.deadline:
            self.deadline_fired.labels(o.route, o.deadline).inc()
        if o.outbox == "unacked":
            self.unacked_failures.labels(o.route).inc()

    def observe_upstream(self, route: str, result: UpstreamResult) -> None:
        self.upstream.labels(route, result.kind).inc()
        self.upstream_duration.labels(route).observe(result.seconds)
