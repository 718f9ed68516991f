"""The admin port of ``workers: N``: workers' expositions merged with a ``worker`` label."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.observability.worker_admin import merge


def exposition(requests: float, exemplar_trace: str) -> str:
    r = CollectorRegistry()
    Counter("wxgate_requests", "Inbound requests", ["route"], registry=r).labels("mp").inc(requests)
    h = Histogram("wxgate_request_duration_seconds", "Latency", ["route"], buckets=(0.01, 1.0), registry=r)
    h.labels("mp").observe(0.005, {"trace_id": exemplar_trace})
    Info("wxgate_build", "Build", registry=r).info({"version": "1"})
    text: str = openmetrics_latest(r).decode()
    return text


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_each_workers_series_keeps_its_name_and_type_under_a_worker_label() -> None:
    merged = merge({"0": exposition(3, "a" * 32), "1": exposition(5, "b" * 32)})
    text = generate_latest(merged).decode()
    got = samples(text)
    assert got[("wxgate_requests_total", frozenset({("route", "mp"), ("worker", "0")}))] == 3
    assert got[("wxgate_requests_total", frozenset({("route", "mp"), ("worker", "1")}))] == 5
    assert got[("wxgate_build_info", frozenset({("version", "1"), ("worker", "1")}))] == 1
    assert "# TYPE wxgate_requests_total counter" in text
    assert "# TYPE wxgate_request_duration_seconds histogram" in text
    assert text.count("# HELP wxgate_requests_total") == 1  # one family, not one per worker


def test_exemplars_survive_for_openmetrics_scrapers() -> None:
    merged = merge({"0": exposition(1, "a" * 32), "1": exposition(1, "b" * 32)})
    text = openmetrics_latest(merged).decode()
    assert f'worker="0"}} 1.0 # {{trace_id="{"a" * 32}"}}' in text
    assert f'worker="1"}} 1.0 # {{trace_id="{"b" * 32}"}}' in text
    assert text.endswith("# EOF\n")


def test_no_worker_answering_is_an_empty_exposition() -> None:
    assert generate_latest(merge({})) == b""
