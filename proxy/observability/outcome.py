"""The record every request ends with: what happened to it, in closed vocabularies.

:class:`Outcome` is the single source of truth that metrics, spans and the JSON log line all read, so no addon
re-derives what another decided. Its vocabulary fields are ``Literal`` types, and the metric label sets are
derived from them (:mod:`proxy.observability.metrics`), so a new value cannot reach a label the metrics do not
know.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


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
