from __future__ import annotations

import asyncio

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from proxy.config import ConfigError
from proxy.observability.otel_env import (
    TracingConfigError,
    provider_from_env,
    resource_from_env,
    sampler_from_env,
    span_limits_from_env,
    store_span_min_from_env,
)
from proxy.observability.outcome import Outcome
from proxy.observability.tracing import REQUEST_VALUE_LIMIT, Tracing, hex_ids, traceparent
from proxy.pipeline.exchange import Exchange
from proxy.upstream.client import UpstreamResult
from tests.addons.conftest import mp_flow, routed, table


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(spans: InMemorySpanExporter) -> Tracing:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return Tracing(provider)


RATIO_0 = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}


def exporter_names(provider: TracerProvider | None) -> list[str]:
    assert provider is not None
    procs = provider._active_span_processor._span_processors
    return [type(p.span_exporter).__name__ for p in procs]  # type: ignore[attr-defined]


# -- provider from the environment -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"},
        {"OTEL_SERVICE_NAME": "wx", "OTEL_TRACES_SAMPLER": "always_on"},
    ],
)
def test_tracing_is_off_unless_an_exporter_is_asked_for(env: dict[str, str]) -> None:
    assert provider_from_env(env) is None


@pytest.mark.parametrize(
    ("env", "endpoint"),
    [
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "http://localhost:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}, "http://collector:4318/v1/traces"),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c.example/otlp/traces"},
            "https://c.example/otlp/traces",
        ),
    ],
)
def test_otlp_export_goes_to_the_standard_endpoint(env: dict[str, str], endpoint: str) -> None:
    provider = provider_from_env(env)
    assert exporter_names(provider) == ["OTLPSpanExporter"]
    assert provider is not None
    exporter = provider._active_span_processor._span_processors[0].span_exporter  # type: ignore[attr-defined]
    assert exporter._endpoint == endpoint
    provider.shutdown()


def test_otlp_and_console_exporters_together() -> None:
    # Headers reaching the collector are checked end to end in tests/integration/test_observability.py.
    provider = provider_from_env({"OTEL_TRACES_EXPORTER": "otlp,console"})
    assert exporter_names(provider) == ["OTLPSpanExporter", "ConsoleSpanExporter"]
    assert provider is not None
    provider.shutdown()


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER='jaeger'"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "http/protobuf"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "gzip or none"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_BSP_SCHEDULE_DELAY": "soon"}, "OTEL_BSP_SCHEDULE_DELAY"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
    ],
)
def test_unsupported_settings_are_configuration_errors_that_say_what_to_set(
    env: dict[str, str], names: str
) -> None:
    with pytest.raises(TracingConfigError, match=names) as err:
        provider_from_env(env)
    assert isinstance(err.value, ConfigError)  # the CLI reports it like any configuration error (exit 2)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, sampling.DEFAULT_ON),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, sampling.ALWAYS_OFF),
        ({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, sampling.DEFAULT_OFF),
    ],
)
def test_named_samplers(env: dict[str, str], expected: sampling.Sampler) -> None:
    assert sampler_from_env(env) is expected


def test_ratio_sampler_takes_its_argument() -> None:
    s = sampler_from_env(
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    )
    assert isinstance(s, sampling.ParentBasedTraceIdRatio)
    assert s._root.rate == 0.25  # type: ignore[attr-defined]


def test_resource_names_the_service() -> None:
    r = resource_from_env({"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.name=x"})
    assert r.attributes["service.name"] == "x" and r.attributes["deployment.environment"] == "prod"
    r = resource_from_env({"OTEL_SERVICE_NAME": "edge-wxgate", "OTEL_RESOURCE_ATTRIBUTES": "service.name=x"})
    assert r.attributes["service.name"] == "edge-wxgate"
    assert resource_from_env({}).attributes["service.name"] == "wxgate"


# -- the spans ---------------------------------------------------------------------------------------------


def only(spans: InMemorySpanExporter, kind: SpanKind) -> ReadableSpan:
    (span,) = [s for s in spans.get_finished_spans() if s.kind is kind]
    return span


@pytest.mark.parametrize(
    ("status", "code"), [(200, StatusCode.UNSET), (403, StatusCode.UNSET), (502, StatusCode.ERROR)]
)
def test_server_span_status_follows_semconv(
    tracing: Tracing, spans: InMemorySpanExporter, status: int, code: StatusCode
) -> None:
    span = tracing.start_server(
        "POST", "/wx?signature=abc&openid=oSecret", {}, "203.0.113.7", ("0.0.0.0", 8080)
    )
    o = Outcome(route="mp", protocol="wechat-mp", method="POST", verdict="verified", dedup="new", attempt=2)
    tracing.finish_server(span, o, "/wx", status)
    s = only(spans, SpanKind.SERVER)
    assert s.name == "POST /wx"
    assert s.status.status_code is code
    attrs = dict(s.attributes or {})
    assert attrs["http.route"] == "/wx" and attrs["url.path"] == "/wx"
    assert attrs["http.response.status_code"] == status
    assert attrs["wxgate.dedup.result"] == "new" and attrs["wxgate.attempt"] == 2
    assert "url.query" not in attrs and "oSecret" not in str(attrs)
    assert ("error.type" in attrs) == (status >= 500)


def test_unmatched_requests_and_unknown_methods_keep_low_cardinality_names(
    tracing: Tracing, spans: InMemorySpanExporter
) -> None:
    tracing.finish_server(tracing.start_server("GET", "/any/42", {}, ""), Outcome(method="GET"), None, 200)
    tracing.finish_server(tracing.start_server("BREW", "/pot", {}, ""), Outcome(method="BREW"), "/pot", 405)
    first, second = spans.get_finished_spans()
    assert first.name == "GET" and "http.route" not in (first.attributes or {})
    assert second.name == "HTTP /pot"
    assert second.attributes is not None and second.attributes["http.request.method"] == "_OTHER"


def test_an_authorizers_appid_is_a_span_attribute_under_the_template_route(
    tracing: Tracing, spans: InMemorySpanExporter
) -> None:
    path = "/open/wxba5fad812f8e6fb9/callback"
    span = tracing.start_server("POST", path + "?openid=o1", {}, "203.0.113.7")
    o = Outcome(route="open", protocol="wechat-open-platform", method="POST", verdict="verified")
    o.tenant, o.tenant_verified = "wxba5fad812f8e6fb9", "false"
    tracing.finish_server(span, o, "/open/{appid}/callback", 200)
    s = only(spans, SpanKind.SERVER)
    attrs = dict(s.attributes or {})
    assert s.name == "POST /open/{appid}/callback" and attrs["http.route"] == "/open/{appid}/callback"
    assert attrs["wxgate.tenant"] == "wxba5fad812f8e6fb9" and attrs["wxgate.tenant.verified"] is False


CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_senders_traceparent_is_a_link_never_the_parent(
    tracing: Tracing, spans: InMemorySpanExporter
) -> None:
    tracing.finish_server(
        tracing.start_server("POST", "/wx", {"traceparent": CALLER}, ""), Outcome(), "/wx", 200
    )
    (s,) = spans.get_finished_spans()
    assert s.parent is None and s.context is not None
    assert f"{s.context.trace_id:032x}" != "0af7651916cd43dd8448eb211c80319c"
    (link,) = s.links
    assert f"{link.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert f"{link.context.span_id:016x}" == "b7ad6b7169203331"


@pytest.mark.parametrize(
    "header",
    [
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # all-zero span id
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # upper case
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        CALLER + ", " + CALLER,  # two headers
        "00-" + "a" * 2000,
        "garbage",
    ],
)
def test_an_invalid_traceparent_is_not_even_a_link(
    tracing: Tracing, spans: InMemorySpanExporter, header: str
) -> None:
    tracing.finish_server(
        tracing.start_server("POST", "/wx", {"traceparent": header}, ""), Outcome(), "/wx", 200
    )
    (s,) = spans.get_finished_spans()
    assert s.parent is None and s.links == ()


def test_a_sampled_flag_from_the_sender_does_not_force_sampling(spans: InMemorySpanExporter) -> None:
    provider = TracerProvider(sampler=sampler_from_env(RATIO_0))
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing = Tracing(provider)
    span = tracing.start_server("POST", "/wx", {"traceparent": CALLER}, "")
    assert not span.is_recording()
    ctx = span.get_span_context()
    assert ctx.is_valid and f"{ctx.trace_id:032x}" != "0af7651916cd43dd8448eb211c80319c"
    tracing.finish_server(span, Outcome(), "/wx", 200)
    assert spans.get_finished_spans() == ()


def test_values_from_the_request_are_bounded(tracing: Tracing, spans: InMemorySpanExporter) -> None:
    long = "x" * 10240
    span = tracing.start_server(
        "M" * 5000, "/" + long + "?q=1", {"user-agent": long}, "203.0.113.7", protocol_version="1." + long
    )
    tracing.finish_server(
        span, Outcome(method="M" * 5000, key_id="K" * 5000, reason="bad_signature"), "/wx", 405
    )
    attrs = {k: str(v) for k, v in (only(spans, SpanKind.SERVER).attributes or {}).items()}
    assert len(attrs["user_agent.original"]) == REQUEST_VALUE_LIMIT == 256
    assert attrs["user_agent.original"] == long[:256]
    assert len(attrs["url.path"]) == len(attrs["http.request.method_original"]) == 256
    assert len(attrs["network.protocol.version"]) == len(attrs["wxgate.key_id"]) == 256
    assert all(len(v) <= 256 for v in attrs.values())


@pytest.mark.parametrize(
    ("env", "limit"),
    [
        ({"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "40"}, 40),
        ({"OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT": "30", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "40"}, 30),
        ({}, None),
    ],
)
def test_attribute_length_limits_come_from_the_environment(env: dict[str, str], limit: int | None) -> None:
    limits = span_limits_from_env(env)
    assert limits.max_span_attribute_length == limit
    spans = InMemorySpanExporter()
    provider = TracerProvider(span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing = Tracing(provider)
    long_upstream = "http://backend.internal/" + "p" * 100
    tracing.finish_server(
        tracing.start_server("POST", "/wx", {"user-agent": "u" * 1000}, ""), Outcome(), None, 200
    )
    tracing._client_span("POST", "/wx", long_upstream, None).end()
    server, client = spans.get_finished_spans()
    assert len(str((server.attributes or {})["user_agent.original"])) == min(limit or 256, 256)
    assert len(str((client.attributes or {})["url.full"])) == min(limit or 10**6, len(long_upstream) + 3)


def test_a_negative_length_limit_is_a_configuration_error() -> None:
    with pytest.raises(TracingConfigError, match="OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT"):
        provider_from_env({"OTEL_TRACES_EXPORTER": "console", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "-1"})


@pytest.mark.parametrize(
    ("result", "code", "error_type"),
    [
        (UpstreamResult("2xx", 200), StatusCode.UNSET, None),
        (UpstreamResult("4xx", 404), StatusCode.ERROR, "404"),
        (UpstreamResult("timeout", error="timed out"), StatusCode.ERROR, "timeout"),
        (UpstreamResult("refused", error="ECONNREFUSED"), StatusCode.ERROR, "refused"),
    ],
)
async def test_backend_call_span_is_a_child_whose_traceparent_reaches_the_backend(
    tracing: Tracing,
    spans: InMemorySpanExporter,
    result: UpstreamResult,
    code: StatusCode,
    error_type: str | None,
) -> None:
    f = mp_flow()
    ex: Exchange = routed(f, table())
    ex.span = tracing.start_server("POST", "/wx", {}, "")
    assert ex.route is not None
    call = tracing.backend_call(ex.span, "POST", ex.route.config.path, ex.route.upstream)
    ex.traceparent = call.traceparent

    async def send() -> UpstreamResult:
        return result

    assert await call.wrap(send()) is result
    ex.span.end()
    client = only(spans, SpanKind.CLIENT)
    server = only(spans, SpanKind.SERVER)
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    ctx = client.context
    assert ex.traceparent == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    assert client.name == "POST /wx"
    assert client.status.status_code is code
    attrs = dict(client.attributes or {})
    assert attrs["url.full"] == "http://127.0.0.1:9000/wx" and attrs["server.port"] == 9000
    assert attrs.get("error.type") == error_type


async def test_a_cancelled_backend_call_still_ends_its_span(
    tracing: Tracing, spans: InMemorySpanExporter
) -> None:
    ex = routed(mp_flow(), table())
    assert ex.route is not None
    call = tracing.backend_call(None, "POST", ex.route.config.path, ex.route.upstream)
    task = asyncio.ensure_future(call.wrap(asyncio.sleep(10, UpstreamResult("2xx", 200))))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    client = only(spans, SpanKind.CLIENT)
    assert client.status.status_code is StatusCode.ERROR
    assert client.attributes is not None and client.attributes["error.type"] == "CancelledError"


def test_redelivery_links_to_the_first_delivery_and_rewrites_traceparent(
    tracing: Tracing, spans: InMemorySpanExporter
) -> None:
    origin = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = {"traceparent": origin, "x-wxgate-redelivery": "3"}
    with tracing.redelivery("mp", origin) as parent, tracing.store_call("claim", "sqlite"):
        pass
    with tracing.redelivery("mp", origin) as parent:
        tracing.redelivery_call("POST", "/wx", "http://backend:9000", 3, headers).finish(
            UpstreamResult("2xx", 200)
        )
    by_name = {s.name: s for s in spans.get_finished_spans()}
    redeliver = by_name["redeliver mp"]
    assert redeliver.parent is None  # a new trace, not a child of the long-finished request
    assert [f"{link.context.trace_id:032x}" for link in redeliver.links] == [
        "0af7651916cd43dd8448eb211c80319c"
    ]
    client = by_name["POST /wx"]
    assert client.parent is not None and client.parent.span_id == parent.get_span_context().span_id
    assert client.attributes is not None and client.attributes["http.request.resend_count"] == 3
    assert headers["traceparent"] == traceparent(tracing_span(client))
    assert by_name["store claim"].attributes == {"db.operation.name": "claim", "db.system.name": "sqlite"}


def test_store_calls_outside_any_trace_make_no_span(tracing: Tracing, spans: InMemorySpanExporter) -> None:
    with tracing.store_call("outbox_lease", "redis") as span:
        assert span is None
    assert spans.get_finished_spans() == ()


def tracing_span(s: ReadableSpan) -> trace.Span:
    assert s.context is not None
    return trace.NonRecordingSpan(s.context)


def test_traceparent_matches_the_w3c_propagator_sampled_or_not() -> None:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    for sampler in (sampling.ALWAYS_ON, sampling.ALWAYS_OFF):
        span = TracerProvider(sampler=sampler).get_tracer("t").start_span("s")
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(span))
        assert traceparent(span) == carrier["traceparent"]
        assert int(traceparent(span)[-2:], 16) & 1 == (sampler is sampling.ALWAYS_ON)


async def test_an_outbox_redelivery_is_a_linked_trace_whose_traceparent_reaches_the_backend(
    tracing: Tracing, spans: InMemorySpanExporter
) -> None:
    from prometheus_client import CollectorRegistry

    from proxy.observability.instrumented_store import InstrumentedStore
    from proxy.observability.metrics import Metrics
    from proxy.pipeline.outbox import Delivery, OutboxWorker
    from proxy.stores import OutboxItem, SqliteStore
    from tests.addons.test_forward import FakeUpstream

    origin = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    up = FakeUpstream(UpstreamResult("2xx", 200, "text/plain", b"success"))
    payload = Delivery("POST", "/wx?signature=s", {"traceparent": origin}, b"<xml/>", None).encode()
    async with InstrumentedStore(SqliteStore(":memory:"), Metrics(CollectorRegistry()), tracing) as store:
        await store.outbox_put(OutboxItem("i1", "mp", payload, 0, 1.0, 1.0))
        assert await OutboxWorker(store, table(), up, tracing=tracing).run_once() == 1
    by_name = {s.name: s for s in spans.get_finished_spans()}
    assert set(by_name) == {"redeliver mp", "POST /wx", "store outbox_ack"}  # the lease poll is not traced
    root, call = by_name["redeliver mp"], by_name["POST /wx"]
    assert root.parent is None and root.attributes is not None
    assert root.attributes["wxgate.redelivery.result"] == "delivered"
    assert [f"{link.context.trace_id:032x}" for link in root.links] == ["0af7651916cd43dd8448eb211c80319c"]
    assert (
        call.parent is not None and root.context is not None and call.parent.span_id == root.context.span_id
    )
    assert call.attributes is not None and call.attributes["http.request.resend_count"] == 1
    sent = up.calls[0][2]
    assert sent["x-wxgate-redelivery"] == "1"
    assert sent["traceparent"] == traceparent(tracing_span(call))


def test_ids_are_written_as_w3c_trace_context_writes_them(tracing: Tracing) -> None:
    span = tracing.start_server("POST", "/wx", {}, "")
    trace_id, span_id = hex_ids(span)
    assert traceparent(span).split("-")[:3] == ["00", trace_id, span_id]
    assert len(trace_id) == 32 and len(span_id) == 16 and (trace_id + span_id).islower()
    assert int(trace_id, 16) == span.get_span_context().trace_id
    # no span (tracing off) or an invalid one: empty fields, never a run of zeros in a log line
    assert hex_ids(None) == hex_ids(trace.INVALID_SPAN) == ("", "")


def test_the_store_span_threshold_comes_from_the_environment() -> None:
    assert store_span_min_from_env({}) == 0.05
    assert store_span_min_from_env({"WXGATE_STORE_SPAN_MIN_MS": "0"}) == 0.0
    assert store_span_min_from_env({"WXGATE_STORE_SPAN_MIN_MS": " 2.5 "}) == 0.0025
    for bad in ("fast", "-1", "60001"):
        with pytest.raises(ConfigError, match="WXGATE_STORE_SPAN_MIN_MS"):
            store_span_min_from_env({"WXGATE_STORE_SPAN_MIN_MS": bad})
    with pytest.raises(ConfigError, match="WXGATE_STORE_SPAN_MIN_MS"):  # `wxgate check` sees it too
        provider_from_env({"OTEL_TRACES_EXPORTER": "console", "WXGATE_STORE_SPAN_MIN_MS": "x"})


def _one_request(tracing: Tracing, slow_store: bool) -> None:
    server = tracing.start_server(
        "POST",
        "/wx?signature=s",
        {"user-agent": "Mozilla/5.0 MicroMessenger/8.0", "traceparent": CALLER},
        "10.0.0.7",
        ("0.0.0.0", 80),
    )
    with trace.use_span(server):
        timer = tracing.store_timer()
        assert timer is not None
        timer.end("claim_signed", "redis", 0.2 if slow_store else 0.0001)
    call = tracing.backend_call(server, "POST", "/wx", "http://backend:9000")
    call.finish(UpstreamResult("5xx", 502, error="bad gateway"))
    outcome = Outcome(
        route="mp", protocol="wechat-mp", verdict="verified", method="POST", dedup="new", attempt=1
    )
    tracing.finish_server(server, outcome, "/wx", 503)
    server.set_attribute("after", "end")  # ignored, as by the SDK's span
    server.end()  # a second end exports nothing more


def _shape(s: ReadableSpan, ids: dict[int, str]) -> tuple[object, ...]:
    assert s.context is not None
    ids.setdefault(s.context.span_id, s.name)
    return (
        s.name,
        s.kind,
        ids.get(s.parent.span_id) if s.parent is not None else None,
        dict(s.attributes or {}),
        s.status.status_code,
        s.status.description,
        [f"{link.context.trace_id:032x}" for link in s.links],
        dict(s.resource.attributes),
        (s.instrumentation_scope.name, s.instrumentation_scope.version) if s.instrumentation_scope else None,
        s.context.trace_flags,
        s.end_time is not None and s.start_time is not None and s.end_time >= s.start_time,
    )


@pytest.mark.parametrize(
    "limits",
    [
        SpanLimits(max_attribute_length=12),
        # OTEL_ATTRIBUTE_COUNT_LIMIT=3, OTEL_SPAN_LINK_COUNT_LIMIT=0 (the SDK reads those from os.environ)
        SpanLimits(max_span_attributes=3, max_links=0, max_attribute_length=12),
    ],
)
def test_request_spans_are_exported_exactly_as_the_sdks_own_spans_would_be(limits: SpanLimits) -> None:
    shapes = []
    dropped: list[list[tuple[int, int]]] = []
    for lean in (True, False):
        spans = InMemorySpanExporter()
        provider = TracerProvider(span_limits=limits)
        provider.add_span_processor(SimpleSpanProcessor(spans))
        tracing = Tracing(provider, store_span_min=0.05)
        tracing._lean = lean  # the SDK's Tracer.start_span, as before LeanSpan
        _one_request(tracing, slow_store=True)
        ids: dict[int, str] = {}
        finished = sorted(spans.get_finished_spans(), key=lambda s: (s.start_time or 0, s.name))
        shapes.append([_shape(s, ids) for s in finished])
        dropped.append([(s.dropped_attributes, s.dropped_links) for s in finished])
    made, by_sdk = shapes
    assert len(made) == 3  # the server span, the slow store call, the backend call; once each
    assert made == by_sdk and dropped[0] == dropped[1]
    server = next(s for s in made if s[1] is SpanKind.SERVER)
    assert "after" not in server[3]
    if limits.max_span_attributes == 3:
        assert len(server[3]) == 3 and server[6] == []  # the sender's link dropped, as by the SDK
        assert max(d[0] for d in dropped[0]) > 0 and max(d[1] for d in dropped[0]) == 1
    else:
        assert server[3]["user_agent.original"] == "Mozilla/5.0 "


def test_bytes_that_were_not_utf8_reach_a_span_as_question_marks(
    tracing: Tracing, spans: InMemorySpanExporter
) -> None:
    ua = b"Mozilla/5.0 \xff\xfe caf\xc3\xa9".decode(
        "utf-8", "surrogateescape"
    )  # as mitmproxy decodes a header
    path = "/wx/" + b"\xe9t\xe9".decode("utf-8", "surrogateescape")
    tracing.finish_server(tracing.start_server("POST", path, {"user-agent": ua}, ""), Outcome(), None, 200)
    attrs = only(spans, SpanKind.SERVER).attributes or {}
    assert attrs["user_agent.original"] == "Mozilla/5.0 ?? café"
    assert attrs["url.path"] == "/wx/?t?"
    for value in attrs.values():
        str(value).encode("utf-8")  # an exporter can encode every value
