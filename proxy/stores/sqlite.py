"""``sqlite:///abs/path`` and ``sqlite://:memory:``: the embedded, single-replica store.

Durable across restarts (WAL; outbox writes committed with ``synchronous=FULL``), and never on the event
loop: every statement runs on one dedicated thread that owns the connection and batches concurrent calls
into one transaction (:mod:`proxy.stores.sqlite_worker`). ``settle`` waiters are woken in-process by
``complete`` and ``release``; a slow poll covers lease expiry and writes by another process
(``wxgate outbox …`` on the same file).

Time comes from the injectable ``clock`` (Unix seconds) so tests can expire leases and TTLs without sleeping.
Outbox methods take ``now`` from the caller, as the interface says.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from proxy.stores import sqlite_ops as ops
from proxy.stores.base import (
    NO_NOTE,
    Claim,
    Inspection,
    Note,
    OutboxItem,
    OutboxStats,
    Sighting,
    Store,
    new_token,
)
from proxy.stores.sqlite_worker import SqliteWorker
from proxy.stores.waiters import KeyWaiters, settle_loop


class SqliteStore(Store):
    """State in one SQLite file (or in memory), for a single wxgate replica."""

    url_scheme = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        clock: Callable[[], float] = time.time,
        purge_interval: float = 60.0,
        settle_poll: float = 0.5,
    ) -> None:
        if path != ":memory:" and not os.path.isabs(path):
            raise ValueError(f"sqlite store path must be absolute or ':memory:', got {path!r}")
        self.path = path
        self._clock = clock
        self._settle_poll = settle_poll
        self._worker = SqliteWorker(path, clock=clock, purge_interval=purge_interval)
        self._waiters = KeyWaiters()

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    async def open(self) -> None:
        await self._worker.start()

    async def close(self) -> None:
        await self._worker.stop()
        self._waiters.wake_all()

    async def ping(self) -> None:
        await self._worker.run(lambda c: c.execute("SELECT 1").fetchone())

    # -- dedup -----------------------------------------------------------------------------------------------
    async def claim(self, key: str, lease: float, ttl: float, note: Note = NO_NOTE) -> Claim:
        now, token = self._clock(), new_token()
        return await self._worker.run(
            lambda c: ops.claim(c, key, token=token, lease=lease, ttl=ttl, now=now, note=note)
        )

    async def complete(self, key: str, token: str, reply: bytes, ttl: float) -> bool:
        now = self._clock()
        owned = await self._worker.run(
            lambda c: ops.complete(c, key, token=token, reply=reply, ttl=ttl, now=now)
        )
        self._waiters.wake(key)
        return owned

    async def release(self, key: str, token: str) -> None:
        now = self._clock()
        if await self._worker.run(lambda c: ops.release(c, key, token, now)):
            self._waiters.wake(key)

    async def settle(self, key: str, lease: float, timeout: float) -> Claim:
        token = new_token()

        async def check() -> tuple[Claim, float]:
            now = self._clock()
            return await self._worker.run(
                lambda c: ops.settle_check(c, key, token=token, lease=lease, now=now)
            )

        with self._waiters.watch(key) as wake:
            return await settle_loop(check, wake, timeout, self._settle_poll)

    async def inspect(self, key: str) -> Inspection | None:
        now = self._clock()
        return await self._worker.run(lambda c: ops.inspect(c, key, now))

    async def resolve(self, alias: str) -> str | None:
        now = self._clock()
        return await self._worker.run(lambda c: ops.resolve(c, alias, now))

    # -- nonce replay cache ----------------------------------------------------------------------------------
    async def remember(self, key: str, ttl: float) -> bool:
        now = self._clock()
        return await self._worker.run(lambda c: ops.remember(c, key, ttl, now))

    async def remember_signed(self, signed: str, body: str, ttl: float) -> Sighting:
        now = self._clock()
        return await self._worker.run(lambda c: ops.remember_signed(c, signed, body, ttl, now))

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
        now, token = self._clock(), new_token()
        return await self._worker.run(
            lambda c: ops.claim_signed(
                c, signed, body, replay_ttl, key, token=token, lease=lease, ttl=ttl, now=now, note=note
            )
        )

    # -- outbox ----------------------------------------------------------------------------------------------
    async def outbox_put(self, item: OutboxItem) -> None:
        await self._worker.run(lambda c: ops.outbox_put(c, item), durable=True)

    async def outbox_lease(self, now: float, lease: float, limit: int) -> list[OutboxItem]:
        return await self._worker.run(lambda c: ops.outbox_lease(c, now, lease, limit))

    async def outbox_ack(self, item_id: str) -> None:
        await self._worker.run(lambda c: ops.outbox_ack(c, item_id), durable=True)

    async def outbox_retry(self, item_id: str, next_at: float, error: str) -> None:
        await self._worker.run(lambda c: ops.outbox_retry(c, item_id, next_at, error), durable=True)

    async def outbox_defer(self, item_id: str, next_at: float, error: str) -> None:
        await self._worker.run(lambda c: ops.outbox_defer(c, item_id, next_at, error), durable=True)

    async def outbox_bury(self, item_id: str, error: str) -> None:
        await self._worker.run(lambda c: ops.outbox_bury(c, item_id, error), durable=True)

    async def outbox_list(self, dead: bool, limit: int = 100) -> list[OutboxItem]:
        return await self._worker.run(lambda c: ops.outbox_list(c, dead, limit))

    async def outbox_get(self, item_id: str) -> OutboxItem | None:
        return await self._worker.run(lambda c: ops.outbox_get(c, item_id))

    async def outbox_revive(self, item_id: str | None, now: float) -> int:
        return await self._worker.run(lambda c: ops.outbox_revive(c, item_id, now), durable=True)

    async def outbox_purge(self, dead: bool, item_id: str | None = None) -> int:
        return await self._worker.run(lambda c: ops.outbox_purge(c, dead, item_id), durable=True)

    async def outbox_stats(self, now: float) -> OutboxStats:
        return await self._worker.run(lambda c: ops.outbox_stats(c, now))
