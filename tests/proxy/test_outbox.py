"""The outbox settlement and worker, against a real (in-memory SQLite) store and a scripted backend."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.config import parse_config
from proxy.pipeline.outbox import Delivery, OutboxCounters, OutboxWorker, backoff, reply_context
from proxy.pipeline.replies import decode_reply
from proxy.pipeline.routes import RouteTable
from proxy.protocols.wechat_pay_v3 import V2Notice
from proxy.protocols.wxcrypt import ReplyContext
from proxy.stores import SqliteStore
from proxy.stores.base import ClaimState, OutboxItem, StoreUnavailable
from proxy.tools import traffic
from proxy.upstream.client import UpstreamClient, UpstreamResult


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


async def test_item_in_flight_elsewhere_waits_without_using_an_attempt(store: SqliteStore) -> None:
    await enqueue(store)
    await store.claim("mp:k1", 30, 600)  # a sender retry holds it
    up = ScriptedUpstream()
    w = worker(store, up, [])
    for _ in range(20):  # however long the other delivery takes, waiting for it costs no attempt
        assert await w.redeliver((await store.outbox_lease(CLOCK.now + 10**6, 60, 1))[0]) == "busy"
    got = await store.outbox_get("item1")
    assert up.sent == [] and got is not None and got.attempts == 0


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


async def test_an_unknown_route_is_handed_back_untried_until_max_age(store: SqliteStore) -> None:
    """Another replica's route (rolling update, renamed route): not this replica's to bury."""
    d = Delivery("POST", "/new", {}, b"", None)
    await store.outbox_put(OutboxItem("x", "new-route", d.encode(), 2, CLOCK.now, CLOCK.now))
    events: list[str] = []
    up = ScriptedUpstream()
    w = worker(store, up, events)
    assert await w.run_once() == 1
    got = await store.outbox_get("x")
    assert got is not None and got.attempts == 2 and "not configured" in got.last_error
    # Due at once for a replica that knows the route; this one steps back (run() pauses for hand_back).
    assert got.next_at <= CLOCK.now and w.stepped_back
    CLOCK.now += 86400 - 1  # still inside the default max_age: handed back again
    assert await w.run_once() == 1
    assert (await store.outbox_stats(CLOCK.now)).dead == 0
    CLOCK.now += 2 * w.hand_back
    assert await w.run_once() == 1
    assert events == ["dead"] and up.sent == []
    assert "not configured" in (await store.outbox_list(dead=True))[0].last_error


async def test_an_unknown_route_keeps_its_items_for_the_owning_routes_max_age(store: SqliteStore) -> None:
    """A replica whose routes keep 24 h must not bury a 7-day route's items it does not know."""
    week = 7 * 86400.0
    d = Delivery("POST", "/pay", {}, b"", None, max_age=week)
    await store.outbox_put(OutboxItem("y", "pay-legacy", d.encode(), 0, CLOCK.now, CLOCK.now))
    events: list[str] = []
    w = worker(store, ScriptedUpstream(), events)
    CLOCK.now += 25 * 3600
    assert await w.run_once() == 1
    assert events == [] and (await store.outbox_stats(CLOCK.now)).dead == 0
    CLOCK.now += week
    assert await w.run_once() == 1
    assert events == ["dead"]


def test_items_are_leased_for_as_long_as_their_redelivery_can_take() -> None:
    slow = RouteTable.from_config(
        parse_config(
            {
                "routes": [
                    {
                        "name": "mp",
                        "path": "/wx",
                        "protocol": "wechat-mp",
                        "token": "${T}",
                        "backend_timeout": "120s",
                    }
                ]
            },
            {"T": "t"},
        )
    )
    w = OutboxWorker(SqliteStore(":memory:"), slow, ScriptedUpstream())
    assert w.item_lease > 120
    w.use(TABLE)  # a reload to the default 30 s backend timeout
    assert w.item_lease == 60.0


async def test_a_stopped_worker_leases_nothing_more(store: SqliteStore) -> None:
    await enqueue(store)
    up = ScriptedUpstream(OK)
    w = worker(store, up, [])
    w.stop()
    assert await w.run_once() == 0
    await asyncio.wait_for(w.run(), 1.0)  # returns instead of polling on
    assert up.sent == [] and (await store.outbox_stats(CLOCK.now)).depth == 1


async def test_a_redelivery_cut_short_releases_its_claim_and_is_due_again_now(store: SqliteStore) -> None:
    class Hanging(ScriptedUpstream):
        async def send(
            self, method: str, url: str, headers: Mapping[str, str], body: bytes, timeout: float
        ) -> UpstreamResult:
            await asyncio.sleep(3600)
            raise AssertionError

    await enqueue(store)
    w = worker(store, Hanging(), [])
    task = asyncio.create_task(w.run_once())
    await asyncio.sleep(0.1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert (await store.claim("mp:k1", 30, 600)).state is ClaimState.NEW  # not held until its lease ends
    assert [i.id for i in await store.outbox_lease(CLOCK.now, 60, 10)] == ["item1"]


async def test_a_store_outage_is_logged_once_not_every_poll(
    store: SqliteStore, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = worker(store, ScriptedUpstream(), [])
    w.interval = 0.01
    lease = store.outbox_lease

    async def down(now: float, lease: float, limit: int) -> list[OutboxItem]:
        raise StoreUnavailable("redis at 127.0.0.1:1 refused the connection")

    monkeypatch.setattr(store, "outbox_lease", down)
    with caplog.at_level(logging.INFO, logger="wxgate"):
        task = asyncio.create_task(w.run())
        await asyncio.sleep(0.3)  # some 30 failed polls
        monkeypatch.setattr(store, "outbox_lease", lease)
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert any("available again" in r.getMessage() for r in caplog.records)


async def test_an_unexpected_error_in_a_poll_does_not_end_redelivery(
    store: SqliteStore, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    w = worker(store, ScriptedUpstream(OK), events)
    w.interval = 0.01
    await enqueue(store)
    lease = store.outbox_lease
    calls = 0

    async def broken_once(now: float, lease_for: float, limit: int) -> list[OutboxItem]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in one poll")
        return await lease(now, lease_for, limit)

    monkeypatch.setattr(store, "outbox_lease", broken_once)
    with caplog.at_level(logging.ERROR, logger="wxgate"):
        task = asyncio.create_task(w.run())
        for _ in range(100):
            await asyncio.sleep(0.01)
            if events:
                break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert events == ["delivered"]  # the next poll redelivered the item
    assert any("failed unexpectedly" in r.getMessage() for r in caplog.records)


async def test_a_pay_v2_notice_at_a_v3_route_is_cached_as_v2_xml_after_redelivery(
    store: SqliteStore, tmp_path: Path
) -> None:
    """Console refunds send v2 XML to a v3 URL: a retry after the redelivery must get the v2 SUCCESS XML the
    backend answered (as the first delivery would have), not v3's 204."""
    cert = tmp_path / "platform.pem"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert.write_bytes(traffic.platform_certificate(key, 0x5157F09E, CLOCK.now))
    route = {
        "name": "pay3",
        "path": "/pay/v3",
        "protocol": "wechat-pay-v3",
        "apiv3_key": "${V3}",
        "mch_id": "1900000109",
        "platform_certificates": [str(cert)],
        "api_key": "${PAY}",
    }
    env = {"V3": "0123456789abcdef0123456789abcdef", "PAY": "192006250b4c09247ec02edce69f6a2d"}
    table = RouteTable.from_config(parse_config({"routes": [route]}, env))
    d = Delivery("POST", "/pay/v3", {}, b"<xml/>", "pay3:k", reply_context(V2Notice()))
    await store.outbox_put(OutboxItem("v2", "pay3", d.encode(), 0, CLOCK.now, CLOCK.now))
    xml = b"<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>"
    up = ScriptedUpstream(UpstreamResult("2xx", 200, "text/xml", xml))
    assert await OutboxWorker(store, table, up, clock=CLOCK).run_once() == 1
    done = await store.claim("pay3:k", 30, 600)
    assert done.state is ClaimState.DONE and done.reply is not None
    reply = decode_reply(done.reply)
    assert (reply.status, b"SUCCESS" in reply.body) == (200, True), reply


def test_the_reply_context_survives_the_outbox() -> None:
    ctx = ReplyContext("current", "current", "1700000000", "nonce", json=True)
    d = Delivery("POST", "/wx", {}, b"", None, reply_context(ctx))
    assert Delivery.decode(d.encode()).verified().seal_context == ctx
    assert Delivery.decode(Delivery("POST", "/wx", {}, b"", None).encode()).verified().seal_context is None
