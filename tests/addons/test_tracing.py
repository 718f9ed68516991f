"""The tracing addon in a real chain, each hook event in its own task as mitmproxy runs them."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mitmproxy import http
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from addons.dedup import Dedup
from addons.forward import Forward
from addons.metrics import MetricsAddon
from addons.routing import Routing
from addons.start import ExchangeStart
from addons.tracing import TracingAddon
from addons.verify import Verify
from proxy.observability.instrumented_store import InstrumentedStore
from proxy.observability.metrics import Metrics
from proxy.observability.otel_env import sampler_from_env
from proxy.observability.tracing import Tracing
from proxy.pipeline.exchange import Exchange, exchange
from proxy.pipeline.routes import RouteTable
from proxy.pipeline.settlement import Settlement
from proxy.stores import SqliteStore
from proxy.tasks import BackgroundTasks
from proxy.upstream.client import UpstreamResult
from tests.addons.conftest import mp_flow, table
from tests.addons.test_forward import PASSIVE, FakeUpstream


class Chain:
    def __init__(self, tracing: Tracing | None, result: UpstreamResult, **route: Any) -> None:
        self.metrics = Metrics(CollectorRegistry())
        self.table: RouteTable = table(**route)
        self.store = InstrumentedStore(SqliteStore(":memory:"), self.metrics, tracing)
        self.upstream = FakeUpstream(result)
        self.tasks = BackgroundTasks()
        self.addons: list[Any] = [
            ExchangeStart(),
            *([TracingAddon(tracing)] if tracing else []),
            MetricsAddon(self.metrics),
            Routing(self.table),
            Verify(self.store.remember),
            Dedup(self.store, Settlement()),
            Forward(self.upstream, Settlement(), self.tasks, self.metrics.observe_upstream, tracing),
        ]

    async def event(self, name: str, flow: http.HTTPFlow) -> None:
        async def run() -> None:
            for addon in self.addons:
                hook = getattr(addon, name, None)
                if hook is not None and inspect.isawaitable(res := hook(flow)):
                    await res

        # mitmproxy runs every hook event in a task of its own (proxy/server.py: hook_task).
        await asyncio.create_task(run())

    async def send(self, flow: http.HTTPFlow) -> Exchange:
        await self.event("requestheaders", flow)
        await self.event("request", flow)
        await self.event("response" if flow.error is None else "error", flow)
        await self.tasks.drain(2)
        ex = exchange(flow)
        assert ex is not None
        return ex


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(spans: InMemorySpanExporter) -> Tracing:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return Tracing(provider)


@pytest.fixture
async def chain(tracing: Tracing) -> AsyncIterator[Chain]:
    c = Chain(tracing, UpstreamResult("2xx", 200, "application/xml", PASSIVE))
    async with c.store:
        yield c


def by_kind(spans: InMemorySpanExporter, kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.kind is kind]


async def test_a_forwarded_request_makes_one_trace_whose_client_span_reaches_the_backend(
    chain: Chain, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "wxgate.access"):
        ex = await chain.send(mp_flow(msg_id=7))
    (server,) = by_kind(spans, SpanKind.SERVER)
    client_spans = by_kind(spans, SpanKind.CLIENT)
    # claim_signed: the replay cache and the dedup claim, one store call
    assert {s.name for s in client_spans} == {"POST /wx", "store claim_signed"}
    assert server.name == "POST /wx" and server.status.status_code is StatusCode.UNSET
    assert server.context is not None
    for child in client_spans:
        assert child.parent is not None and child.parent.span_id == server.context.span_id
    (backend_call,) = [s for s in client_spans if s.name == "POST /wx"]
    assert backend_call.context is not None
    sent = chain.upstream.calls[0][2]["traceparent"]
    assert sent == ex.traceparent
    assert sent.split("-")[1:3] == [f"{server.context.trace_id:032x}", f"{backend_call.context.span_id:016x}"]
    attrs = dict(server.attributes or {})
    assert attrs["wxgate.verdict"] == "verified" and attrs["wxgate.reply_kind"] == "passive"
    assert attrs["wxgate.upstream.result"] == "2xx" and attrs["http.response.status_code"] == 200
    assert attrs["wxgate.store.calls"] == 1 and attrs["wxgate.store.ms"] > 0
    (line,) = [r for r in caplog.records if r.name == "wxgate.access"]
    assert line.fields["trace_id"] == f"{server.context.trace_id:032x}"  # type: ignore[attr-defined]
    assert line.fields["span_id"] == f"{server.context.span_id:016x}"  # type: ignore[attr-defined]


async def test_the_span_context_does_not_leak_out_of_the_hook_tasks(chain: Chain) -> None:
    await chain.send(mp_flow(msg_id=8))
    assert trace.get_current_span() is trace.INVALID_SPAN


async def test_a_rejection_is_not_an_error_on_the_server_span(
    chain: Chain, spans: InMemorySpanExporter
) -> None:
    f = mp_flow(msg_id=9)
    f.request.query["signature"] = "0" * 40
    await chain.send(f)
    (server,) = spans.get_finished_spans()
    assert server.status.status_code is StatusCode.UNSET
    attrs = dict(server.attributes or {})
    assert (attrs["http.response.status_code"], attrs["wxgate.reason"]) == (403, "bad_signature")
    assert chain.upstream.calls == []


async def test_a_failure_passed_on_as_5xx_is_an_error(tracing: Tracing, spans: InMemorySpanExporter) -> None:
    c = Chain(tracing, UpstreamResult("5xx", 500, "text/html", b"<h1>oops</h1>"), on_backend_failure="fail")
    async with c.store:
        await c.send(mp_flow(msg_id=10))
    (server,) = by_kind(spans, SpanKind.SERVER)
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes is not None and server.attributes["error.type"] == "502"
    backend_call = next(s for s in by_kind(spans, SpanKind.CLIENT) if s.name == "POST /wx")
    assert backend_call.attributes is not None and backend_call.attributes["http.response.status_code"] == 500


async def test_a_connection_that_fails_before_an_answer_ends_the_span_as_an_error(
    chain: Chain, spans: InMemorySpanExporter
) -> None:
    from mitmproxy.flow import Error

    f = mp_flow(msg_id=11)
    await chain.event("requestheaders", f)
    f.error = Error("client disconnected")
    f.response = None
    await chain.event("error", f)
    (server,) = spans.get_finished_spans()
    assert server.status.status_code is StatusCode.ERROR


async def test_the_exemplar_of_a_request_is_its_trace(chain: Chain, spans: InMemorySpanExporter) -> None:
    from prometheus_client.openmetrics.exposition import generate_latest

    await chain.send(mp_flow(msg_id=12))
    (server,) = by_kind(spans, SpanKind.SERVER)
    assert server.context is not None
    text = generate_latest(chain.metrics.registry).decode()
    durations = [ln for ln in text.splitlines() if "trace_id" in ln]
    assert {ln.split("_bucket")[0] for ln in durations} == {
        "wxgate_request_duration_seconds",
        "wxgate_upstream_duration_seconds",
    }
    assert all(f'trace_id="{server.context.trace_id:032x}"' in ln for ln in durations)


SENDER_TRACE = "0af7651916cd43dd8448eb211c80319c"
SENDER_TRACEPARENT = f"00-{SENDER_TRACE}-b7ad6b7169203331-01"  # sampled flag set


def with_sender_context(f: http.HTTPFlow) -> http.HTTPFlow:
    f.request.headers["traceparent"] = SENDER_TRACEPARENT
    f.request.headers["tracestate"] = "vendor=chosen-by-the-sender"
    f.request.headers["user-agent"] = "Mozilla/5.0 " + "x" * 10240
    return f


async def test_a_senders_sampled_traceparent_neither_forces_sampling_nor_reaches_the_backend(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider(
        sampler=sampler_from_env(
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}
        )
    )
    provider.add_span_processor(SimpleSpanProcessor(spans))
    c = Chain(Tracing(provider), UpstreamResult("2xx", 200, "application/xml", PASSIVE))
    with caplog.at_level(logging.INFO, "wxgate.access"):
        async with c.store:
            await c.send(with_sender_context(mp_flow(msg_id=14)))
    assert spans.get_finished_spans() == ()
    sent = c.upstream.calls[0][2]
    version, trace_id, _, flags = sent["traceparent"].split("-")
    assert version == "00" and trace_id != SENDER_TRACE and int(flags, 16) & 1 == 0  # not sampled
    assert "tracestate" not in sent
    (line,) = [r for r in caplog.records if r.name == "wxgate.access"]
    assert line.fields["trace_id"] == trace_id  # type: ignore[attr-defined]


async def test_a_traced_request_links_the_senders_context_and_bounds_its_user_agent(
    chain: Chain, spans: InMemorySpanExporter
) -> None:
    await chain.send(with_sender_context(mp_flow(msg_id=15)))
    (server,) = by_kind(spans, SpanKind.SERVER)
    assert server.parent is None and server.context is not None
    assert f"{server.context.trace_id:032x}" != SENDER_TRACE
    assert [f"{link.context.trace_id:032x}" for link in server.links] == [SENDER_TRACE]
    ua = str((server.attributes or {})["user_agent.original"])
    assert len(ua) == 256 and ua.startswith("Mozilla/5.0 xxx")
    sent = chain.upstream.calls[0][2]
    assert sent["traceparent"].split("-")[1] == f"{server.context.trace_id:032x}"
    assert "tracestate" not in sent


async def test_with_tracing_off_nothing_is_traced_and_no_traceparent_is_sent() -> None:
    c = Chain(None, UpstreamResult("2xx", 200, "application/xml", PASSIVE))
    async with c.store:
        ex = await c.send(with_sender_context(mp_flow(msg_id=13)))
    assert ex.span is None and ex.traceparent is None
    assert "traceparent" not in c.upstream.calls[0][2] and "tracestate" not in c.upstream.calls[0][2]
    assert not any(isinstance(a, TracingAddon) for a in c.addons)
