"""Metrics: finish each request's outcome record, count it, and write its JSON log line.

Second in the chain so it sees every request, including those answered by mitmproxy itself (errors).
"""

from __future__ import annotations

import time

from mitmproxy import http

from proxy.exchange import ensure_exchange, exchange
from proxy.logs import log_outcome
from proxy.metrics import Metrics


class MetricsAddon:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        ensure_exchange(flow)
        self.metrics.in_flight.inc()

    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow, flow.response.status_code if flow.response else 0)

    def error(self, flow: http.HTTPFlow) -> None:
        # mitmproxy answers errors itself (502 upstream unreachable in passthrough, 413 body_size_limit)
        code = 0
        if flow.error is not None and "body_size_limit" in flow.error.msg:
            code = 413
        elif flow.response is None:
            code = 502
        self._finish(flow, code)

    def _finish(self, flow: http.HTTPFlow, code: int) -> None:
        ex = exchange(flow)
        if ex is None or ex.finished:
            return
        ex.finished = True
        self.metrics.in_flight.dec()
        o = ex.outcome
        o.status = code
        o.duration_seconds = time.perf_counter() - ex.started
        if o.verdict == "passthrough" and flow.error is not None:
            o.reason = "passthrough_error"
        self.metrics.observe(o)
        trace_id, span_id = ("", "")
        if ex.span is not None:
            ctx = ex.span.get_span_context()
            trace_id, span_id = f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
        log_outcome(o, trace_id, span_id)
