"""The outbox settlement and worker, against a real (in-memory SQLite) store and a scripted backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import pytest

from proxy.config import parse_config
from proxy.outbox import Delivery, OutboxCounters, OutboxWorker, backoff
from proxy.replies import decode_reply
from proxy.routes import RouteTable
from proxy.stores import SqliteStore
from proxy.stores.base import ClaimState, OutboxItem
from proxy.upstream import UpstreamClient, UpstreamResult


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class ScriptedUpstream(UpstreamClient):
    def __init__(self, *results: UpstreamResult) -> None:
        super().__init__()
        self.results = list(results)
        self.sent: list[dict[str, str]] = []

    async def send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> UpstreamResult:
        self.sent.append(dict(headers))
        return self.results.pop(0)


OK = UpstreamResult("2xx", 200, "text/plain", b"success")
DOWN = UpstreamResult("refused")


@pytest.fixture
async def store() -> AsyncIterator[SqliteStore]:
    s = SqliteStore(":memory:", clock=CLOCK)
    await s.open()
    yield s
    await s.close()


CLOCK = Clock()
TABLE = RouteTable.from_config(
    parse_config(
        {
            "routes": [
                {
                    "name": "mp",
                    "path": "/wx",
                    "protocol": "wechat-mp",
                    "token": "${T}",
                    "outbox": {"max_attempts": 3, "backoff_base": "1s", "backoff_max": "4s"},
                }
            ]
        },
        {"T": "t"},
    )
)


async def enqueue(store: SqliteStore, key: str | None = "mp:k1") -> str:
    d = Delivery("POST", "/wx?signature=s", {"x-wxgate-verified": "1"}, b"<xml/>", key)
    await store.outbox_put(OutboxItem("item1", "mp", d.encode(), 0, CLOCK.now, CLOCK.now))
    return "item1"


def worker(store: SqliteStore, up: ScriptedUpstream, events: list[str]) -> OutboxWorker:
    counters = OutboxCounters(
        lambda route, result: events.append(result), lambda route: events.append("dead")
    )
    return OutboxWorker(store, TABLE, up, counters, clock=CLOCK)


def test_backoff_is_full_jitter_capped() -> None:
    assert backoff(0, 1, 60, lambda lo, hi: hi) == 1
    assert backoff(3, 1, 60, lambda lo, hi: hi) == 8
    assert backoff(20, 1, 60, lambda lo, hi: hi) == 60
    assert backoff(5, 1, 60, lambda lo, hi: lo) == 0


def test_delivery_round_trip() -> None:
    d = Delivery("POST", "/p?q=1", {"a": "b"}, bytes(range(256)), None)
    assert Delivery.decode(d.encode()) == d


async def test_redelivery_marks_the_header_completes_dedup_and_empties_the_queue(store: SqliteStore) -> None:
    await enqueue(store)
    claim = await store.claim("mp:k1", 30, 600)
    await store.release("mp:k1", claim.token or "")
    up, events = ScriptedUpstream(OK), []
    assert await worker(store, up, events).run_once() == 1
    assert up.sent[0]["x-wxgate-redelivery"] == "1"
    assert events == ["delivered"]
    assert (await store.outbox_stats(CLOCK.now)).depth == 0
    done = await store.claim("mp:k1", 30, 600)
    assert done.state is ClaimState.DONE and done.reply is not None
    assert decode_reply(done.reply).body == b"success"


async def test_already_delivered_item_is_dropped_without_a_call(store: SqliteStore) -> None:
    await enqueue(store)
    claim = await store.claim("mp:k1", 30, 600)
    await store.complete("mp:k1", claim.token or "", b'{"s":200,"c":"","k":"ack","b":"","h":[]}', 600)
    up, events = ScriptedUpstream(), []
    await worker(store, up, events).run_once()
    assert up.sent == [] and events == ["duplicate"]
    assert (await store.outbox_stats(CLOCK.now)).depth == 0


async def test_item_in_flight_elsewhere_waits(store: SqliteStore) -> None:
    await enqueue(store)
    await store.claim("mp:k1", 30, 600)  # a sender retry holds it
    up = ScriptedUpstream()
    assert await worker(store, up, []).redeliver((await store.outbox_lease(CLOCK.now, 60, 1))[0]) == "busy"
    assert up.sent == [] and (await store.outbox_stats(CLOCK.now)).depth == 1


async def test_failures_back_off_then_bury(store: SqliteStore) -> None:
    await enqueue(store, key=None)
    up, events = ScriptedUpstream(DOWN, DOWN, DOWN), []
    w = worker(store, up, events)
    for _ in range(3):
        CLOCK.now += 10  # past any backoff (max 4 s)
        await w.run_once()
    assert events == ["failed", "failed", "failed", "dead"]
    stats = await store.outbox_stats(CLOCK.now)
    assert (stats.depth, stats.dead) == (0, 1)
    dead = await store.outbox_list(dead=True)
    assert dead[0].last_error == "refused"


async def test_removed_route_goes_to_the_dead_letters(store: SqliteStore) -> None:
    d = Delivery("POST", "/gone", {}, b"", None)
    await store.outbox_put(OutboxItem("x", "gone", d.encode(), 0, CLOCK.now, CLOCK.now))
    events: list[str] = []
    await worker(store, ScriptedUpstream(), events).run_once()
    assert events == ["dead"]
    assert "no longer configured" in (await store.outbox_list(dead=True))[0].last_error


async def test_worker_survives_store_outage(store: SqliteStore) -> None:
    w = worker(store, ScriptedUpstream(), [])
    w.interval = 0.01
    await store.close()
    task = asyncio.create_task(w.run())
    await asyncio.sleep(0.05)
    assert not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await store.open()
