from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from proxy.observability.metrics import (
    DEDUP_RESULTS,
    STORE_OPERATIONS,
    UPSTREAM_RESULTS,
    Metrics,
    exemplar_of,
)
from proxy.observability.outcome import Outcome
from proxy.stores.base import OutboxStats
from proxy.upstream.client import UpstreamResult


@pytest.fixture
def m() -> Metrics:
    metrics = Metrics(CollectorRegistry())
    metrics.init_routes([("mp", "wechat-mp")])
    return metrics


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_every_route_series_exists_at_zero_before_any_traffic(m: Metrics) -> None:
    for res in UPSTREAM_RESULTS:
        assert value(m, "wxgate_upstream_requests_total", route="mp", result=res) == 0
        assert value(m, "wxgate_upstream_duration_seconds_count", route="mp", result=res) == 0
    for res in DEDUP_RESULTS:
        assert value(m, "wxgate_dedup_total", route="mp", result=res) == 0
    for policy in ("ack", "relay", "fail"):
        assert value(m, "wxgate_deadline_fired_total", route="mp", policy=policy) == 0
    for res in ("delivered", "duplicate", "failed"):
        assert value(m, "wxgate_outbox_redeliveries_total", route="mp", result=res) == 0
    for op in STORE_OPERATIONS:
        assert value(m, "wxgate_store_errors_total", operation=op) == 0
    labels = {"route": "mp", "protocol": "wechat-mp", "result": "ok", "reason": "", "key": "current"}
    assert value(m, "wxgate_verifications_total", **labels) == 0
    assert value(m, "wxgate_request_duration_seconds_count", route="unmatched", protocol="none") == 0


def test_build_info_and_process_metrics_are_exported(m: Metrics) -> None:
    names = {s.name for fam in m.registry.collect() for s in fam.samples}
    assert {"wxgate_build_info", "process_cpu_seconds_total", "process_resident_memory_bytes"} <= names
    assert "python_info" in names and "python_gc_collections_total" in names
    (info,) = [s for fam in m.registry.collect() for s in fam.samples if s.name == "wxgate_build_info"]
    assert info.labels["version"] and info.labels["python_version"].startswith("3.")


def outcome(**kw: object) -> Outcome:
    base: dict[str, object] = {
        "route": "mp",
        "protocol": "wechat-mp",
        "status": 200,
        "duration_seconds": 0.01,
    }
    return Outcome(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("o", "result", "reason", "key"),
    [
        (outcome(verdict="verified", key_id="current"), "ok", "", "current"),
        (outcome(verdict="verified", key_id="previous"), "ok", "", "previous"),
        (outcome(verdict="direct", key_id="current"), "ok", "url_verification", "current"),
        (outcome(verdict="rejected", reason="bad_signature", status=403), "rejected", "bad_signature", ""),
        (outcome(verdict="rejected", reason="signature_probe", status=401), "probe", "signature_probe", ""),
    ],
)
def test_verification_results_by_reason_and_key(
    m: Metrics, o: Outcome, result: str, reason: str, key: str
) -> None:
    m.observe(o)
    labels = {"route": "mp", "protocol": "wechat-mp", "result": result, "reason": reason, "key": key}
    assert value(m, "wxgate_verifications_total", **labels) == 1
    assert value(m, "wxgate_requests_total", route="mp", protocol="wechat-mp", code=str(o.status)) == 1


def test_rejections_of_unmatched_paths_are_not_verifications(m: Metrics) -> None:
    m.observe(Outcome(verdict="rejected", reason="unknown_route", status=404))
    assert value(m, "wxgate_requests_total", route="unmatched", protocol="none", code="404") == 1
    samples = [
        s for fam in m.registry.collect() for s in fam.samples if s.name == "wxgate_verifications_total"
    ]
    assert all(s.value == 0 for s in samples)


def test_outcome_fields_feed_their_counters(m: Metrics) -> None:
    m.observe(
        outcome(
            verdict="verified", dedup="duplicate_done", normalized="json", deadline="ack", outbox="queued"
        )
    )
    m.observe(outcome(verdict="verified", dedup="new", outbox="failed", status=500))
    m.observe(outcome(verdict="verified", dedup="new", outbox="unacked"))
    assert value(m, "wxgate_dedup_total", route="mp", result="duplicate_done") == 1
    assert value(m, "wxgate_dedup_total", route="mp", result="new") == 2
    assert value(m, "wxgate_replies_normalized_total", route="mp", reason="json") == 1
    assert value(m, "wxgate_deadline_fired_total", route="mp", policy="ack") == 1
    assert value(m, "wxgate_outbox_enqueued_total", route="mp") == 1
    assert value(m, "wxgate_outbox_enqueue_errors_total", route="mp") == 1
    assert value(m, "wxgate_unacked_failures_total", route="mp") == 1
    assert value(m, "wxgate_requests_total", route="mp", protocol="wechat-mp", code="500") == 1
    assert value(m, "wxgate_request_duration_seconds_count", route="mp", protocol="wechat-mp") == 3


def test_request_duration_carries_the_trace_as_an_exemplar_in_openmetrics(m: Metrics) -> None:
    span = TracerProvider().get_tracer("t").start_span("s")
    ctx = span.get_span_context()
    m.observe(outcome(verdict="verified", duration_seconds=0.003), exemplar_of(span))
    text = openmetrics(m.registry).decode()
    (bucket,) = [
        s
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "wxgate_request_duration_seconds_bucket" and s.exemplar is not None
    ]
    assert bucket.labels["le"] == "0.005"
    assert bucket.exemplar.labels == {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}


def test_upstream_calls_take_the_current_trace_as_exemplar(m: Metrics) -> None:
    span = TracerProvider().get_tracer("t").start_span("s")
    with trace.use_span(span):
        m.observe_upstream("mp", UpstreamResult("timeout", seconds=30.0))
    m.observe_upstream("mp", UpstreamResult("2xx", 200, seconds=0.02))  # untraced: no exemplar
    assert value(m, "wxgate_upstream_requests_total", route="mp", result="timeout") == 1
    assert value(m, "wxgate_upstream_duration_seconds_bucket", route="mp", result="timeout", le="15.0") == 0
    assert value(m, "wxgate_upstream_duration_seconds_bucket", route="mp", result="timeout", le="30.0") == 1
    text = openmetrics(m.registry).decode()
    exemplars = [line for line in text.splitlines() if "trace_id=" in line]
    assert len(exemplars) == 1 and 'result="timeout"' in exemplars[0]


def test_unsampled_or_absent_traces_make_no_exemplar() -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    assert exemplar_of(None) is None
    assert exemplar_of(TracerProvider(sampler=ALWAYS_OFF).get_tracer("t").start_span("s")) is None


def test_store_outbox_and_loop_reports(m: Metrics) -> None:
    m.store_call("claim", 0.0007, failed=False)
    m.store_call("claim", 0.2, failed=True)
    m.outbox_redelivery("mp", "delivered")
    m.outbox_dead_letter("mp")
    m.outbox_stats(OutboxStats(depth=3, oldest_age=42.0, dead=1))
    m.loop_lag(0.002)
    assert value(m, "wxgate_store_operation_duration_seconds_count", operation="claim") == 2
    assert value(m, "wxgate_store_operation_duration_seconds_bucket", operation="claim", le="0.001") == 1
    assert value(m, "wxgate_store_errors_total", operation="claim") == 1
    assert value(m, "wxgate_outbox_redeliveries_total", route="mp", result="delivered") == 1
    assert value(m, "wxgate_outbox_dead_lettered_total", route="mp") == 1
    assert (value(m, "wxgate_outbox_depth"), value(m, "wxgate_outbox_oldest_age_seconds")) == (3, 42)
    assert (value(m, "wxgate_outbox_dead_letters"), value(m, "wxgate_store_up")) == (1, 1)
    m.outbox_stats(None)  # store unreadable: up goes to 0, the last known depth stays
    assert (value(m, "wxgate_store_up"), value(m, "wxgate_outbox_depth")) == (0, 3)
    assert value(m, "wxgate_event_loop_lag_seconds_bucket", le="0.0025") == 1


def test_background_tasks_gauge_reads_the_live_count(m: Metrics) -> None:
    tasks = [1, 2]
    m.track_background_tasks(lambda: len(tasks))
    assert value(m, "wxgate_background_tasks") == 2
    tasks.pop()
    assert value(m, "wxgate_background_tasks") == 1


def test_requests_in_flight_reads_what_is_exported(m: Metrics) -> None:
    assert m.requests_in_flight() == 0
    m.in_flight.inc()
    m.in_flight.inc()
    m.in_flight.dec()
    assert m.requests_in_flight() == 1 == value(m, "wxgate_requests_in_flight")


def test_a_route_whose_protocol_changes_on_reload_is_counted_under_the_new_one(m: Metrics) -> None:
    m.init_routes([("mp", "wecom")])
    m.observe(outcome(protocol="wecom", verdict="verified"))
    m.observe_upstream("mp", UpstreamResult("2xx", 200, seconds=0.01))
    assert value(m, "wxgate_request_duration_seconds_count", route="mp", protocol="wecom") == 1
    assert value(m, "wxgate_request_duration_seconds_count", route="mp", protocol="wechat-mp") == 0
    assert value(m, "wxgate_requests_total", route="mp", protocol="wecom", code="200") == 1
    assert value(m, "wxgate_upstream_requests_total", route="mp", result="2xx") == 1
