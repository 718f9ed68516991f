"""The spans wxgate makes, on a provider built from the ``OTEL_*`` environment by :mod:`.otel_env` (tracing is
off unless that environment turns it on; then no :class:`Tracing` exists and no span is made).

Spans (attribute keys from ``opentelemetry.semconv`` where one exists, ``wxgate.*`` otherwise):

- SERVER ``{METHOD} {http.route}`` per inbound request (``{METHOD}`` when no route matched); 5xx is ERROR, 4xx
  stays UNSET; ``wxgate.route/protocol/verdict/reason/key_id/dedup.result/dedup.key/attempt/upstream.result/
  reply_kind/normalized/deadline/outbox/tenant`` (and ``wxgate.tenant.verified``) from the outcome record. Retries of one notification share
  ``wxgate.dedup.key`` (the key's hash), which is how a trace backend finds them together.
- CLIENT ``{METHOD} {route path}`` per backend call, child of the server span; its ``traceparent`` is what the
  backend receives. Any non-2xx answer, timeout or refusal is ERROR with ``error.type``.
- INTERNAL ``redeliver {route}`` per outbox redelivery, linked to the original backend call's trace, with the
  CLIENT backend call (``http.request.resend_count``) and store calls as children.
- CLIENT ``store {operation}`` per store call made inside a traced request or redelivery that failed, was cut
  short, or took at least ``store_span_min`` seconds (``WXGATE_STORE_SPAN_MIN_MS``, default 50 ms; 0
  records every call) (``db.system.name``, ``db.operation.name``). A store call on loopback Redis or SQLite takes
  50-150 µs and a span for it cost a fifth of what tracing adds to a request: the fast ones are in
  ``wxgate_store_operation_duration_seconds`` only, and the server span carries ``wxgate.store.calls`` and
  ``wxgate.store.ms`` (their count and summed time) so its duration stays explained. Store calls outside any
  trace (the outbox poll) make no spans.

Every request starts a new trace at this edge: a sender's ``traceparent`` neither chooses the trace id (which
reaches exemplars, logs and the backend) nor forces sampling; a valid one is kept only as a Link on the server
span. Values taken from the request (user agent, path, method, header-derived outcome fields) are cut to
:data:`REQUEST_VALUE_LIMIT` characters; ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`` /
``OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT`` cap every attribute on top of that.

Query strings are never recorded: they carry signatures, nonces and (for Official Accounts) the user's openid.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv.attributes import (
    client_attributes,
    db_attributes,
    error_attributes,
    http_attributes,
    network_attributes,
    server_attributes,
    url_attributes,
    user_agent_attributes,
)
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from proxy import __version__
from proxy.upstream.client import UpstreamResult

if TYPE_CHECKING:
    from proxy.observability.outcome import Outcome

TRACER_NAME = "wxgate"
# Semconv: a method outside the well-known set is reported as _OTHER (span name "HTTP").
KNOWN_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"})
# Stateless; W3C trace context only, never the globally configured propagator.
_PROPAGATOR = TraceContextTextMapPropagator()
# The longest value taken from a request that a span keeps (user agent, path, method, header-derived fields).
REQUEST_VALUE_LIMIT = 256
# A sender's traceparent longer than this is not parsed at all (version 00 is 55 characters).
_TRACEPARENT_MAX = 512


def hex_ids(span: Span | None) -> tuple[str, str]:
    """``(trace_id, span_id)`` of ``span`` as W3C trace context writes them (32 and 16 lowercase hex digits), the
    form logs, exemplars, the backend's ``traceparent`` and trace backends share; ``("", "")`` for no span."""
    ctx = span.get_span_context() if span is not None else None
    if ctx is None or not ctx.is_valid:
        return "", ""
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def traceparent(span: Span) -> str:
    """The W3C ``traceparent`` naming ``span`` (formatted directly: no carrier dict, no global propagator)."""
    trace_id, span_id = hex_ids(span)
    return f"00-{trace_id}-{span_id}-{int(span.get_span_context().trace_flags):02x}"


def bounded(value: str) -> str:
    """``value`` cut to :data:`REQUEST_VALUE_LIMIT` characters: for anything a request chose. Bytes that were not
    UTF-8 (mitmproxy keeps them as lone surrogates) become ``?``: an exporter cannot encode a surrogate, and
    would drop the attribute and log a traceback for every such request."""
    if len(value) > REQUEST_VALUE_LIMIT:
        value = value[:REQUEST_VALUE_LIMIT]
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


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
        ("wxgate.tenant", o.tenant),
    )
    for key, value in optional:
        if value:
            # key_id comes from a request header (Wechatpay-Serial and the like): bounded like the rest.
            attrs[key] = bounded(value) if isinstance(value, str) else value
    if o.tenant_verified:
        attrs["wxgate.tenant.verified"] = o.tenant_verified == "true"
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


# The default of ``store_span_min``: a store call this slow (seconds) gets a span of its own. A store call's time
# is what the request waited: under load it includes the event loop's queue, several milliseconds at 1,000
# req/s; 50 ms is where Elastic APM's span compression stops treating an exit span as fast.
STORE_SPAN_MIN = 0.05


class Tracing:
    """The spans wxgate makes, on an injected :class:`TracerProvider`.

    ``store_span_min``: the shortest successful store call that gets a span (0: every call)."""

    def __init__(self, provider: trace.TracerProvider, store_span_min: float = 0.0) -> None:
        self.tracer = provider.get_tracer(TRACER_NAME, __version__)
        self.store_span_min = store_span_min
        # The request path's spans (server, backend call, slow store calls) are made by _start, not by the SDK's
        # Tracer.start_span: same sampler, ids, resource, scope, limits and span processors, a third of the cost.
        tracer = self.tracer
        self._lean = False
        if isinstance(tracer, sdk_trace.Tracer):
            self._lean = True
            self._sampler = tracer.sampler
            self._ids = tracer.id_generator
            self._random_ids = tracer.id_generator.is_trace_id_random()
            self._processor = tracer.span_processor
            self._resource = tracer.resource
            self._scope = InstrumentationScope(TRACER_NAME, __version__)
            limits = getattr(tracer, "_span_limits", None)
            self._max_length = _limit(limits, "max_span_attribute_length")
            self._max_attributes = _limit(limits, "max_span_attributes")  # OTEL_*ATTRIBUTE_COUNT_LIMIT
            self._max_links = _limit(limits, "max_links")  # OTEL_SPAN_LINK_COUNT_LIMIT

    def _start(
        self,
        name: str,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
        parent: Context | None,
        links: Sequence[Link] = (),
        start_time: int | None = None,
    ) -> Span:
        """A span as the SDK's ``Tracer.start_span`` makes it (``parent``: a context, ``None`` for the current
        one), recorded by :class:`LeanSpan` when sampled."""
        if not self._lean:
            return self.tracer.start_span(
                name, context=parent, kind=kind, attributes=attributes, links=links, start_time=start_time
            )
        parent_ctx = trace.get_current_span(parent).get_span_context()
        if parent_ctx.is_valid:
            trace_id = parent_ctx.trace_id
            random_id = parent_ctx.trace_flags.random_trace_id
            parent_span: SpanContext | None = parent_ctx
        else:
            trace_id = self._ids.generate_trace_id()
            random_id = self._random_ids
            parent_span = None
        sampled = self._sampler.should_sample(parent, trace_id, name, kind, attributes, links)
        flags = TraceFlags.SAMPLED if sampled.decision is Decision.RECORD_AND_SAMPLE else TraceFlags.DEFAULT
        if random_id:
            flags |= TraceFlags.RANDOM_TRACE_ID
        context = SpanContext(
            trace_id,
            self._ids.generate_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(flags),
            trace_state=sampled.trace_state,
        )
        if sampled.decision is Decision.DROP:
            return trace.NonRecordingSpan(context)
        attrs = dict(sampled.attributes) if sampled.attributes else {}
        if self._max_length is not None:
            attrs = {k: _cut(v, self._max_length) for k, v in attrs.items()}
        kept: Sequence[Link] = tuple(links)
        if self._max_links is not None and len(kept) > self._max_links:
            kept = BoundedList.from_seq(self._max_links, kept)  # the SDK keeps the last ones
        return LeanSpan(self, name, context, parent_span, kind, attrs, kept, start_time or time.time_ns())

    def _emit(self, span: LeanSpan) -> None:
        attributes: Mapping[str, AttributeValue] = span.attributes
        if self._max_attributes is not None and len(attributes) > self._max_attributes:
            # As the SDK's span: the oldest attributes give way, and the exporter reports how many were dropped.
            attributes = BoundedAttributes(self._max_attributes, attributes, immutable=False)
        self._processor.on_end(
            ReadableSpan(
                name=span.name,
                context=span.context,
                parent=span.parent,
                resource=self._resource,
                attributes=attributes,
                links=span.links,
                kind=span.kind,
                status=span.status,
                start_time=span.start_time,
                end_time=span.end_time,
                instrumentation_scope=self._scope,
            )
        )

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
        return self._start(name, SpanKind.SERVER, attrs, _ROOT, caller_link(headers))

    def finish_server(
        self, span: Span, outcome: Outcome, route_path: str | None, status: int, error: str = ""
    ) -> None:
        """End the server span with the outcome: 5xx and transport errors are ERROR, 4xx stays UNSET."""
        if span.is_recording():
            if route_path:
                method = outcome.method if outcome.method in KNOWN_METHODS else "HTTP"
                span.update_name(f"{method} {route_path}")
                span.set_attribute(http_attributes.HTTP_ROUTE, route_path)
            attrs = outcome_attributes(outcome) | store_totals(span)
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
    def backend_call(self, server_span: Span | None, method: str, path: str, upstream: str) -> ClientCall:
        """A CLIENT span under the request's server span; its ``traceparent`` goes to the backend."""
        parent = trace.set_span_in_context(server_span) if server_span is not None else None
        return ClientCall(self._client_span(method, path, upstream, parent))

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
        return self._start(name, SpanKind.CLIENT, attrs, parent)

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
        The caller ends it. Every call it is used for gets a span (:meth:`store_call`); the request path uses
        :meth:`store_timer`, which keeps only the slow and failed ones."""
        if not trace.get_current_span().is_recording():
            return None
        return self.tracer.start_span(
            f"store {operation}", kind=SpanKind.CLIENT, attributes=_store_attrs(operation, system)
        )

    def store_timer(self) -> StoreTimer | None:
        """A timer for one store call inside the current trace, ``None`` outside any (see :class:`StoreTimer`)."""
        span = trace.get_current_span()
        if not span.is_recording():
            return None
        return StoreTimer(self, span)

    @contextlib.contextmanager
    def store_call(self, operation: str, system: str) -> Iterator[Span | None]:
        """:meth:`store_span` as a context manager that ends the span."""
        span = self.store_span(operation, system)
        try:
            yield span
        finally:
            if span is not None:
                span.end()


def _store_attrs(operation: str, system: str) -> dict[str, AttributeValue]:
    return {db_attributes.DB_OPERATION_NAME: operation, db_attributes.DB_SYSTEM_NAME: system}


# The request span's store totals [calls, seconds], kept on the span object until it ends (set_attributes
# takes the span's lock each time; finish_server writes them once, with the outcome).
_STORE_TOTALS = "_store_totals"  # a slot of LeanSpan


def store_totals(span: Span) -> dict[str, AttributeValue]:
    """``wxgate.store.calls`` and ``wxgate.store.ms`` of the store calls made under ``span`` (none: empty)."""
    totals: list[float] | None = getattr(span, _STORE_TOTALS, None)
    if totals is None:
        return {}
    return {"wxgate.store.calls": int(totals[0]), "wxgate.store.ms": round(totals[1] * 1000, 3)}


class StoreTimer:
    """One store call of a traced request: its time is added to the request's span (``wxgate.store.calls``,
    ``wxgate.store.ms``), and a ``store {operation}`` span is made after the fact, with the call's real start
    and end, only when the call failed, was cut short, or took ``store_span_min`` or longer.

    Not made the current span (nothing runs under a store call), and nothing is made for the fast ones:
    nothing is known about a call's length before it ends."""

    __slots__ = ("parent", "start_ns", "tracing")

    def __init__(self, tracing: Tracing, parent: Span) -> None:
        self.tracing = tracing
        self.parent = parent
        self.start_ns = time.time_ns()

    def end(
        self, operation: str, system: str, seconds: float, error: str = "", cancelled: bool = False
    ) -> None:
        parent = self.parent
        if parent.is_recording():  # not when the request was answered first (a settle after the deadline)
            totals: list[float] | None = getattr(parent, _STORE_TOTALS, None)
            if totals is None:
                with contextlib.suppress(AttributeError):  # a span class with __slots__: no totals
                    setattr(parent, _STORE_TOTALS, [1, seconds])
            else:
                totals[0] += 1
                totals[1] += seconds
        if not error and not cancelled and seconds < self.tracing.store_span_min:
            return
        span = self.tracing._start(
            f"store {operation}",
            SpanKind.CLIENT,
            _store_attrs(operation, system),
            trace.set_span_in_context(parent),
            start_time=self.start_ns,
        )
        if error:
            span.set_attribute(error_attributes.ERROR_TYPE, error)
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=self.start_ns + int(seconds * 1e9))


def _limit(limits: object, name: str) -> int | None:
    value = getattr(limits, name, None)
    return value if isinstance(value, int) and value >= 0 else None


def _cut(value: AttributeValue, limit: int) -> AttributeValue:
    return value[:limit] if isinstance(value, str) and len(value) > limit else value


class LeanSpan(Span):
    """A sampled span of the request path, recorded in plain attributes and handed to the provider's span
    processors as a :class:`ReadableSpan` when it ends, like the SDK's own span.

    What the SDK's span does on top, and why this one does not: it validates every attribute value by type
    (wxgate's values are typed str/int/float/bool by construction: mypy --strict), guards each change with a
    lock (a request's spans live on the event loop thread only), calls ``on_start`` on the processors (the
    batch and simple processors ignore it), and keeps events (wxgate records none). Those took two thirds of a
    span's cost: about 20 µs of the 30 a span took, twice per request."""

    __slots__ = (
        "_store_totals",
        "_tracing",
        "attributes",
        "context",
        "end_time",
        "kind",
        "links",
        "name",
        "parent",
        "start_time",
        "status",
    )

    def __init__(
        self,
        tracing: Tracing,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
        links: Sequence[Link],
        start_time: int,
    ) -> None:
        self._tracing = tracing
        self.name = name
        self.context = context
        self.parent = parent
        self.kind = kind
        self.attributes = attributes
        self.links = links
        self.start_time = start_time
        self.end_time: int | None = None
        self.status = _UNSET

    def get_span_context(self) -> SpanContext:
        return self.context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if self.end_time is None:
            limit = self._tracing._max_length
            if limit is None:
                self.attributes.update(attributes)
            else:
                self.attributes.update({k: _cut(v, limit) for k, v in attributes.items()})

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self.end_time is None:
            limit = self._tracing._max_length
            self.attributes[key] = value if limit is None else _cut(value, limit)

    def add_event(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None, timestamp: int | None = None
    ) -> None:
        return None  # wxgate records no span events

    def update_name(self, name: str) -> None:
        if self.end_time is None:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self.end_time is None:
            self.status = status if isinstance(status, Status) else Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Mapping[str, AttributeValue] | None = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        self.set_attribute(error_attributes.ERROR_TYPE, type(exception).__qualname__)

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is None:
            self.end_time = end_time or time.time_ns()
            self._tracing._emit(self)


_UNSET = Status(StatusCode.UNSET)


# A context with no parent span: redeliveries start new traces.
_ROOT = trace.set_span_in_context(trace.INVALID_SPAN)
