"""Rejection budget: a source that keeps failing verification is answered 429 without verification work.

Between admission (which sets the caller's address, ``trusted_proxies``-aware) and verify. While a source is
blocked its requests on any route are refused here with reason ``rejection_budget`` (counted in
``wxgate_verifications_total{result="rejected", reason="rejection_budget"}``); when the answer of a verified
attempt is sent, the ledger learns whether it passed or failed (:mod:`proxy.pipeline.rejection_budget`).
Owns ``rejection_budget`` (off when unset); a reload starts a fresh ledger, which unblocks every source.

A source inside the route's ``allow_cidrs`` is never blocked, and its failures are not counted: those are the
sender's own addresses (WeChat's callback ranges), which also carry pushes WeChat makes for *other* accounts to
this URL (a ``notify_url`` anyone can put in their own Pay orders, another account's console check). Blocking
them would answer the route's genuine pushes 429.
"""

from __future__ import annotations

import ipaddress

from mitmproxy import http

from proxy.config import Config
from proxy.observability.metrics import PROBE_REASONS
from proxy.pipeline.exchange import exchange
from proxy.pipeline.rejection_budget import RejectionLedger
from proxy.pipeline.replies import reject
from proxy.reload import Loaded

REASON = "rejection_budget"
# Rejections that say nothing about the source: WeChat Pay's own deliberate bad signatures, wxgate's own errors.
_NOT_COUNTED = frozenset({REASON, "verify_error", *PROBE_REASONS})


def ledger_for(config: Config) -> RejectionLedger | None:
    return RejectionLedger(config.rejection_budget) if config.rejection_budget is not None else None


class RejectionBudget:
    def __init__(self, ledger: RejectionLedger | None) -> None:
        self.ledger = ledger

    def reconfigure(self, loaded: Loaded) -> None:
        self.ledger = ledger_for(loaded.config)

    def blocked_sources(self) -> int:
        return self.ledger.blocked_sources() if self.ledger is not None else 0

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live or self.ledger is None:
            return
        ex = exchange(flow)
        if ex is None or ex.route is None or not ex.client:
            return
        if self.ledger.blocked(ex.client) and not _senders_own(ex.route.config.allow_cidrs, ex.client):
            reject(flow, ex, REASON, 429)

    def response(self, flow: http.HTTPFlow) -> None:
        ex = exchange(flow)
        if self.ledger is None or ex is None or ex.inbound is None or not ex.client:
            return  # verification never ran (no route, refused by admission or by the budget itself)
        verdict = ex.outcome.verdict
        if verdict in ("verified", "direct"):
            self.ledger.passed(ex.client)
        elif verdict != "rejected" or ex.outcome.reason in _NOT_COUNTED:
            return
        elif ex.route is None or not _senders_own(ex.route.config.allow_cidrs, ex.client):
            self.ledger.failed(ex.client)


def _senders_own(allow: list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None, client: str) -> bool:
    """Whether ``client`` is inside the route's ``allow_cidrs`` (the sender's own published addresses)."""
    if not allow:
        return False
    try:
        ip = ipaddress.ip_address(client)
    except ValueError:
        return False
    return any(ip in net for net in allow)
