"""Per-request state shared by the addon chain, and the outcome record every request ends with.

The addons keep one :class:`Exchange` in ``flow.metadata["wxgate"]``. Its :class:`Outcome` is the single source
of truth that metrics, spans and the JSON log line all read, so no addon re-derives what another decided.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mitmproxy import http

    from proxy.protocols.base import Inbound, Reply, Verified
    from proxy.routes import RouteRuntime

METADATA_KEY = "wxgate"


@dataclass(slots=True)
class Outcome:
    """What happened to one request; every field is a closed set or a number (safe to label and log)."""

    route: str = "unmatched"
    protocol: str = "none"
    method: str = ""
    verdict: str = "pending"  # verified | rejected | direct | passthrough | denied | admitted
    reason: str = ""  # rejection / failure reason code
    key_id: str = ""  # which key verified
    dedup: str = ""  # new | duplicate_done | duplicate_inflight | store_error | disabled | no_key
    dedup_key: str = ""  # hash, never the raw key
    attempt: int = 0
    upstream: str = "none"  # 2xx | 3xx | 4xx | 5xx | timeout | refused | error | none
    upstream_status: int = 0
    upstream_seconds: float = 0.0
    reply_kind: str = ""  # echo | ack | passive | failure | reject | passthrough
    normalized: str = ""  # why the backend's answer was replaced
    deadline: str = ""  # the policy that answered at the deadline (ack | relay | fail) if one did
    outbox: str = ""  # queued | failed when the notification went to the outbox
    user: str = ""  # hash of the sender-side user id (openid / FromUserName), never the id itself
    status: int = 0
    duration_seconds: float = 0.0

    def as_log(self) -> dict[str, Any]:
        """The fields that are set, in declaration order (floats to the microsecond)."""
        # Not dataclasses.asdict: it deep-copies every value and took a third of the access line's cost.
        out: dict[str, Any] = {}
        for name in _OUTCOME_FIELDS:
            v = getattr(self, name)
            if v not in ("", 0, 0.0):
                out[name] = round(v, 6) if isinstance(v, float) else v
        return out


_OUTCOME_FIELDS = tuple(f.name for f in fields(Outcome))


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
