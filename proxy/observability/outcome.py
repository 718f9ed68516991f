"""The record every request ends with: what happened to it, in closed vocabularies.

:class:`Outcome` is the single source of truth that metrics, spans and the JSON log line all read, so no addon
re-derives what another decided. Its vocabulary fields are ``Literal`` types, and the metric label sets are
derived from them (:mod:`proxy.observability.metrics`), so a new value cannot reach a label the metrics do not
know.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from proxy.config.schema import Policy
from proxy.upstream.client import UpstreamKind

Verdict = Literal["pending", "verified", "rejected", "direct", "passthrough", "denied", "admitted"]
DedupResult = Literal["new", "duplicate_done", "duplicate_inflight", "store_error", "no_key"]
OutboxState = Literal["queued", "failed", "unacked"]
ReplyKind = Literal["echo", "ack", "passive", "failure", "reject", "passthrough"]
UpstreamResultLabel = UpstreamKind | Literal["none"]

# The label values a metric can carry, drawn from the types above (never written out a second time).
DEDUP_RESULTS: tuple[DedupResult, ...] = get_args(DedupResult)
POLICIES: tuple[Policy, ...] = get_args(Policy)
UPSTREAM_RESULTS: tuple[UpstreamKind, ...] = get_args(UpstreamKind)


@dataclass(slots=True)
class Outcome:
    """What happened to one request; every field is a closed set or a number (safe to label and log)."""

    route: str = "unmatched"
    protocol: str = "none"
    method: str = ""
    verdict: Verdict = "pending"
    reason: str = ""  # rejection / failure reason code (a closed set per protocol: docs/operations.md)
    key_id: str = ""  # which key verified
    dedup: DedupResult | Literal[""] = ""
    dedup_key: str = ""  # hash, never the raw key
    attempt: int = 0
    upstream: UpstreamResultLabel = "none"
    upstream_status: int = 0
    upstream_seconds: float = 0.0
    reply_kind: ReplyKind | Literal[""] = ""
    normalized: str = ""  # why the backend's answer was replaced
    deadline: Policy | Literal[""] = ""  # the policy that answered at the deadline, if one did
    outbox: OutboxState | Literal[""] = ""  # the notification went to the outbox (or could not)
    user: str = ""  # hash of the sender-side user id (openid / FromUserName), never the id itself
    # the account a multi-tenant route received the message for (an Open Platform authorizer's appid), and
    # whether it was bound to the authenticated message (as the backend's header says it); spans and logs only,
    # never a metric label (thousands of tenants)
    tenant: str = ""
    tenant_verified: Literal["", "true", "false"] = ""
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
