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

import logging
from collections.abc import Awaitable, Callable

from mitmproxy import http

from proxy.pipeline.backend_leg import early_reply, store_down
from proxy.pipeline.claims import raw_key, store_key
from proxy.pipeline.exchange import Authenticated, exchange
from proxy.pipeline.lookup_note import lookup_note
from proxy.pipeline.policy import ACK_GRACE, before_deadline, claim_lease, dedup_ttl, time_left
from proxy.pipeline.replies import decode_reply, reject, respond
from proxy.pipeline.settlement import Settlement
from proxy.stores.base import Claim, ClaimState, Sighting, Store, StoreUnavailable

logger = logging.getLogger("wxgate")


class Dedup:
    def __init__(self, store: Store, settlement: Settlement) -> None:
        self.store = store
        self.settlement = settlement
        # What each claim state means for this attempt (IN_FLIGHT first waits for the holder to settle).
        self._outcomes: dict[ClaimState, Callable[[http.HTTPFlow, Authenticated, Claim], Awaitable[None]]] = {
            ClaimState.NEW: self._forward,
            ClaimState.DONE: self._replay,
            ClaimState.IN_FLIGHT: self._still_in_flight,
        }

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        ex = exchange(flow)
        if ex is None or ex.route is None or ex.outcome.verdict != "verified" or ex.verified is None:
            return
        if not ex.route.config.dedup.enabled:
            return
        authentic = ex.authenticated()
        try:
            await self._claim(flow, authentic)
        except Exception:
            logger.exception("deduplication failed unexpectedly on route %s", authentic.route.name)
            if not flow.response:
                ex.outcome.reason = "dedup_error"
                respond(flow, ex, authentic.route.protocol.backend_failure_reply(ex.verified))

    async def _claim(self, flow: http.HTTPFlow, ex: Authenticated) -> None:
        raw = raw_key(ex.route, ex.verified)
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
        key = ex.dedup_key_raw = store_key(ex.route.name, raw)
        ex.outcome.dedup_key = key.rsplit(":", 1)[1][:16]
        lease = claim_lease(ex.route)  # covers the backend call, however long backend_timeout lets it run
        ttl = dedup_ttl(ex.route, ex.verified)
        note = lookup_note(ex.route, ex.verified, ex.span)
        try:
            if replay is None:
                claim = await before_deadline(ex, self.store.claim(key, lease, ttl, note))
            else:
                claiming = self.store.claim_signed(
                    replay.signed, replay.body, replay.ttl, key, lease, ttl, note
                )
                sighting, found = await before_deadline(ex, claiming)
                if found is None:  # the signed values came with another body: a forgery, claimed nothing
                    return reject(flow, ex, "replayed_nonce", 403)
                claim, ex.repeat = found, sighting is Sighting.REPEAT
            ex.outcome.attempt = claim.attempt
            if claim.state is ClaimState.IN_FLIGHT:
                ex.outcome.dedup = "duplicate_inflight"
                # settle returns IN_FLIGHT by itself at the deadline; the outer bound only catches a hung store.
                settling = self.store.settle(key, lease, max(time_left(ex), 0.0))
                claim = await before_deadline(ex, settling, grace=ACK_GRACE)
        except StoreUnavailable as e:
            return self._store_down(flow, ex, e)
        return await self._outcomes[claim.state](flow, ex, claim)

    async def _forward(self, flow: http.HTTPFlow, ex: Authenticated, claim: Claim) -> None:
        """This attempt holds the claim: the forward addon calls the backend."""
        ex.outcome.dedup = ex.outcome.dedup or "new"
        ex.dedup_token = claim.token
        self.settlement.holding(ex)

    async def _replay(self, flow: http.HTTPFlow, ex: Authenticated, claim: Claim) -> None:
        """Delivered before: the backend's reply again, without touching the backend."""
        assert claim.reply is not None
        ex.outcome.dedup = ex.outcome.dedup or "duplicate_done"
        try:
            reply = decode_reply(claim.reply)
        except (ValueError, KeyError):
            logger.warning(
                "cached reply on route %s is unreadable; answering with the plain ack", ex.route.name
            )
            reply = ex.route.protocol.success_reply(ex.verified)
        respond(flow, ex, reply)

    async def _still_in_flight(self, flow: http.HTTPFlow, ex: Authenticated, claim: Claim) -> None:
        """The first attempt still holds the claim and this attempt's deadline has come.

        The holder may have died (kill -9) or failed to write its outbox item (store down): nothing says it
        made the notification durable, so an acknowledgement here queues this attempt's own redelivery first
        (:func:`~proxy.pipeline.backend_leg.early_reply`); the redelivery goes through the claim, so the
        backend still gets it once."""
        ex.outcome.deadline = ex.route.policy
        respond(flow, ex, await early_reply(ex, self.settlement, in_flight=True))

    def _store_down(self, flow: http.HTTPFlow, ex: Authenticated, err: StoreUnavailable) -> None:
        if (reply := store_down(ex, err)) is not None:
            respond(flow, ex, reply)
