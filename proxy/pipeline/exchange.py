"""Per-request state shared by the addon chain, and the outcome record every request ends with.

The addons keep one :class:`Exchange` in ``flow.metadata["wxgate"]``. Its :class:`Outcome` is the single source
of truth that metrics, spans and the JSON log line all read, so no addon re-derives what another decided.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from proxy.observability.outcome import Outcome

if TYPE_CHECKING:
    from mitmproxy import http

    from proxy.pipeline.routes import RouteRuntime
    from proxy.protocols.base import Inbound, Reply, Verified

METADATA_KEY = "wxgate"


@dataclass(slots=True)
class Exchange:
    """Everything the chain knows about one request."""

    started: float = field(default_factory=time.perf_counter)
    outcome: Outcome = field(default_factory=Outcome)
    route: RouteRuntime | None = None
    inbound: Inbound | None = None
    verified: Verified | None = None
    reply: Reply | None = None  # plaintext reply chosen by the chain (sealed by envelope on the way out)
    dedup_token: str | None = None
    dedup_key_raw: str | None = None  # the hashed key as stored
    outbox_id: str | None = None
    repeat: bool = False  # an exact repeat of a signed request seen before (a retry or a replay)
    query: list[tuple[str, str]] | None = None  # the target's query items, parsed once (request_query)
    replay: Replay | None = None  # the replay-cache check verify left to the dedup claim (one store call)
    traceparent: str | None = None
    span: Any = None
    counted: bool = False  # counted in the in-flight gauge (by the metrics addon)
    finished: bool = False


@dataclass(frozen=True, slots=True)
class Replay:
    """A verified request's replay-cache entry: its signed values (hashed, with the route) and body hash."""

    signed: str
    body: str
    ttl: float


def exchange(flow: http.HTTPFlow) -> Exchange | None:
    ex = flow.metadata.get(METADATA_KEY)
    return ex if isinstance(ex, Exchange) else None


def answered_status(flow: http.HTTPFlow) -> int:
    """The status the sender got: mitmproxy answers its own errors (413 over ``body_size_limit``, 502 when a
    passthrough upstream is unreachable); 0 when the connection failed after the answer started."""
    if flow.error is None:
        return flow.response.status_code if flow.response else 0
    if "body_size_limit" in flow.error.msg:
        return 413
    return 502 if flow.response is None else 0


def ensure_exchange(flow: http.HTTPFlow) -> Exchange:
    """The flow's exchange, created by whichever addon sees the request first."""
    ex = flow.metadata.get(METADATA_KEY)
    if not isinstance(ex, Exchange):
        ex = flow.metadata[METADATA_KEY] = Exchange()
    return ex
