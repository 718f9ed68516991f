"""Tracing: one SERVER span per request, from its headers to its answer, with attributes from the outcome.

First in the chain. The span goes on ``ex.span`` (the JSON log line and the exemplars read its ids) and is made
the current span at the start of every hook: mitmproxy runs each hook event in its own task and calls the
addons in chain order within it, so the later addons' store calls and the backend call they spawn become its
children, and the context dies with the hook's task (nothing leaks to the next flow on the connection).

Only added to the chain when tracing is configured (``proxy.observability.otel_env.provider_from_env``): when it is off, no
hook of this addon runs at all.
"""

from __future__ import annotations

from mitmproxy import http
from opentelemetry import context, trace

from proxy.observability.tracing import Tracing
from proxy.pipeline.exchange import answered_status, exchange


def _enter(span: trace.Span) -> None:
    # Not detached on purpose: the context belongs to this hook's task and ends with it.
    context.attach(trace.set_span_in_context(span))


class TracingAddon:
    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        ex = exchange(flow)
        if ex is None:
            return
        req = flow.request
        conn = flow.client_conn
        ex.span = self.tracing.start_server(
            req.method,
            req.path,
            req.headers,  # case-insensitive: "traceparent", "user-agent"
            conn.peername[0] if conn.peername else "",
            (conn.sockname[0], conn.sockname[1]) if conn.sockname else None,
            req.scheme,
            req.http_version.removeprefix("HTTP/"),
        )
        _enter(ex.span)

    def request(self, flow: http.HTTPFlow) -> None:
        ex = exchange(flow)
        if ex is not None and ex.span is not None:
            _enter(ex.span)

    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def _finish(self, flow: http.HTTPFlow) -> None:
        ex = exchange(flow)
        if ex is None or ex.span is None or not ex.span.is_recording():
            return  # not sampled, or already ended (an error after the response)
        _enter(ex.span)
        status = answered_status(flow)
        # No status at all: the connection failed before an answer went out.
        error = "connection_error" if flow.error is not None and not status else ""
        route_path = ex.route.config.path if ex.route is not None else None
        self.tracing.finish_server(ex.span, ex.outcome, route_path, status, error)
