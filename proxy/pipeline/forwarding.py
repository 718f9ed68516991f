"""The backend request wxgate builds for a verified callback, and the reply decided from the backend's answer.

The backend receives the request as the sender made it minus what wxgate consumed (decrypted body and dropped
query parameters when ``decrypt_for_backend`` is on), plus trusted ``X-Wxgate-*`` headers and wxgate's own ``traceparent`` (the sender's, and its ``tracestate``,
are dropped).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from mitmproxy import http

from proxy.pipeline.exchange import Exchange
from proxy.protocols.base import Reply
from proxy.upstream.client import UpstreamResult

# Hop-by-hop and framing headers are the pool's business, not the sender's.
_DROP = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
        # The sender's trace context is not passed on: the backend gets wxgate's traceparent (tracing on) or none.
        "traceparent",
        "tracestate",
    }
)


def query_items(path: str) -> list[tuple[str, str]]:
    """Every ``(name, value)`` of a request target's query, in order, decoded as mitmproxy's ``Request.query``
    decodes them; from the target itself, since ``Request.query`` rebuilds and re-parses the whole URL on
    every access."""
    query = path.partition("#")[0].partition("?")[2]
    return parse_qsl(query, keep_blank_values=True, errors="surrogateescape") if query else []


def request_query(flow: http.HTTPFlow, ex: Exchange) -> list[tuple[str, str]]:
    """:func:`query_items` of the flow's target, parsed once per request (admission, verify and forward read it)."""
    if ex.query is None:
        ex.query = query_items(flow.request.path)
    return ex.query


def backend_request(ex: Exchange, query: list[tuple[str, str]]) -> tuple[str, dict[str, str], bytes]:
    """``(url, headers, body)`` for the backend call."""
    assert ex.route is not None and ex.inbound is not None and ex.verified is not None
    verified = ex.verified
    kept = [(k, v) for k, v in query if k not in verified.drop_query]
    url = ex.route.upstream + ex.inbound.path + (("?" + urlencode(kept)) if kept else "")
    headers = {k: v for k, v in ex.inbound.headers.items() if k not in _DROP}
    headers["x-wxgate-verified"] = "1"
    headers["x-wxgate-protocol"] = ex.route.protocol_name
    headers["x-wxgate-route"] = ex.route.name
    if ex.outcome.dedup_key:
        headers["x-wxgate-dedup-key"] = ex.outcome.dedup_key
    if ex.outcome.attempt:
        headers["x-wxgate-attempt"] = str(ex.outcome.attempt)
    if ex.traceparent:
        headers["traceparent"] = ex.traceparent
    body = verified.backend_body if verified.backend_body is not None else ex.inbound.body
    return url, headers, body


def is_failure(ex: Exchange, result: UpstreamResult) -> bool:
    """5xx, timeouts, refusals, non-2xx and protocol-level failures (e.g. Pay's FAIL XML) all count as failed."""
    if not result.ok:
        return True
    assert ex.route is not None
    return ex.route.protocol.is_backend_failure(result.status, result.content_type, result.body)


def success_reply(ex: Exchange, result: UpstreamResult) -> Reply:
    assert ex.route is not None and ex.verified is not None
    return ex.route.protocol.normalize(result.status, result.content_type, result.body, ex.verified)
