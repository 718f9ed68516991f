"""Backpressure: at most ``backend_concurrency`` calls in flight to a backend, from requests and the outbox alike.

A legacy backend that handles 20 requests at a time must not get 2,000 when WeChat Pay delivers a burst. Every
backend call of a limited route — the forward addon's and the outbox worker's redeliveries — first takes a slot
of its backend's :class:`BackendLimit`; the slot is held until the call ends, even when the call outlives the
sender's answer (the backend is still working on it).

- One limit per backend URL: routes that resolve to the same ``upstream`` share it, at the smallest limit any of
  them sets (a route's own ``backend_concurrency``, else the top-level one for routes on the top-level
  ``upstream``). Unlimited routes on that URL are not counted; pass-through traffic never is.
- With ``workers: N`` each process holds ``limit // N`` slots (at least 1): no store round trip per call, at the
  price of a limit that is not pooled (a busy worker cannot borrow an idle one's slots).
- A request waits for a slot while its deadline still leaves :data:`ANSWER_BUDGET` for the call and the answer;
  then it *spills* (:func:`~proxy.pipeline.backend_leg.spill`): the route's ``on_backend_failure`` answers as
  for a failed backend — ``ack`` after the outbox holds the notification, ``relay``/``fail`` asking for a retry.
- The outbox worker waits up to :data:`REDELIVERY_WAIT` per item, then defers it untried: the outbox drains at
  the backend's pace, in the same queue as live requests (first come, first served).

A reload keeps the limit object of a backend whose limit did not change, so calls in flight stay counted.
Metrics (through :class:`BackpressureCounters`): waiters by route, spilled requests, deliveries drained.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from proxy.config import Config
from proxy.pipeline.routes import RouteRuntime, RouteTable

# Time a waiting request keeps for the backend call and the answer after it gets a slot (a spill writes the
# outbox within it as well): it stops waiting this long before its deadline.
ANSWER_BUDGET = 1.0
# How long an outbox redelivery waits for a slot before its item is deferred (it costs no attempt).
REDELIVERY_WAIT = 5.0


@dataclass(slots=True)
class BackpressureCounters:
    """Hooks the observability layer reads: waiters (by route, +1/-1), spilled requests, drained deliveries."""

    queued: Callable[[str, int], None] = lambda route, delta: None
    spilled: Callable[[str], None] = lambda route: None
    drained: Callable[[str], None] = lambda route: None


class BackendLimit:
    """One backend's slots: ``async with`` after a successful :meth:`acquire`, or :meth:`release` by hand."""

    def __init__(self, limit: int, counters: BackpressureCounters) -> None:
        self.limit = limit
        self.counters = counters
        self._slots = asyncio.Semaphore(limit)

    async def acquire(self, route: str, timeout: float) -> bool:
        """Take a slot within ``timeout`` seconds; ``False`` when none came free (the caller spills)."""
        if not self._slots.locked():  # the common case: no wait, no gauge update
            await self._slots.acquire()
            return True
        if timeout <= 0:
            return False
        self.counters.queued(route, 1)
        try:
            async with asyncio.timeout(timeout):
                await self._slots.acquire()
            return True
        except TimeoutError:
            return False
        finally:
            self.counters.queued(route, -1)

    def release(self) -> None:
        self._slots.release()


def route_limits(config: Config, table: RouteTable) -> dict[str, tuple[str, int]]:
    """``{route name: (backend URL, limit)}`` for every limited route; routes on one URL get its smallest limit."""
    own: dict[str, tuple[str, int]] = {}
    for r in table.routes:
        limit = r.config.backend_concurrency
        if limit is None and r.config.upstream is None:
            limit = config.backend_concurrency
        if limit is not None:
            own[r.name] = (r.upstream, limit)
    smallest: dict[str, int] = {}
    for url, limit in own.values():
        smallest[url] = min(limit, smallest.get(url, limit))
    return {name: (url, smallest[url]) for name, (url, _) in own.items()}


class BackendLimits:
    """The limits of one route table, per backend URL, for this process (its share of ``workers``)."""

    def __init__(self, counters: BackpressureCounters | None = None, workers: int = 1) -> None:
        self.counters = counters or BackpressureCounters()
        self.workers = max(workers, 1)
        self._by_url: dict[str, BackendLimit] = {}
        self._by_route: dict[str, BackendLimit] = {}

    def use(self, config: Config, table: RouteTable) -> None:
        """Limit the backends of ``table``; a backend whose share is unchanged keeps its slots (and holders)."""
        by_url: dict[str, BackendLimit] = {}
        by_route: dict[str, BackendLimit] = {}
        for name, (url, limit) in route_limits(config, table).items():
            share = max(limit // self.workers, 1)
            if url not in by_url:
                kept = self._by_url.get(url)
                by_url[url] = (
                    kept if kept is not None and kept.limit == share else BackendLimit(share, self.counters)
                )
            by_route[name] = by_url[url]
        self._by_url, self._by_route = by_url, by_route

    def for_route(self, route: RouteRuntime) -> BackendLimit | None:
        """The limit a call on ``route`` must take a slot of; ``None`` when its backend is not limited."""
        return self._by_route.get(route.name)
