"""The backend request wxgate builds for a verified callback (what the backend's answer becomes is
:mod:`proxy.pipeline.backend_leg`'s).

The backend receives the request as the sender made it minus what wxgate consumed (decrypted body and dropped
query parameters when ``decrypt_for_backend`` is on), plus trusted ``X-Wxgate-*`` headers and wxgate's own ``traceparent`` (the sender's, and its ``tracestate``,
are dropped).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlencode

if TYPE_CHECKING:
    from proxy.pipeline.exchange import Authenticated

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


def backend_request(ex: Authenticated, query: list[tuple[str, str]]) -> tuple[str, dict[str, str], bytes]:
    """``(url, headers, body)`` for the backend call."""
    verified = ex.verified
    kept = [(k, v) for k, v in query if k not in verified.drop_query]
    url = ex.route.upstream + ex.inbound.path + (("?" + urlencode(kept)) if kept else "")
    headers = {k: v for k, v in ex.inbound.headers.items() if k not in _DROP}
    headers["x-wxgate-verified"] = "1"
    headers["x-wxgate-protocol"] = ex.route.protocol_name
    headers["x-wxgate-route"] = ex.route.name
    # the path's appid on an Open Platform message route: not signed, so said to be verified only when bound
    if verified.tenant is not None:
        headers["x-wxgate-authorizer-appid"] = verified.tenant
        headers["x-wxgate-authorizer-verified"] = "true" if verified.tenant_verified else "false"
    if ex.outcome.dedup_key:
        headers["x-wxgate-dedup-key"] = ex.outcome.dedup_key
    if ex.outcome.attempt:
        headers["x-wxgate-attempt"] = str(ex.outcome.attempt)
    if ex.traceparent:
        headers["traceparent"] = ex.traceparent
    body = verified.backend_body if verified.backend_body is not None else ex.inbound.body
    return url, headers, body
