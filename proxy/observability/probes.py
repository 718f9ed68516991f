"""Periodic readings behind gauges that no request updates: the outbox and the event loop.

- every ``outbox_interval`` seconds, ``store.outbox_stats()`` sets ``wxgate_outbox_depth``,
  ``wxgate_outbox_oldest_age_seconds``, ``wxgate_outbox_dead_letters`` and ``wxgate_store_up`` (0 when the
  read failed: the outbox gauges then keep their last value rather than drop to a reassuring zero);
- every ``lag_interval`` seconds, how late a timer fires goes to ``wxgate_event_loop_lag_seconds`` — one
  blocking call in a hook delays every flow in flight by the same amount.

A scrape-time collector cannot do the first (the store is async; exposition runs in a thread), so the sidecar
runs :meth:`Probes.run` as one background task and cancels it at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from proxy.observability.metrics import Metrics
from proxy.stores.base import Store, StoreUnavailable

logger = logging.getLogger("wxgate")


class Probes:
    def __init__(
        self,
        metrics: Metrics,
        store: Store,
        outbox_interval: float = 5.0,
        lag_interval: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.store = store
        self.outbox_interval = outbox_interval
        self.lag_interval = lag_interval
        self.clock = clock
        self._store_ok = True

    async def run(self) -> None:
        """Both loops, until cancelled."""
        await asyncio.gather(self._outbox_loop(), self._lag_loop())

    async def sample_outbox(self) -> None:
        try:
            stats = await asyncio.wait_for(self.store.outbox_stats(self.clock()), self.outbox_interval)
        except Exception as e:  # StoreUnavailable, a timeout or a store bug: the loop must go on
            if self._store_ok:  # log transitions, not every failed poll
                logger.warning(
                    "outbox gauges stale: store unreadable (%s)",
                    e or "timeout",
                    exc_info=not isinstance(e, (StoreUnavailable, TimeoutError)),
                )
            self._store_ok = False
            self.metrics.outbox_stats(None)
            return
        if not self._store_ok:
            logger.info("outbox gauges current again: store readable")
        self._store_ok = True
        self.metrics.outbox_stats(stats)

    async def _outbox_loop(self) -> None:
        while True:
            await self.sample_outbox()
            await asyncio.sleep(self.outbox_interval)

    async def _lag_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.lag_interval)
            self.metrics.loop_lag(max(loop.time() - started - self.lag_interval, 0.0))
