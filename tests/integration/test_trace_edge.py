"""A trace starts at this edge: through a running wxgate exporting to a real OTLP/HTTP receiver, a sender's
``traceparent`` (sampled flag set) neither forces sampling nor reaches the backend, and a 10 KiB user agent is
cut before it is exported; OpenTelemetry's count limits hold for wxgate's own spans, and a user agent that is
not UTF-8 is exported (as ``?``) rather than dropped with a traceback."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.config import parse_config
from proxy.tools import sender
from tests.integration.conftest import ENV, mp_route
from tests.support.otlp import OtlpReceiver, Span
from tests.support.procs import Backend, Sidecar, http, wait_until

pytestmark = pytest.mark.integration

SENDER_TRACE = "0af7651916cd43dd8448eb211c80319c"
SENDER_TRACEPARENT = f"00-{SENDER_TRACE}-b7ad6b7169203331-01"  # sampled
LONG_UA = "Mozilla/5.0 (sender) " + "x" * 10240


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    receiver.start()
    yield receiver
    receiver.stop()


def traced_sidecar(tmp: Path, backend: Backend, otlp: OtlpReceiver, name: str, **env: str) -> Sidecar:
    return Sidecar(
        tmp,
        {"upstream": backend.url, "routes": [mp_route()]},
        env={
            **ENV,
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_SERVICE_NAME": name,
            **env,
        },
        name=name,
    )


@pytest.fixture(scope="module")
def unsampled(tmp_module: Path, backend: Backend, otlp: OtlpReceiver) -> Iterator[Sidecar]:
    s = traced_sidecar(
        tmp_module,
        backend,
        otlp,
        "wxgate-ratio0",
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0",
    )
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def sampled(tmp_module: Path, backend: Backend, otlp: OtlpReceiver) -> Iterator[Sidecar]:
    s = traced_sidecar(tmp_module, backend, otlp, "wxgate-always")
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def limited(tmp_module: Path, backend: Backend, otlp: OtlpReceiver) -> Iterator[Sidecar]:
    s = traced_sidecar(
        tmp_module,
        backend,
        otlp,
        "wxgate-limited",
        OTEL_ATTRIBUTE_COUNT_LIMIT="3",
        OTEL_SPAN_LINK_COUNT_LIMIT="0",
    )
    s.start()
    yield s
    s.stop()


def send_with_sender_context(sidecar: Sidecar, msg_id: str) -> None:
    (route,) = parse_config({"routes": [mp_route()]}, ENV).routes
    req = sender.build(route, sender.SendOptions(message_id=msg_id))
    headers: dict[str, Any] = {
        **req.headers,
        "traceparent": SENDER_TRACEPARENT,
        "tracestate": "vendor=chosen-by-the-sender",
        "user-agent": LONG_UA,
    }
    status, _, _ = http(req.method, sidecar.url + req.path_query, req.body, headers)
    assert status == 200


def backend_traceparent(backend: Backend) -> tuple[str, str, int, dict[str, str]]:
    (forwarded,) = [r for r in backend.requests() if r["headers"].get("x-wxgate-route") == "mp"]
    headers: dict[str, str] = forwarded["headers"]
    _, trace_id, span_id, flags = headers["traceparent"].split("-")
    return trace_id, span_id, int(flags, 16), headers


def spans_of(otlp: OtlpReceiver, service: str) -> list[Span]:
    return [s for s in otlp.snapshot() if s.resource.get("service.name") == service]


def test_a_senders_sampled_flag_does_not_force_a_trace_nor_reach_the_backend(
    unsampled: Sidecar, fresh_backend: Backend, otlp: OtlpReceiver
) -> None:
    send_with_sender_context(unsampled, "7001")
    trace_id, _, flags, headers = backend_traceparent(fresh_backend)
    assert trace_id != SENDER_TRACE and flags & 1 == 0  # wxgate's own trace, not sampled at ratio 0
    assert "tracestate" not in headers
    (line,) = [ln for ln in unsampled.log_lines() if ln.get("logger") == "wxgate.access"]
    assert line["trace_id"] == trace_id
    time.sleep(1.0)  # five export intervals (OTEL_BSP_SCHEDULE_DELAY=100)
    assert spans_of(otlp, "wxgate-ratio0") == []
    exposition = http(
        "GET", unsampled.admin_url + "/metrics", headers={"Accept": "application/openmetrics-text"}
    )
    assert SENDER_TRACE.encode() not in exposition[1]  # no exemplar names the sender's trace


def test_a_traced_request_links_the_senders_context_and_cuts_a_long_user_agent(
    sampled: Sidecar, fresh_backend: Backend, otlp: OtlpReceiver
) -> None:
    send_with_sender_context(sampled, "7002")
    trace_id, span_id, flags, _ = backend_traceparent(fresh_backend)
    assert trace_id != SENDER_TRACE and flags & 1

    def server() -> list[Span]:
        return [s for s in spans_of(otlp, "wxgate-always") if s.kind == OtlpReceiver.SERVER]

    wait_until(server, 10, "the exported server span")
    (span,) = server()
    assert span.trace_id == trace_id and span.parent_span_id == ""
    assert [t for t, _ in span.links] == [SENDER_TRACE]
    assert span.attributes["user_agent.original"] == LONG_UA[:256]
    client = [s for s in spans_of(otlp, "wxgate-always") if s.span_id == span_id]
    assert client and client[0].parent_span_id == span.span_id
    assert all(len(str(v)) <= 256 for s in spans_of(otlp, "wxgate-always") for v in s.attributes.values())


def test_attribute_and_link_count_limits_hold_for_the_request_spans(
    limited: Sidecar, fresh_backend: Backend, otlp: OtlpReceiver
) -> None:
    send_with_sender_context(limited, "7003")
    wait_until(lambda: len(spans_of(otlp, "wxgate-limited")) >= 2, 10, "the exported spans")
    spans = spans_of(otlp, "wxgate-limited")
    assert {s.kind for s in spans} >= {OtlpReceiver.SERVER, OtlpReceiver.CLIENT}
    assert all(len(s.attributes) <= 3 and s.links == [] for s in spans), [
        (s.name, s.attributes) for s in spans
    ]


def test_a_user_agent_that_is_not_utf8_is_exported_not_dropped_with_a_traceback(
    sampled: Sidecar, fresh_backend: Backend, otlp: OtlpReceiver
) -> None:
    (route,) = parse_config({"routes": [mp_route()]}, ENV).routes
    req = sender.build(route, sender.SendOptions(message_id="7004"))
    head = f"{req.method} {req.path_query} HTTP/1.1\r\nhost: 127.0.0.1\r\n".encode()
    head += b"user-agent: probe \xff\xfe\r\n" + f"content-length: {len(req.body)}\r\n".encode()
    head += "".join(f"{k}: {v}\r\n" for k, v in req.headers.items() if k.lower() != "content-length").encode()
    with socket.create_connection(("127.0.0.1", sampled.port), timeout=5) as conn:
        conn.sendall(head + b"\r\n" + req.body)
        assert conn.recv(65536).startswith(b"HTTP/1.1 200 ")

    def probe() -> list[Span]:
        return [
            s
            for s in spans_of(otlp, "wxgate-always")
            if str(s.attributes.get("user_agent.original", "")).startswith("probe")
        ]

    wait_until(probe, 10, "the probe's server span")
    assert probe()[0].attributes["user_agent.original"] == "probe ??"
    assert not [ln for ln in sampled.log_lines() if ln.get("level") == "error"]
