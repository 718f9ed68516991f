"""Nothing lost: the settlement that keeps acknowledged notifications durable, and the redelivery worker.

A notification that wxgate acknowledges on the backend's behalf is written to the store's outbox *before* the
acknowledgement leaves (:meth:`StoreSettlement.before_ack`). If the backend then takes it, the item is removed;
otherwise :class:`OutboxWorker` redelivers it with exponential backoff and full jitter, with
``X-Wxgate-Redelivery: N``, until it succeeds or exhausts the route's ``outbox.max_attempts``/``max_age`` and
becomes a dead letter. Every delivery — first, retry or redelivery — goes through the dedup claim, so the
backend sees a notification once even when a sender retry and a redelivery race.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.config import OutboxConfig
from proxy.observability.tracing import Tracing
from proxy.pipeline.backend_leg import answer, is_failure
from proxy.pipeline.backpressure import REDELIVERY_WAIT, BackendLimits
from proxy.pipeline.exchange import Authenticated
from proxy.pipeline.forwarding import backend_request
from proxy.pipeline.policy import claim_lease, dedup_ttl
from proxy.pipeline.replies import encode_reply
from proxy.pipeline.routes import RouteRuntime, RouteTable
from proxy.pipeline.settlement import Settlement
from proxy.protocols.base import Reply, Verified
from proxy.protocols.wechat_pay_v3 import V2Notice
from proxy.protocols.wxcrypt import ReplyContext
from proxy.stores.base import ClaimState, OutboxItem, Store, StoreUnavailable
from proxy.upstream.client import UpstreamClient, UpstreamResult

logger = logging.getLogger("wxgate")


class Reloaded(Protocol):
    """What a reload hands the outbox (:class:`proxy.reload.Loaded` has it)."""

    @property
    def table(self) -> RouteTable: ...


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the outbox keeps: the backend request exactly as it was first sent."""

    method: str
    path_query: str
    headers: dict[str, str]
    body: bytes
    dedup_key: str | None  # the store key (already hashed)
    # How the verified request shapes the backend's reply (ids, never secrets): see reply_context().
    context: dict[str, Any] | None = None
    max_age: float | None = None  # the owning route's outbox.max_age when it was queued
    dedup_ttl: float | None = (
        None  # the message's own dedup TTL when its kind retries longer than the route's
    )

    def encode(self) -> bytes:
        return json.dumps(
            {
                "m": self.method,
                "p": self.path_query,
                "h": self.headers,
                "b": base64.b64encode(self.body).decode(),
                "k": self.dedup_key,
                "c": self.context,
                "a": self.max_age,
                "t": self.dedup_ttl,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, blob: bytes) -> Delivery:
        d = json.loads(blob)
        return cls(
            d["m"], d["p"], dict(d["h"]), base64.b64decode(d["b"]), d["k"], d.get("c"), d.get("a"), d.get("t")
        )

    def ttl(self, route: RouteRuntime) -> float:
        """The dedup record's TTL: the route's, or the message's own if longer (as when it was first claimed)."""
        return route.dedup_ttl if self.dedup_ttl is None else max(route.dedup_ttl, self.dedup_ttl)

    def verified(self) -> Verified:
        """The verification context the reply is normalized with, as it was when the request was verified
        (a Pay v2 notice at a v3 route is answered in v2 XML, an encrypted MP/WeCom request as encrypted, a Mini
        Program ``xpay_*`` event with ``{"ErrCode":0,…}``: the message fields its protocol's ``reply_fields``
        name)."""
        c = self.context or {}
        message = {str(k): str(v) for k, v in (c.get("m") or {}).items()}
        if c.get("t") == "v2":
            return Verified(message=message, seal_context=V2Notice())
        if c.get("t") == "wx":
            fields = {f.name: c[f.name] for f in dataclasses.fields(ReplyContext) if f.name in c}
            return Verified(message=message, seal_context=ReplyContext(**fields))
        return Verified(message=message)


def reply_context(
    seal_context: object | None, message: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """What of a request's ``seal_context`` and message fields (``message``: those its protocol's ``reply_fields``
    name) its redelivery needs to normalize the reply the same way."""
    context: dict[str, Any] | None = None
    if isinstance(seal_context, V2Notice):
        context = {"t": "v2"}
    elif isinstance(seal_context, ReplyContext):
        context = {"t": "wx", **dataclasses.asdict(seal_context)}
    if message:
        context = {**(context or {}), "m": dict(message)}
    return context


def backoff(
    attempts: int, base: float, cap: float, rand: Callable[[float, float], float] = random.uniform
) -> float:
    """Exponential backoff with full jitter (AWS architecture blog): uniform(0, min(cap, base * 2**n))."""
    return rand(0.0, min(cap, base * 2 ** min(attempts, 30)))


class StoreSettlement(Settlement):
    """Completes/releases dedup claims and keeps acknowledged-but-undelivered notifications in the outbox."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        # dedup token -> the exchange holding that claim and when its lease ends (perf_counter)
        self._held: dict[str, tuple[Authenticated, float]] = {}

    def holding(self, ex: Authenticated) -> None:
        if ex.dedup_token is None:
            return
        now = time.perf_counter()
        if len(self._held) >= 1024:  # a request that never settled (cut off before forwarding) is let go
            self._held = {t: h for t, h in self._held.items() if h[1] > now}
        self._held[ex.dedup_token] = (ex, now + claim_lease(ex.route))

    def _settled(self, ex: Authenticated) -> None:
        if ex.dedup_token is not None:
            self._held.pop(ex.dedup_token, None)

    async def release_held(self) -> int:
        """Claims still held once the drain window is over belong to calls that were cut short: released, so
        the sender's retry (or another replica's redelivery) takes them now instead of when their lease ends;
        an acknowledged one's outbox item is made due now for the same reason."""
        now = time.perf_counter()
        held, self._held = [ex for ex, until in self._held.values() if until > now], {}
        for ex in held:
            assert ex.dedup_key_raw is not None and ex.dedup_token is not None
            try:
                await self.store.release(ex.dedup_key_raw, ex.dedup_token)
                if ex.outbox_id is not None:
                    await self.store.outbox_defer(ex.outbox_id, self.clock(), "cut short by shutdown")
            except StoreUnavailable as e:
                logger.warning(
                    "could not release claim on route %s (its lease will expire): %s", ex.route.name, e
                )
        return len(held)

    async def before_ack(self, ex: Authenticated, in_flight: bool) -> None:
        if ex.outbox_id is not None:
            return
        # While the first call is still running the worker must not race it: give it backend_timeout first.
        ex.outbox_id = await self._enqueue(ex, ex.route.config.backend_timeout if in_flight else 0.0)
        ex.outcome.outbox = "queued"

    async def _enqueue(self, ex: Authenticated, head_start: float) -> str:
        url, headers, body = backend_request(ex, list(ex.inbound.query.items()))
        message = ex.verified.message
        kept = {f: message[f] for f in ex.route.protocol.reply_fields if f in message}
        context = reply_context(ex.verified.seal_context, kept)
        cfg, now = ex.route.config.outbox, self.clock()
        delivery = Delivery(
            ex.inbound.method,
            url[len(ex.route.upstream) :],
            headers,
            body,
            ex.dedup_key_raw,
            context,
            cfg.max_age,
            ex.verified.dedup_ttl,
        )
        due = now + head_start + backoff(0, cfg.backoff_base, cfg.backoff_max)
        item_id = uuid.uuid4().hex
        await self.store.outbox_put(OutboxItem(item_id, ex.route.name, delivery.encode(), 0, now, due))
        return item_id

    async def delivered(self, ex: Authenticated, reply: Reply, late: bool) -> None:
        self._settled(ex)
        if ex.dedup_token is not None and ex.dedup_key_raw is not None:
            try:
                ttl = dedup_ttl(ex.route, ex.verified)
                await self.store.complete(ex.dedup_key_raw, ex.dedup_token, encode_reply(reply), ttl)
            except StoreUnavailable as e:
                logger.warning("could not record delivery on route %s: %s", ex.route.name, e)
        if ex.outbox_id is not None:
            await self._drop(ex.outbox_id)

    async def failed(self, ex: Authenticated, result: UpstreamResult, acked: bool, late: bool) -> None:
        self._settled(ex)
        if ex.dedup_token is not None and ex.dedup_key_raw is not None:
            try:
                # Released either way: the sender's retry (not acked) or the outbox (acked) takes over.
                await self.store.release(ex.dedup_key_raw, ex.dedup_token)
            except StoreUnavailable as e:
                logger.warning(
                    "could not release claim on route %s (its lease will expire): %s", ex.route.name, e
                )
        if acked and late and ex.outbox_id is not None:
            # The call that outlived the deadline is over: redeliver soon instead of after its head start.
            # A fresh item (written before the old one goes) keeps the redelivery count honest; a crash in
            # between leaves two items, and the second finds the dedup record DONE.
            try:
                old, ex.outbox_id = ex.outbox_id, await self._enqueue(ex, 0.0)
                await self._drop(old)
            except StoreUnavailable as e:
                logger.warning("outbox item on route %s keeps its schedule: %s", ex.route.name, e)

    async def _drop(self, item_id: str) -> None:
        try:
            await self.store.outbox_ack(item_id)
        except StoreUnavailable as e:
            # The item stays; its redelivery will find the dedup record DONE and drop it then.
            logger.warning("could not remove delivered outbox item: %s", e)


@dataclass(slots=True)
class OutboxCounters:
    """Hooks the observability layer reads (redeliveries by result, dead letters)."""

    redeliveries: Callable[[str, str], None] = lambda route, result: None
    dead_letters: Callable[[str], None] = lambda route: None


def _traceparent_of(item: OutboxItem) -> str | None:
    try:
        return Delivery.decode(item.payload).headers.get("traceparent")
    except (ValueError, KeyError):
        return None


# An item of a route this replica does not know (another replica's configuration during a rolling update or
# before a ConfigMap refresh) is handed back for about this long, so the replica that knows it takes it.
HAND_BACK = 5.0
# During a store outage the worker says so once, then at most this often.
OUTAGE_LOG_EVERY = 60.0


class OutboxWorker:
    """Leases due items and redelivers them; safe to run in every replica (leases are exclusive).

    An item is leased for at least as long as its redelivery can take (the longest ``backend_timeout`` and
    the claim's margin, :func:`~proxy.pipeline.policy.claim_lease`), so no other replica redelivers it meanwhile.
    """

    def __init__(
        self,
        store: Store,
        table: RouteTable,
        client: UpstreamClient,
        counters: OutboxCounters | None = None,
        clock: Callable[[], float] = time.time,
        interval: float = 0.5,
        batch: int = 32,
        lease: float = 60.0,
        tracing: Tracing | None = None,
        hand_back: float = HAND_BACK,
        limits: BackendLimits | None = None,
    ) -> None:
        self.store, self.client = store, client
        self.limits = limits
        self.tracing = tracing
        self.counters = counters or OutboxCounters()
        self.clock, self.interval, self.batch, self.lease = clock, interval, batch, lease
        self.hand_back = hand_back
        self.stepped_back = False  # the last batch was all hand-backs: run() pauses for hand_back
        self.stopping = False
        self._failures = 0
        self._last_warning = float("-inf")
        self.use(table)

    def reconfigure(self, loaded: Reloaded) -> None:
        """Redeliver with a reloaded route table (new secrets, upstreams, outbox limits) from the next item on."""
        self.use(loaded.table)

    def use(self, table: RouteTable) -> None:
        """Redeliver with ``table`` from the next item on."""
        self.table, self._by_name = table, {r.name: r for r in table.routes}
        # Items leased in one batch run concurrently: the lease covers the slowest route's call.
        self.item_lease = max([self.lease, *(claim_lease(r) for r in table.routes)])
        # A route no replica here knows may still be known elsewhere: only the longest max_age buries it.
        self.unknown_max_age = max([OutboxConfig().max_age, *(r.config.outbox.max_age for r in table.routes)])

    def stop(self) -> None:
        """Lease nothing more (a drain started); redeliveries already running go on."""
        self.stopping = True

    async def run(self) -> None:
        while not self.stopping:
            try:
                busy = await self.run_once()
                self._store_back()
            except StoreUnavailable as e:
                self._store_down(e)
                busy = 0
            except Exception:
                # A bug in one poll must not end redelivery for the life of the process: acknowledged items
                # would wait for a restart. Logged (at most once per OUTAGE_LOG_EVERY), then the next poll.
                self._failures += 1
                if time.monotonic() - self._last_warning >= OUTAGE_LOG_EVERY:
                    self._last_warning = time.monotonic()
                    logger.exception("outbox: a poll failed unexpectedly; polling on")
                busy = 0
            if self.stepped_back and not self.stopping:
                # Everything leased was another configuration's: leave it to a replica that knows the route.
                await asyncio.sleep(self.hand_back * random.uniform(0.5, 1.5))
            elif busy < self.batch and not self.stopping:
                await asyncio.sleep(self.interval * random.uniform(0.8, 1.2))  # replicas drift out of step

    def _store_down(self, e: StoreUnavailable) -> None:
        self._failures += 1
        now = time.monotonic()
        if now - self._last_warning >= OUTAGE_LOG_EVERY:
            self._last_warning = now
            logger.warning(
                "outbox: store unavailable, retrying every %.1fs (%d failed polls so far): %s",
                self.interval,
                self._failures,
                e,
            )

    def _store_back(self) -> None:
        if self._failures:
            logger.info("outbox: store available again after %d failed polls", self._failures)
            self._failures, self._last_warning = 0, float("-inf")

    async def run_once(self) -> int:
        if self.stopping:
            return 0
        self.stepped_back = False
        items = await self.store.outbox_lease(self.clock(), self.item_lease, self.batch)
        if items:
            outcomes = await asyncio.gather(*(self._traced(item) for item in items))
            self.stepped_back = all(o == "handed_back" for o in outcomes)
        return len(items)

    async def _traced(self, item: OutboxItem) -> str:
        """One redelivery as its own trace (linked to the request that first sent it) when tracing is on."""
        if self.tracing is None:
            return await self.redeliver(item)
        with self.tracing.redelivery(item.route, _traceparent_of(item)) as span:
            outcome = await self.redeliver(item)
            span.set_attribute("wxgate.redelivery.result", outcome)
            return outcome

    async def redeliver(self, item: OutboxItem) -> str:
        """Try one item; returns what happened (delivered, duplicate, busy, retry, dead, handed_back).

        On a route with ``backend_concurrency``, the redelivery first takes a slot of its backend's limit (the
        one live requests take); without one in :data:`REDELIVERY_WAIT` the item is deferred untried."""
        route = self._by_name.get(item.route)
        if route is None:
            return await self._not_ours(item)
        if self.limits is None or (limit := self.limits.for_route(route)) is None:
            return await self._redeliver(route, item)
        if not await limit.acquire(route.name, REDELIVERY_WAIT):
            await self.store.outbox_defer(item.id, self.clock(), "backend_concurrency reached")
            return "busy"
        try:
            outcome = await self._redeliver(route, item)
        finally:
            limit.release()
        if outcome == "delivered":
            self.limits.counters.drained(route.name)
        return outcome

    async def _redeliver(self, route: RouteRuntime, item: OutboxItem) -> str:
        try:
            delivery = Delivery.decode(item.payload)
        except (ValueError, KeyError):
            await self.store.outbox_bury(item.id, "unreadable payload")
            self.counters.dead_letters(item.route)
            return "dead"
        token: str | None = None
        if delivery.dedup_key is not None:
            lease = claim_lease(route)
            claim = await self.store.claim(delivery.dedup_key, lease, delivery.ttl(route))
            if claim.state is ClaimState.DONE:
                await self.store.outbox_ack(item.id)  # a sender retry got it through meanwhile
                self.counters.redeliveries(route.name, "duplicate")
                return "duplicate"
            if claim.state is ClaimState.IN_FLIGHT:
                # Another delivery holds it: not an attempt of ours, so it costs none.
                await self.store.outbox_defer(item.id, self.clock() + route.config.dedup.lease, "in flight")
                return "busy"
            token = claim.token
        try:
            result = await self._send(route, delivery, item.attempts + 1)
        except asyncio.CancelledError:
            # Cut short (shutdown after the drain window): let the next replica take it now, not after leases.
            await self._abandon(item, delivery, token)
            raise
        return await self._conclude(route, item, delivery, token, result)

    async def _abandon(self, item: OutboxItem, d: Delivery, token: str | None) -> None:
        try:
            async with asyncio.timeout(2.0):
                if d.dedup_key is not None and token is not None:
                    await self.store.release(d.dedup_key, token)
                await self.store.outbox_defer(item.id, self.clock(), "cut short by shutdown")
        except (StoreUnavailable, TimeoutError) as e:
            logger.warning("outbox item on route %s keeps its lease: %s", item.route, e)

    async def _not_ours(self, item: OutboxItem) -> str:
        """A route this replica does not know: handed back untried, unless even the longest max_age is over:
        this replica's longest, or the owning route's as the item recorded it (a replica whose routes keep
        24 h must not bury a 7-day route's items)."""
        limit = self.unknown_max_age
        with contextlib.suppress(ValueError, KeyError):  # unreadable: the replica knowing the route buries it
            limit = max(limit, Delivery.decode(item.payload).max_age or 0.0)
        if self.clock() - item.created_at >= limit:
            await self.store.outbox_bury(item.id, f"route {item.route!r} is not configured")
            self.counters.dead_letters(item.route)
            return "dead"
        # Due at once for a replica that knows the route; this one steps back instead (run() pauses after a
        # batch of nothing but hand-backs). Handing back with a later due time let the replica that hands
        # back, polling in step with the one that knows, win the item again and again.
        await self.store.outbox_defer(
            item.id, self.clock(), f"route {item.route!r} is not configured on this replica"
        )
        return "handed_back"

    async def _send(self, route: RouteRuntime, d: Delivery, n: int) -> UpstreamResult:
        headers = {**d.headers, "x-wxgate-redelivery": str(n)}
        # With tracing, the backend gets this attempt's traceparent instead of the first delivery's.
        span = (
            self.tracing.redelivery_call(d.method, route.config.path, route.upstream, n, headers)
            if self.tracing
            else None
        )
        send = self.client.send(
            d.method, route.upstream + d.path_query, headers, d.body, route.config.backend_timeout
        )
        return await (span.wrap(send) if span else send)

    async def _conclude(
        self, route: RouteRuntime, item: OutboxItem, d: Delivery, token: str | None, result: UpstreamResult
    ) -> str:
        cfg = route.config.outbox
        if not is_failure(route, result):
            if d.dedup_key is not None and token is not None:
                reply = answer(route, result, d.verified())
                await self.store.complete(d.dedup_key, token, encode_reply(reply), d.ttl(route))
            await self.store.outbox_ack(item.id)
            self.counters.redeliveries(route.name, "delivered")
            return "delivered"
        if d.dedup_key is not None and token is not None:
            await self.store.release(d.dedup_key, token)
        attempts = item.attempts + 1
        error = f"{result.kind} {result.status or ''}".strip()
        exhausted = cfg.max_attempts is not None and attempts >= cfg.max_attempts
        if exhausted or self.clock() - item.created_at >= cfg.max_age:
            await self.store.outbox_bury(item.id, error)
            self.counters.redeliveries(route.name, "failed")
            self.counters.dead_letters(route.name)
            return "dead"
        await self.store.outbox_retry(
            item.id, self.clock() + backoff(attempts, cfg.backoff_base, cfg.backoff_max), error
        )
        self.counters.redeliveries(route.name, "failed")
        return "retry"
