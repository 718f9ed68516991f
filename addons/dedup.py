"""Dedup: each notification reaches the backend once; every retry gets the backend's real reply.

Two-phase claim in the shared store (DESIGN.md "Deduplication"), made in the same store call as the replay
check verify left to it (``ex.replay``; a forgery is refused and claims nothing): ``NEW`` forwards; ``DONE``
replays the cached reply without touching the backend (the envelope addon re-seals it freshly); ``IN_FLIGHT``
waits for the first attempt up to this attempt's own deadline and replays its reply, or takes the claim over
if the first attempt released it. Keys come from the protocol's recipe (or the route's ``dedup.fields``) and
are hashed before they reach the store, the backend (``X-Wxgate-Dedup-Key``) or the logs. Store down:
``dedup.store_down``.
"""

from __future__ import annotations

import hashlib
import logging

from mitmproxy import http

from proxy.pipeline.exchange import Exchange, exchange
from proxy.pipeline.policy import ACK_GRACE, acknowledges, before_deadline, claim_lease, time_left
from proxy.pipeline.replies import decode_reply, reject, respond
from proxy.pipeline.settlement import Settlement
from proxy.protocols import idempotency
from proxy.protocols.base import Reply
from proxy.stores.base import Claim, ClaimState, Sighting, Store, StoreUnavailable

logger = logging.getLogger("wxgate")


def dedup_key(ex: Exchange) -> str | None:
    """The un-hashed key: the route's ``dedup.fields`` when the message has every one of them (JSON-encoded with
    their names), else the digest of the whole authenticated message; without ``fields``, the protocol's recipe
    (a documented unique id, else that digest: :mod:`proxy.protocols.idempotency`)."""
    assert ex.route is not None and ex.verified is not None
    fields = ex.route.config.dedup.fields
    if fields:
        return idempotency.fields_key(ex.verified.message, fields) or idempotency.digest_key(ex.verified)
    return ex.route.protocol.dedup_key(ex.verified)


def hashed(route: str, raw: str) -> str:
    return f"{route}:{hashlib.sha256(raw.encode()).hexdigest()[:32]}"


class Dedup:
    def __init__(self, store: Store, settlement: Settlement) -> None:
        self.store = store
        self.settlement = settlement

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        ex = exchange(flow)
        if ex is None or ex.route is None or ex.outcome.verdict != "verified":
            return
        if not ex.route.config.dedup.enabled:
            return
        try:
            await self._claim(flow, ex)
        except Exception:
            logger.exception("deduplication failed unexpectedly on route %s", ex.route.name)
            if not flow.response:
                ex.outcome.reason = "dedup_error"
                respond(flow, ex, ex.route.protocol.backend_failure_reply(ex.verified))

    async def _claim(self, flow: http.HTTPFlow, ex: Exchange) -> None:
        assert ex.route is not None
        raw = dedup_key(ex)
        replay, ex.replay = ex.replay, None
        if raw is None:
            ex.outcome.dedup = "no_key"
            if replay is None:
                return None
            try:
                sighting = await before_deadline(
                    ex, self.store.remember_signed(replay.signed, replay.body, replay.ttl)
                )
            except StoreUnavailable as e:
                return self._store_down(flow, ex, e)
            if sighting is not Sighting.NEW:  # a repeat too: nothing can tell a retry from a replay
                reject(flow, ex, "replayed_nonce", 403)
            return None
        key = ex.dedup_key_raw = hashed(ex.route.name, raw)
        ex.outcome.dedup_key = key.rsplit(":", 1)[1][:16]
        lease = claim_lease(ex.route)  # covers the backend call, however long backend_timeout lets it run
        try:
            if replay is None:
                claim = await before_deadline(ex, self.store.claim(key, lease, ex.route.dedup_ttl))
            else:
                claiming = self.store.claim_signed(
                    replay.signed, replay.body, replay.ttl, key, lease, ex.route.dedup_ttl
                )
                sighting, found = await before_deadline(ex, claiming)
                if found is None:  # the signed values came with another body: a forgery, claimed nothing
                    return reject(flow, ex, "replayed_nonce", 403)
                claim, ex.repeat = found, sighting is Sighting.REPEAT
        except StoreUnavailable as e:
            return self._store_down(flow, ex, e)
        ex.outcome.attempt = claim.attempt
        if claim.state is ClaimState.IN_FLIGHT:
            ex.outcome.dedup = "duplicate_inflight"
            try:
                # settle returns IN_FLIGHT by itself at the deadline; the outer bound only catches a hung store.
                settling = self.store.settle(key, lease, max(time_left(ex), 0.0))
                claim = await before_deadline(ex, settling, grace=ACK_GRACE)
            except StoreUnavailable as e:
                return self._store_down(flow, ex, e)
            if claim.state is ClaimState.IN_FLIGHT:
                return await self._still_in_flight(flow, ex)
        if claim.state is ClaimState.DONE:
            ex.outcome.dedup = ex.outcome.dedup or "duplicate_done"
            return self._replay(flow, ex, claim)
        ex.outcome.dedup = ex.outcome.dedup or "new"
        ex.dedup_token = claim.token
        self.settlement.holding(ex)
        return None

    def _replay(self, flow: http.HTTPFlow, ex: Exchange, claim: Claim) -> None:
        assert claim.reply is not None and ex.route is not None
        try:
            reply = decode_reply(claim.reply)
        except (ValueError, KeyError):
            logger.warning(
                "cached reply on route %s is unreadable; answering with the plain ack", ex.route.name
            )
            reply = ex.route.protocol.success_reply(ex.verified)
        respond(flow, ex, reply)

    async def _still_in_flight(self, flow: http.HTTPFlow, ex: Exchange) -> None:
        """The first attempt still holds the claim and this attempt's deadline has come."""
        assert ex.route is not None
        ex.outcome.deadline = ex.route.policy
        reply: Reply = ex.route.protocol.backend_failure_reply(ex.verified)
        if acknowledges(ex):
            # The holder may have died (kill -9) or failed to write its outbox item (store down): nothing
            # says it made the notification durable. This attempt queues its own redelivery before
            # acknowledging; the redelivery goes through the claim, so the backend still gets it once.
            try:
                await before_deadline(ex, self.settlement.before_ack(ex, in_flight=True), grace=ACK_GRACE)
                reply = ex.route.protocol.success_reply(ex.verified)
            except Exception:
                logger.exception("could not make route %s's retry durable; not acknowledging", ex.route.name)
                ex.outcome.outbox = "failed"
        respond(flow, ex, reply)

    def _store_down(self, flow: http.HTTPFlow, ex: Exchange, err: StoreUnavailable) -> None:
        assert ex.route is not None
        ex.outcome.dedup = "store_error"
        logger.warning("dedup store unavailable on route %s: %s", ex.route.name, err)
        if ex.route.config.dedup.store_down == "fail_closed":
            ex.outcome.reason = "store_unavailable"
            respond(flow, ex, ex.route.protocol.backend_failure_reply(ex.verified))
