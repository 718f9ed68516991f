from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from proxy.observability.instrumented_store import InstrumentedStore
from proxy.observability.metrics import Metrics
from proxy.observability.tracing import Tracing, store_totals
from proxy.stores import ClaimState, OutboxItem, SqliteStore, StoreUnavailable


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(spans: InMemorySpanExporter) -> Tracing:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return Tracing(provider)


@pytest.fixture
async def store(tracing: Tracing) -> AsyncIterator[InstrumentedStore]:
    async with InstrumentedStore(SqliteStore(":memory:"), Metrics(CollectorRegistry()), tracing) as s:
        yield s


def sample(store: InstrumentedStore, name: str, operation: str) -> float | None:
    return store.metrics.registry.get_sample_value(name, {"operation": operation})


async def test_results_are_those_of_the_wrapped_store_and_every_call_is_timed(
    store: InstrumentedStore,
) -> None:
    first = await store.claim("k", lease=5, ttl=60)
    again = await store.claim("k", lease=5, ttl=60)
    assert (first.state, again.state) == (ClaimState.NEW, ClaimState.IN_FLIGHT)
    assert first.token is not None
    assert await store.complete("k", first.token, b"reply", 60) is True
    await store.outbox_put(OutboxItem("i1", "mp", b"{}", 0, 1.0, 1.0))
    assert (await store.outbox_stats(2.0)).depth == 1
    assert sample(store, "wxgate_store_operation_duration_seconds_count", "claim") == 2
    assert sample(store, "wxgate_store_operation_duration_seconds_count", "complete") == 1
    assert sample(store, "wxgate_store_operation_duration_seconds_count", "outbox_stats") == 1
    assert sample(store, "wxgate_store_errors_total", "claim") == 0
    assert store.url_scheme == "sqlite"


async def test_calls_inside_a_trace_get_client_spans(
    store: InstrumentedStore, tracing: Tracing, spans: InMemorySpanExporter
) -> None:
    await store.remember("outside", 60)  # no current span: no store span (the outbox poll stays quiet)
    with tracing.tracer.start_as_current_span("request") as parent:
        await store.remember("inside", 60)
    store_span, request = spans.get_finished_spans()
    assert store_span.name == "store remember" and store_span.kind is SpanKind.CLIENT
    assert store_span.parent is not None and store_span.parent.span_id == parent.get_span_context().span_id
    assert dict(store_span.attributes or {}) == {"db.operation.name": "remember", "db.system.name": "sqlite"}
    assert request.name == "request"


class Down(SqliteStore):
    async def claim(self, key: str, lease: float, ttl: float, note: object = None) -> object:  # type: ignore[override]
        raise StoreUnavailable("sqlite file is not writable: check the volume")

    async def remember(self, key: str, ttl: float) -> bool:
        await asyncio.sleep(10)
        return True


async def test_failures_are_counted_and_marked_on_the_span_and_still_raised(
    tracing: Tracing, spans: InMemorySpanExporter
) -> None:
    async with InstrumentedStore(Down(":memory:"), Metrics(CollectorRegistry()), tracing) as store:
        with tracing.tracer.start_as_current_span("request"), pytest.raises(StoreUnavailable, match="volume"):
            await store.claim("k", 5, 60)
        assert sample(store, "wxgate_store_errors_total", "claim") == 1
        assert sample(store, "wxgate_store_operation_duration_seconds_count", "claim") == 1
        failed = next(s for s in spans.get_finished_spans() if s.name == "store claim")
        assert failed.status.status_code is StatusCode.ERROR
        assert failed.attributes is not None and failed.attributes["error.type"] == "StoreUnavailable"

        # A call cut short by its caller (e.g. /readyz's 1 s timeout) is timed but is not a store error.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(store.remember("k", 60), 0.01)
        assert sample(store, "wxgate_store_errors_total", "remember") == 0
        assert sample(store, "wxgate_store_operation_duration_seconds_count", "remember") == 1


async def test_without_tracing_only_metrics_are_kept(spans: InMemorySpanExporter) -> None:
    async with InstrumentedStore(SqliteStore(":memory:"), Metrics(CollectorRegistry())) as store:
        await store.ping()
        assert sample(store, "wxgate_store_operation_duration_seconds_count", "ping") == 1
    assert spans.get_finished_spans() == ()


class Slow(SqliteStore):
    async def remember(self, key: str, ttl: float) -> bool:
        await asyncio.sleep(0.005)
        return True


async def test_by_default_only_slow_failed_and_cut_short_calls_get_a_span_and_the_request_keeps_the_total(
    spans: InMemorySpanExporter,
) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing = Tracing(provider, store_span_min=0.003)
    async with InstrumentedStore(Slow(":memory:"), Metrics(CollectorRegistry()), tracing) as store:
        with tracing.tracer.start_as_current_span("request") as request:
            assert (await store.claim("fast", lease=5, ttl=60)).state is ClaimState.NEW  # ~50 µs: no span
            await store.remember("slow", 60)  # 5 ms: a span with the call's own start and end
        (slow, parent) = spans.get_finished_spans()
        assert slow.name == "store remember" and slow.parent is not None
        assert slow.parent.span_id == request.get_span_context().span_id
        assert slow.start_time is not None and slow.end_time is not None
        assert 0.004 <= (slow.end_time - slow.start_time) / 1e9 < 1.0
        assert parent.start_time is not None and slow.start_time >= parent.start_time
        totals = store_totals(request)  # what the server span gets when it ends (finish_server)
        assert totals["wxgate.store.calls"] == 2
        assert isinstance(ms := totals["wxgate.store.ms"], float) and 4.0 <= ms < 1000  # both calls
        spans.clear()

        with tracing.tracer.start_as_current_span("request"), pytest.raises(TimeoutError):
            await asyncio.wait_for(store.remember("cut short", 60), 0.001)  # shorter than the threshold
        (cut, _) = spans.get_finished_spans()
        assert cut.name == "store remember" and cut.status.status_code is StatusCode.UNSET

    spans.clear()
    async with InstrumentedStore(Down(":memory:"), Metrics(CollectorRegistry()), tracing) as down:
        with tracing.tracer.start_as_current_span("request"), pytest.raises(StoreUnavailable):
            await down.claim("k", 5, 60)  # fails at once: still a span, ERROR
        (failed, _) = spans.get_finished_spans()
        assert failed.name == "store claim" and failed.status.status_code is StatusCode.ERROR


async def test_a_store_call_that_outlives_the_request_span_leaves_it_alone(
    tracing: Tracing, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    # The deadline answered (and ended the server span) while the store call was still running.
    async with InstrumentedStore(Slow(":memory:"), Metrics(CollectorRegistry()), tracing) as store:
        request = tracing.tracer.start_span("request")
        with trace.use_span(request), caplog.at_level(logging.WARNING):
            call = asyncio.ensure_future(store.remember("late", 60))
            await asyncio.sleep(0)
            request.end()
            await call
    assert "ended span" not in caplog.text
    assert store_totals(request) == {}


async def test_a_span_that_cannot_be_recorded_leaves_the_store_calls_result_alone(
    tracing: Tracing, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("exporter bug")

    monkeypatch.setattr(tracing, "_start", broken)  # store_span_min 0: every call makes a span, and fails to
    async with InstrumentedStore(SqliteStore(":memory:"), Metrics(CollectorRegistry()), tracing) as store:
        with tracing.tracer.start_as_current_span("request"), caplog.at_level(logging.ERROR, "wxgate"):
            claim = await store.claim("k", lease=5, ttl=60)
        assert claim.state is ClaimState.NEW  # the claim stands: not a store error, not a duplicate later
        assert sample(store, "wxgate_store_errors_total", "claim") == 0
    assert "recording the span of a store call (claim) failed" in caplog.text
