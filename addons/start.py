"""Start: the first addon of the chain creates each request's :class:`~proxy.pipeline.exchange.Exchange`.

Every later addon reads it (:func:`~proxy.pipeline.exchange.exchange`) and none creates one, so a request's
state has one visible beginning; the metrics addon marks its end (``finished``) when the answer has gone out.
"""

from __future__ import annotations

from mitmproxy import http

from proxy.pipeline.exchange import ensure_exchange


class ExchangeStart:
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        ex = ensure_exchange(flow)
        ex.outcome.method = flow.request.method[:32]  # a token of any length to mitmproxy; bounded in the log
