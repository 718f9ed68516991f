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
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from proxy.exchange import Exchange
from proxy.forwarding import backend_request
from proxy.protocols.base import Reply, Verified
from proxy.replies import encode_reply
from proxy.routes import RouteRuntime, RouteTable
from proxy.settlement import Settlement
from proxy.stores.base import ClaimState, OutboxItem, Store, StoreUnavailable
from proxy.tracing import Tracing
from proxy.upstream import UpstreamClient, UpstreamResult

logger = logging.getLogger("wxgate")


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the outbox keeps: the backend request exactly as it was first sent."""

    method: str
    path_query: str
    headers: dict[str, str]
    body: bytes
    dedup_key: str | None  # the store key (already hashed)

    def encode(self) -> bytes:
        return json.dumps(
            {
                "m": self.method,
                "p": self.path_query,
                "h": self.headers,
                "b": base64.b64encode(self.body).decode(),
                "k": self.dedup_key,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, blob: bytes) -> Delivery:
        d = json.loads(blob)
        return cls(d["m"], d["p"], dict(d["h"]), base64.b64decode(d["b"]), d["k"])


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

    async def before_ack(self, ex: Exchange, in_flight: bool) -> None:
        assert ex.route is not None and ex.inbound is not None
        if ex.outbox_id is not None:
            return
        # While the first call is still running the worker must not race it: give it backend_timeout first.
        ex.outbox_id = await self._enqueue(ex, ex.route.config.backend_timeout if in_flight else 0.0)
        ex.outcome.outbox = "queued"

    async def _enqueue(self, ex: Exchange, head_start: float) -> str:
        assert ex.route is not None and ex.inbound is not None
        url, headers, body = backend_request(ex, list(ex.inbound.query.items()))
        delivery = Delivery(ex.inbound.method, url[len(ex.route.upstream) :], headers, body, ex.dedup_key_raw)
        cfg, now = ex.route.config.outbox, self.clock()
        due = now + head_start + backoff(0, cfg.backoff_base, cfg.backoff_max)
        item_id = uuid.uuid4().hex
        await self.store.outbox_put(OutboxItem(item_id, ex.route.name, delivery.encode(), 0, now, due))
        return item_id

    async def delivered(self, ex: Exchange, reply: Reply, late: bool) -> None:
        assert ex.route is not None
        if ex.dedup_token is not None and ex.dedup_key_raw is not None:
            try:
                await self.store.complete(
                    ex.dedup_key_raw, ex.dedup_token, encode_reply(reply), ex.route.dedup_ttl
                )
            except StoreUnavailable as e:
                logger.warning("could not record delivery on route %s: %s", ex.route.name, e)
        if ex.outbox_id is not None:
            await self._drop(ex.outbox_id)

    async def failed(self, ex: Exchange, result: UpstreamResult, acked: bool, late: bool) -> None:
        assert ex.route is not None
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


class OutboxWorker:
    """Leases due items and redelivers them; safe to run in every replica (leases are exclusive)."""

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
    ) -> None:
        self.store, self.table, self.client = store, table, client
        self.tracing = tracing
        self.counters = counters or OutboxCounters()
        self.clock, self.interval, self.batch, self.lease = clock, interval, batch, lease
        self._by_name = {r.name: r for r in table.routes}

    def use(self, table: RouteTable) -> None:
        """Redeliver with a reloaded route table (new secrets, upstreams, outbox limits) from the next item on."""
        self.table, self._by_name = table, {r.name: r for r in table.routes}

    async def run(self) -> None:
        while True:
            try:
                busy = await self.run_once()
            except StoreUnavailable as e:
                logger.warning("outbox: store unavailable, retrying: %s", e)
                busy = 0
            if busy < self.batch:
                await asyncio.sleep(self.interval)

    async def run_once(self) -> int:
        items = await self.store.outbox_lease(self.clock(), self.lease, self.batch)
        if items:
            await asyncio.gather(*(self._traced(item) for item in items))
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
        """Try one item; returns what happened (delivered, duplicate, busy, retry, dead)."""
        route = self._by_name.get(item.route)
        if route is None:
            await self.store.outbox_bury(item.id, f"route {item.route!r} is no longer configured")
            self.counters.dead_letters(item.route)
            return "dead"
        try:
            delivery = Delivery.decode(item.payload)
        except (ValueError, KeyError):
            await self.store.outbox_bury(item.id, "unreadable payload")
            self.counters.dead_letters(item.route)
            return "dead"
        token: str | None = None
        if delivery.dedup_key is not None:
            claim = await self.store.claim(delivery.dedup_key, route.config.dedup.lease, route.dedup_ttl)
            if claim.state is ClaimState.DONE:
                await self.store.outbox_ack(item.id)  # a sender retry got it through meanwhile
                self.counters.redeliveries(route.name, "duplicate")
                return "duplicate"
            if claim.state is ClaimState.IN_FLIGHT:
                await self.store.outbox_retry(item.id, self.clock() + route.config.dedup.lease, "in flight")
                return "busy"
            token = claim.token
        result = await self._send(route, delivery, item.attempts + 1)
        return await self._conclude(route, item, delivery, token, result)

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
        failed = not result.ok or route.protocol.is_backend_failure(
            result.status, result.content_type, result.body
        )
        if not failed:
            if d.dedup_key is not None and token is not None:
                reply = route.protocol.normalize(result.status, result.content_type, result.body, Verified())
                await self.store.complete(d.dedup_key, token, encode_reply(reply), route.dedup_ttl)
            await self.store.outbox_ack(item.id)
            self.counters.redeliveries(route.name, "delivered")
            return "delivered"
        if d.dedup_key is not None and token is not None:
            await self.store.release(d.dedup_key, token)
        attempts = item.attempts + 1
        error = f"{result.kind} {result.status or ''}".strip()
        if attempts >= cfg.max_attempts or self.clock() - item.created_at >= cfg.max_age:
            await self.store.outbox_bury(item.id, error)
            self.counters.redeliveries(route.name, "failed")
            self.counters.dead_letters(route.name)
            return "dead"
        await self.store.outbox_retry(
            item.id, self.clock() + backoff(attempts, cfg.backoff_base, cfg.backoff_max), error
        )
        self.counters.redeliveries(route.name, "failed")
        return "retry"
