"""Metrics: finish each request's outcome record, count it, and write its JSON log line.

Second in the chain so it sees every request, including those answered by mitmproxy itself (errors). The
request-duration observation carries the request's trace id as an exemplar when the request is traced.
"""

from __future__ import annotations

import time

from mitmproxy import http

from proxy.observability.logs import UserRef, log_outcome
from proxy.observability.metrics import Metrics, exemplar_of
from proxy.observability.tracing import hex_ids
from proxy.pipeline.exchange import answered_status, exchange
from proxy.reload import Loaded


class MetricsAddon:
    def __init__(self, metrics: Metrics, user_ref: UserRef | None = None) -> None:
        self.metrics = metrics
        self.user_ref = user_ref if user_ref is not None else UserRef()

    def reconfigure(self, loaded: Loaded) -> None:
        """A reloaded ``log_hash_key`` re-keys the user hash from the next request on."""
        self.user_ref = self.user_ref.rekeyed(loaded.config.log_hash_key)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        ex = exchange(flow)
        if ex is not None:
            ex.counted = True
            self.metrics.in_flight.inc()

    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def _finish(self, flow: http.HTTPFlow) -> None:
        ex = exchange(flow)
        if ex is None or ex.finished:
            return
        ex.finished = True
        if ex.counted:  # not when a hook failed before this addon counted it in
            self.metrics.in_flight.dec()
        o = ex.outcome
        o.status = answered_status(flow)
        o.duration_seconds = time.perf_counter() - ex.started
        if o.verdict == "passthrough" and flow.error is not None:
            o.reason = "passthrough_error"
        if ex.verified is not None:
            o.user = self.user_ref(ex.verified.message)
        self.metrics.observe(o, exemplar_of(ex.span))
        log_outcome(o, *hex_ids(ex.span))
