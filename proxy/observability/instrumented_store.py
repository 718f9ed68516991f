"""A :class:`~proxy.stores.base.Store` that observes every call of the store it wraps.

Each call is timed into ``wxgate_store_operation_duration_seconds{operation}`` and, when it raises, counted in
``wxgate_store_errors_total{operation}`` (cancellation is not a store error). With tracing on, a call made
inside a traced request or redelivery adds to that request's ``wxgate.store.calls``/``wxgate.store.ms``, and
gets a CLIENT span ``store {operation}`` (``db.system.name`` sqlite or redis) when it failed, was cut short or
was slow (:class:`~proxy.observability.tracing.StoreTimer`); a failed call's span is ERROR with ``error.type``.
The wrapped store's behaviour, results and exceptions are unchanged, so the contract suite holds for the wrapper
too: recording a span that fails is logged and never turns a store call's result into an error.

The composition root wraps the opened store once: ``InstrumentedStore(open_store(url), metrics, tracing)``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

from proxy.observability.metrics import Metrics
from proxy.observability.tracing import StoreTimer, Tracing
from proxy.stores.base import (
    NO_NOTE,
    Claim,
    Inspection,
    Note,
    OutboxItem,
    OutboxStats,
    Sighting,
    Store,
)

logger = logging.getLogger("wxgate")


def _record(timer: StoreTimer, operation: str, system: str, seconds: float, **how: Any) -> None:
    try:
        timer.end(operation, system, seconds, **how)
    except Exception:
        logger.exception("recording the span of a store call (%s) failed", operation)


class InstrumentedStore(Store):
    def __init__(self, inner: Store, metrics: Metrics, tracing: Tracing | None = None) -> None:
        self.inner = inner
        self.metrics = metrics
        self.tracing = tracing
        self.url_scheme = inner.url_scheme
        self.system = "redis" if inner.url_scheme.startswith("redis") else inner.url_scheme or "unknown"

    def __getattr__(self, name: str) -> Any:
        # Implementation extras (e.g. a Redis store's client for tests) stay reachable through the wrapper.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def _call[T](self, operation: str, call: Awaitable[T]) -> T:
        # No context managers on this path: it runs up to four times per request.
        timer = self.tracing.store_timer() if self.tracing is not None else None
        started = time.perf_counter()
        try:
            result = await call
        except asyncio.CancelledError:
            elapsed = time.perf_counter() - started
            self.metrics.store_call(operation, elapsed, failed=False)
            if timer is not None:
                _record(timer, operation, self.system, elapsed, cancelled=True)
            raise
        except Exception as e:
            elapsed = time.perf_counter() - started
            self.metrics.store_call(operation, elapsed, failed=True)
            if timer is not None:
                _record(timer, operation, self.system, elapsed, error=type(e).__qualname__)
            raise
        elapsed = time.perf_counter() - started
        self.metrics.store_call(operation, elapsed, failed=False)
        if timer is not None:
            _record(timer, operation, self.system, elapsed)
        return result

    # -- lifecycle (not timed: once per process) -------------------------------------------------------------
    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def ping(self) -> None:
        await self._call("ping", self.inner.ping())

    # -- dedup -----------------------------------------------------------------------------------------------
    async def claim(self, key: str, lease: float, ttl: float, note: Note = NO_NOTE) -> Claim:
        return await self._call("claim", self.inner.claim(key, lease, ttl, note))

    async def complete(self, key: str, token: str, reply: bytes, ttl: float) -> bool:
        return await self._call("complete", self.inner.complete(key, token, reply, ttl))

    async def release(self, key: str, token: str) -> None:
        await self._call("release", self.inner.release(key, token))

    async def settle(self, key: str, lease: float, timeout: float) -> Claim:
        return await self._call("settle", self.inner.settle(key, lease, timeout))

    async def inspect(self, key: str) -> Inspection | None:
        return await self._call("inspect", self.inner.inspect(key))

    async def resolve(self, alias: str) -> str | None:
        return await self._call("resolve", self.inner.resolve(alias))

    async def remember(self, key: str, ttl: float) -> bool:
        return await self._call("remember", self.inner.remember(key, ttl))

    async def remember_signed(self, signed: str, body: str, ttl: float) -> Sighting:
        return await self._call("remember_signed", self.inner.remember_signed(signed, body, ttl))

    async def claim_signed(
        self,
        signed: str,
        body: str,
        replay_ttl: float,
        key: str,
        lease: float,
        ttl: float,
        note: Note = NO_NOTE,
    ) -> tuple[Sighting, Claim | None]:
        call = self.inner.claim_signed(signed, body, replay_ttl, key, lease, ttl, note)
        return await self._call("claim_signed", call)

    # -- outbox ----------------------------------------------------------------------------------------------
    async def outbox_put(self, item: OutboxItem) -> None:
        await self._call("outbox_put", self.inner.outbox_put(item))

    async def outbox_lease(self, now: float, lease: float, limit: int) -> list[OutboxItem]:
        return await self._call("outbox_lease", self.inner.outbox_lease(now, lease, limit))

    async def outbox_ack(self, item_id: str) -> None:
        await self._call("outbox_ack", self.inner.outbox_ack(item_id))

    async def outbox_retry(self, item_id: str, next_at: float, error: str) -> None:
        await self._call("outbox_retry", self.inner.outbox_retry(item_id, next_at, error))

    async def outbox_defer(self, item_id: str, next_at: float, error: str) -> None:
        await self._call("outbox_defer", self.inner.outbox_defer(item_id, next_at, error))

    async def outbox_bury(self, item_id: str, error: str) -> None:
        await self._call("outbox_bury", self.inner.outbox_bury(item_id, error))

    async def outbox_list(self, dead: bool, limit: int = 100) -> list[OutboxItem]:
        return await self._call("outbox_list", self.inner.outbox_list(dead, limit))

    async def outbox_get(self, item_id: str) -> OutboxItem | None:
        return await self._call("outbox_get", self.inner.outbox_get(item_id))

    async def outbox_revive(self, item_id: str | None, now: float) -> int:
        return await self._call("outbox_revive", self.inner.outbox_revive(item_id, now))

    async def outbox_purge(self, dead: bool, item_id: str | None = None) -> int:
        return await self._call("outbox_purge", self.inner.outbox_purge(dead, item_id))

    async def outbox_stats(self, now: float) -> OutboxStats:
        return await self._call("outbox_stats", self.inner.outbox_stats(now))
