from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from prometheus_client import CollectorRegistry

from proxy.observability.metrics import Metrics
from proxy.observability.probes import Probes
from proxy.stores import OutboxItem, OutboxStats, SqliteStore, StoreUnavailable


def gauge(m: Metrics, name: str) -> float | None:
    return m.registry.get_sample_value(name)


async def test_outbox_gauges_follow_the_store() -> None:
    m = Metrics(CollectorRegistry())
    async with SqliteStore(":memory:") as store:
        await store.outbox_put(OutboxItem("a", "mp", b"{}", 0, created_at=100.0, next_at=100.0))
        await store.outbox_put(OutboxItem("b", "mp", b"{}", 0, created_at=160.0, next_at=160.0))
        await store.outbox_bury("b", "5xx 500")
        await Probes(m, store, clock=lambda: 190.0).sample_outbox()
    assert gauge(m, "wxgate_outbox_depth") == 1
    assert gauge(m, "wxgate_outbox_oldest_age_seconds") == 90
    assert gauge(m, "wxgate_outbox_dead_letters") == 1
    assert gauge(m, "wxgate_store_up") == 1


class Flaky(SqliteStore):
    down = False

    async def outbox_stats(self, now: float) -> OutboxStats:
        if self.down:
            raise StoreUnavailable("redis at 10.0.0.5:6379 refused the connection")
        return OutboxStats(depth=4, oldest_age=12.0, dead=0)


async def test_an_unreadable_store_sets_up_to_zero_keeps_the_last_depth_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = Metrics(CollectorRegistry())
    store = Flaky(":memory:")
    probes = Probes(m, store)
    await probes.sample_outbox()
    store.down = True
    await probes.sample_outbox()
    await probes.sample_outbox()
    assert (gauge(m, "wxgate_store_up"), gauge(m, "wxgate_outbox_depth")) == (0, 4)
    assert [r.getMessage() for r in caplog.records].count(
        "outbox gauges stale: store unreadable (redis at 10.0.0.5:6379 refused the connection)"
    ) == 1
    store.down = False
    await probes.sample_outbox()
    assert gauge(m, "wxgate_store_up") == 1


async def test_a_blocked_loop_shows_as_lag() -> None:
    m = Metrics(CollectorRegistry())
    async with SqliteStore(":memory:") as store:
        task = asyncio.create_task(Probes(m, store, outbox_interval=60, lag_interval=0.01).run())
        await asyncio.sleep(0.05)
        time.sleep(0.12)  # what a blocking call in a hook does to every flow
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert (gauge(m, "wxgate_event_loop_lag_seconds_count") or 0) >= 3
    assert (
        gauge(
            m,
            "wxgate_event_loop_lag_seconds_bucket",
        )
        is None
    )
    slow = m.registry.get_sample_value("wxgate_event_loop_lag_seconds_bucket", {"le": "0.05"})
    total = m.registry.get_sample_value("wxgate_event_loop_lag_seconds_count")
    assert slow is not None and total is not None and total - slow >= 1  # one timer fired >= 50 ms late
