"""Tracing: a tracer provider from the standard ``OTEL_*`` variables, and the spans wxgate makes on it.

Off by default: without ``OTEL_TRACES_EXPORTER=otlp`` (or ``console``), or an ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` with ``OTEL_TRACES_EXPORTER`` unset, :func:`provider_from_env` returns
``None``; the composition root then builds no :class:`Tracing`, adds no tracing addon, and no span object is
created on the hot path. Only OTLP over HTTP/protobuf is shipped (``OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf``).
The environment is an injected mapping (tests never touch ``os.environ``) and the provider is passed in, never
installed as the global one.

Spans (attribute keys from ``opentelemetry.semconv`` where one exists, ``wxgate.*`` otherwise):

- SERVER ``{METHOD} {http.route}`` per inbound request (``{METHOD}`` when no route matched); 5xx is ERROR, 4xx
  stays UNSET; ``wxgate.route/protocol/verdict/reason/key_id/dedup.result/dedup.key/attempt/upstream.result/
  reply_kind/normalized/deadline/outbox`` from the outcome record. Retries of one notification share
  ``wxgate.dedup.key`` (the key's hash), which is how a trace backend finds them together.
- CLIENT ``{METHOD} {route path}`` per backend call, child of the server span; its ``traceparent`` is what the
  backend receives. Any non-2xx answer, timeout or refusal is ERROR with ``error.type``.
- INTERNAL ``redeliver {route}`` per outbox redelivery, linked to the original backend call's trace, with the
  CLIENT backend call (``http.request.resend_count``) and store calls as children.
- CLIENT ``store {operation}`` per store call made inside a traced request or redelivery (``db.system.name``,
  ``db.operation.name``); store calls outside any trace (the outbox poll) make no spans.

Every request starts a new trace at this edge: a sender's ``traceparent`` neither chooses the trace id (which
reaches exemplars, logs and the backend) nor forces sampling; a valid one is kept only as a Link on the server
span. Values taken from the request (user agent, path, method, header-derived outcome fields) are cut to
:data:`REQUEST_VALUE_LIMIT` characters; ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`` /
``OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT`` cap every attribute on top of that.

Query strings are never recorded: they carry signatures, nonces and (for Official Accounts) the user's openid.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Awaitable, Iterator, Mapping
from typing import TYPE_CHECKING
from urllib.parse import unquote

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.semconv.attributes import (
    client_attributes,
    db_attributes,
    error_attributes,
    http_attributes,
    network_attributes,
    server_attributes,
    service_attributes,
    url_attributes,
    user_agent_attributes,
)
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.re import parse_env_headers
from opentelemetry.util.types import AttributeValue

from proxy import __version__
from proxy.config import ConfigError
from proxy.upstream import UpstreamResult

if TYPE_CHECKING:
    from proxy.exchange import Exchange, Outcome

TRACER_NAME = "wxgate"
# Semconv: a method outside the well-known set is reported as _OTHER (span name "HTTP").
KNOWN_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"})
# Stateless; W3C trace context only, never the globally configured propagator.
_PROPAGATOR = TraceContextTextMapPropagator()
# The longest value taken from a request that a span keeps (user agent, path, method, header-derived fields).
REQUEST_VALUE_LIMIT = 256
# A sender's traceparent longer than this is not parsed at all (version 00 is 55 characters).
_TRACEPARENT_MAX = 512


class TracingConfigError(ConfigError):
    """An ``OTEL_*`` variable wxgate cannot honour; the message names it and says what to set instead."""


# -- provider from the environment -------------------------------------------------------------------------


def provider_from_env(environ: Mapping[str, str]) -> TracerProvider | None:
    """A provider exporting as the ``OTEL_*`` variables say, or ``None`` when tracing is off (the default)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = _exporter_names(environ)
    if not exporters:
        return None
    provider = TracerProvider(
        sampler=sampler_from_env(environ),
        resource=resource_from_env(environ),
        shutdown_on_exit=False,
        span_limits=span_limits_from_env(environ),
    )
    for name in exporters:
        provider.add_span_processor(
            BatchSpanProcessor(
                _exporter(name, environ),
                max_queue_size=_int(environ, "OTEL_BSP_MAX_QUEUE_SIZE", 2048),
                schedule_delay_millis=_int(environ, "OTEL_BSP_SCHEDULE_DELAY", 5000),
                max_export_batch_size=_int(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512),
                export_timeout_millis=_int(environ, "OTEL_BSP_EXPORT_TIMEOUT", 30000),
            )
        )
    return provider


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    raw = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not raw:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    names = [n.strip() for n in raw.split(",") if n.strip() and n.strip() != "none"]
    for n in names:
        if n not in ("otlp", "console"):
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER={n!r} is not supported; use otlp, console or none"
            )
    return names


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter(out=sys.stderr)
    protocol = _signal(environ, "PROTOCOL") or "http/protobuf"
    if protocol != "http/protobuf":
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: wxgate ships the OTLP/HTTP exporter; "
            "set http/protobuf and point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's port 4318"
        )
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not endpoint:
        base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318")
        endpoint = base.rstrip("/") + "/v1/traces"
    compression = _signal(environ, "COMPRESSION") or "none"
    if compression not in ("gzip", "none"):
        raise TracingConfigError(f"OTEL_EXPORTER_OTLP_COMPRESSION={compression!r}: use gzip or none")
    timeout_ms = _signal(environ, "TIMEOUT")
    return OTLPSpanExporter(
        endpoint=endpoint,
        headers=dict(parse_env_headers(_signal(environ, "HEADERS"), liberal=True)),
        timeout=_float(timeout_ms, "OTEL_EXPORTER_OTLP_TIMEOUT") / 1000 if timeout_ms else 10.0,
        compression=Compression.Gzip if compression == "gzip" else Compression.NoCompression,
        certificate_file=_signal(environ, "CERTIFICATE") or None,
        client_key_file=_signal(environ, "CLIENT_KEY") or None,
        client_certificate_file=_signal(environ, "CLIENT_CERTIFICATE") or None,
    )


def _signal(environ: Mapping[str, str], suffix: str) -> str:
    """The traces-specific variable, else the generic one (OTLP exporter spec)."""
    return (
        environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{suffix}")
        or environ.get(f"OTEL_EXPORTER_OTLP_{suffix}")
        or ""
    ).strip()


def sampler_from_env(environ: Mapping[str, str]) -> sampling.Sampler:
    name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    arg = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    ratio = _float(arg, "OTEL_TRACES_SAMPLER_ARG") if arg else 1.0
    samplers: dict[str, sampling.Sampler] = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "parentbased_always_on": sampling.DEFAULT_ON,
        "parentbased_always_off": sampling.DEFAULT_OFF,
    }
    if name in samplers:
        return samplers[name]
    if name == "traceidratio":
        return sampling.TraceIdRatioBased(ratio)
    if name == "parentbased_traceidratio":
        return sampling.ParentBasedTraceIdRatio(ratio)
    raise TracingConfigError(
        f"OTEL_TRACES_SAMPLER={name!r} is not supported; use one of {', '.join(samplers)}"
    )


def span_limits_from_env(environ: Mapping[str, str]) -> SpanLimits:
    """Attribute value length limits from the injected environment (the SDK would read ``os.environ``)."""
    length = _limit(environ, "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT")
    span_length = _limit(environ, "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT")
    return SpanLimits(
        max_attribute_length=length,
        max_span_attribute_length=span_length if span_length != SpanLimits.UNSET else length,
    )


def _limit(environ: Mapping[str, str], name: str) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return SpanLimits.UNSET  # no limit (the specification's default)
    value = int(_float(raw, name))
    if value < 0:
        raise TracingConfigError(f"{name}={raw!r}: expected a length of 0 or more")
    return value


def resource_from_env(environ: Mapping[str, str]) -> Resource:
    attrs: dict[str, AttributeValue] = {
        service_attributes.SERVICE_NAME: "wxgate",
        service_attributes.SERVICE_VERSION: __version__,
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
    }
    for pair in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attrs[key.strip()] = unquote(value.strip())
    if environ.get("OTEL_SERVICE_NAME", "").strip():
        attrs[service_attributes.SERVICE_NAME] = environ["OTEL_SERVICE_NAME"].strip()
    return Resource(attrs)


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    return int(_float(raw, name)) if raw else default


def _float(raw: str, name: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise TracingConfigError(f"{name}={raw!r} is not a number") from None


# -- the spans ---------------------------------------------------------------------------------------------


def traceparent(span: Span) -> str:
    """The W3C ``traceparent`` naming ``span`` (formatted directly: no carrier dict, no global propagator)."""
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def bounded(value: str) -> str:
    """``value`` cut to :data:`REQUEST_VALUE_LIMIT` characters: for anything a request chose."""
    return value if len(value) <= REQUEST_VALUE_LIMIT else value[:REQUEST_VALUE_LIMIT]


def caller_link(headers: Mapping[str, str]) -> list[Link]:
    """The sender's trace context as a Link when its ``traceparent`` is valid W3C; never a parent."""
    raw = headers.get("traceparent")
    if not raw or len(raw) > _TRACEPARENT_MAX:
        return []
    caller = trace.get_current_span(_PROPAGATOR.extract({"traceparent": raw})).get_span_context()
    return [Link(caller)] if caller.is_valid else []


def method_attributes(method: str) -> dict[str, AttributeValue]:
    if method in KNOWN_METHODS:
        return {http_attributes.HTTP_REQUEST_METHOD: method}
    return {
        http_attributes.HTTP_REQUEST_METHOD: "_OTHER",
        http_attributes.HTTP_REQUEST_METHOD_ORIGINAL: bounded(method),
    }


def outcome_attributes(o: Outcome) -> dict[str, AttributeValue]:
    """``wxgate.*`` attributes from the outcome record (empty fields are left out)."""
    attrs: dict[str, AttributeValue] = {
        "wxgate.route": o.route,
        "wxgate.protocol": o.protocol,
        "wxgate.verdict": o.verdict,
    }
    optional: tuple[tuple[str, str | int], ...] = (
        ("wxgate.reason", o.reason),
        ("wxgate.key_id", o.key_id),
        ("wxgate.dedup.result", o.dedup),
        ("wxgate.dedup.key", o.dedup_key),
        ("wxgate.attempt", o.attempt),
        ("wxgate.upstream.result", o.upstream if o.upstream != "none" else ""),
        ("wxgate.reply_kind", o.reply_kind),
        ("wxgate.normalized", o.normalized),
        ("wxgate.deadline", o.deadline),
        ("wxgate.outbox", o.outbox),
    )
    for key, value in optional:
        if value:
            # key_id comes from a request header (Wechatpay-Serial and the like): bounded like the rest.
            attrs[key] = bounded(value) if isinstance(value, str) else value
    return attrs


class ClientCall:
    """A CLIENT span around one backend call: its ``traceparent`` goes to the backend, the result ends it."""

    def __init__(self, span: Span) -> None:
        self.span = span
        self.traceparent = traceparent(span)

    async def wrap(self, call: Awaitable[UpstreamResult]) -> UpstreamResult:
        try:
            result = await call
        except BaseException as e:  # cancelled at shutdown, or a bug below: the span must still end
            self.span.set_status(Status(StatusCode.ERROR, type(e).__name__))
            self.span.set_attribute(error_attributes.ERROR_TYPE, type(e).__qualname__)
            self.span.end()
            raise
        self.finish(result)
        return result

    def finish(self, result: UpstreamResult) -> None:
        span = self.span
        if span.is_recording():
            span.set_attribute("wxgate.upstream.result", result.kind)
            if result.status:
                span.set_attribute(http_attributes.HTTP_RESPONSE_STATUS_CODE, result.status)
            if not result.ok:
                # Client spans: any 4xx/5xx is an error; so are timeouts and refusals (error.type names which).
                error_type = str(result.status) if result.status else result.kind
                span.set_attribute(error_attributes.ERROR_TYPE, error_type)
                span.set_status(Status(StatusCode.ERROR, result.error or error_type))
        span.end()


class Tracing:
    """The spans wxgate makes, on an injected :class:`TracerProvider`."""

    def __init__(self, provider: trace.TracerProvider) -> None:
        self.tracer = provider.get_tracer(TRACER_NAME, __version__)

    # server side: one span per inbound request --------------------------------------------------------------
    def start_server(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        client_address: str,
        local: tuple[str, int] | None = None,
        scheme: str = "http",
        protocol_version: str = "1.1",
    ) -> Span:
        """The server span, started at request headers: the root of a new trace, sampled by wxgate's sampler.

        A valid W3C ``traceparent`` in ``headers`` (the sender's, or a proxy's in front) becomes a Link, never
        the parent: a sender must not choose the trace id or force sampling. ``local`` is the listening
        socket: in reverse mode the Host header already names the backend."""
        attrs = method_attributes(method)
        attrs[url_attributes.URL_PATH] = bounded(path.split("?", 1)[0])
        attrs[url_attributes.URL_SCHEME] = scheme
        attrs[network_attributes.NETWORK_PROTOCOL_VERSION] = bounded(protocol_version)
        if client_address:
            attrs[client_attributes.CLIENT_ADDRESS] = client_address
        if local is not None:
            attrs[server_attributes.SERVER_ADDRESS] = local[0]
            attrs[server_attributes.SERVER_PORT] = local[1]
        if ua := headers.get("user-agent"):
            attrs[user_agent_attributes.USER_AGENT_ORIGINAL] = bounded(ua)
        name = method if method in KNOWN_METHODS else "HTTP"
        return self.tracer.start_span(
            name, context=_ROOT, kind=SpanKind.SERVER, attributes=attrs, links=caller_link(headers)
        )

    def finish_server(
        self, span: Span, outcome: Outcome, route_path: str | None, status: int, error: str = ""
    ) -> None:
        """End the server span with the outcome: 5xx and transport errors are ERROR, 4xx stays UNSET."""
        if span.is_recording():
            if route_path:
                method = outcome.method if outcome.method in KNOWN_METHODS else "HTTP"
                span.update_name(f"{method} {route_path}")
                span.set_attribute(http_attributes.HTTP_ROUTE, route_path)
            attrs = outcome_attributes(outcome)
            if status:
                attrs[http_attributes.HTTP_RESPONSE_STATUS_CODE] = status
            if error:
                attrs[error_attributes.ERROR_TYPE] = error
                span.set_status(Status(StatusCode.ERROR, error))
            elif status >= 500:
                attrs[error_attributes.ERROR_TYPE] = str(status)
                span.set_status(Status(StatusCode.ERROR))
            span.set_attributes(attrs)
        span.end()

    # the backend call --------------------------------------------------------------------------------------
    def backend_call(self, ex: Exchange, method: str) -> ClientCall:
        """A CLIENT span under the request's server span; sets ``ex.traceparent`` for the backend request."""
        assert ex.route is not None
        parent = trace.set_span_in_context(ex.span) if ex.span is not None else None
        call = ClientCall(self._client_span(method, ex.route.config.path, ex.route.upstream, parent))
        ex.traceparent = call.traceparent
        return call

    def redelivery_call(
        self, method: str, path: str, upstream: str, attempt: int, headers: dict[str, str]
    ) -> ClientCall:
        """A CLIENT span for an outbox redelivery (under the current span); rewrites ``headers['traceparent']``."""
        span = self._client_span(method, path, upstream, None)
        span.set_attribute(http_attributes.HTTP_REQUEST_RESEND_COUNT, attempt)
        call = ClientCall(span)
        headers["traceparent"] = call.traceparent
        return call

    def _client_span(self, method: str, path: str, upstream: str, parent: Context | None) -> Span:
        attrs = method_attributes(method)
        # url.full without the query: it carries signatures, nonces and openids.
        attrs[url_attributes.URL_FULL] = upstream + path
        attrs["url.template"] = path  # a configured, fixed path: low cardinality
        scheme, _, rest = upstream.partition("://")
        host, _, port = rest.split("/", 1)[0].rpartition(":")
        attrs[server_attributes.SERVER_ADDRESS] = host or rest
        attrs[server_attributes.SERVER_PORT] = (
            int(port) if port.isdigit() else (443 if scheme == "https" else 80)
        )
        name = f"{method if method in KNOWN_METHODS else 'HTTP'} {path}"
        return self.tracer.start_span(name, context=parent, kind=SpanKind.CLIENT, attributes=attrs)

    # background work ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def redelivery(self, route: str, origin_traceparent: str | None) -> Iterator[Span]:
        """The current span while one outbox item is redelivered, linked to the trace that first sent it."""
        links = caller_link({"traceparent": origin_traceparent}) if origin_traceparent else []
        with self.tracer.start_as_current_span(
            f"redeliver {route}",
            context=_ROOT,
            kind=SpanKind.INTERNAL,
            links=links,
            attributes={"wxgate.route": route},
        ) as span:
            yield span

    def store_span(self, operation: str, system: str) -> Span | None:
        """A started span for one store call (``system``: sqlite | redis), child of the current span; ``None``
        outside any trace (the outbox poll, readiness probes: those would be a root trace every half second).

        Not made the current span (nothing runs under a store call): attaching and detaching a context added a
        third to what a store span costs, and a request makes up to four of them. The caller ends it."""
        if not trace.get_current_span().is_recording():
            return None
        attrs: dict[str, AttributeValue] = {
            db_attributes.DB_OPERATION_NAME: operation,
            db_attributes.DB_SYSTEM_NAME: system,
        }
        return self.tracer.start_span(f"store {operation}", kind=SpanKind.CLIENT, attributes=attrs)

    @contextlib.contextmanager
    def store_call(self, operation: str, system: str) -> Iterator[Span | None]:
        """:meth:`store_span` as a context manager that ends the span."""
        span = self.store_span(operation, system)
        try:
            yield span
        finally:
            if span is not None:
                span.end()


# A context with no parent span: redeliveries start new traces.
_ROOT = trace.set_span_in_context(trace.INVALID_SPAN)
