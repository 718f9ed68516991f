"""The dedup addon against a real in-memory SQLite store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mitmproxy import http

from addons.dedup import Dedup
from addons.verify import Verify
from proxy.pipeline.claims import raw_key
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.outbox import Delivery, StoreSettlement
from proxy.pipeline.replies import encode_reply
from proxy.protocols.base import Reply
from proxy.stores import SqliteStore
from proxy.stores.base import NO_NOTE, OutboxItem, Store, StoreUnavailable
from proxy.tools.sender import mp_message, mp_text
from tests.addons.conftest import TOKEN, Nonces, flow_of, mp_flow, routed, table


@pytest.fixture
async def store() -> AsyncIterator[SqliteStore]:
    s = SqliteStore(":memory:")
    await s.open()
    yield s
    await s.close()


async def arrive(store: SqliteStore, msg_id: int = 7, **route: object) -> tuple[object, Exchange]:
    f = mp_flow(msg_id)
    ex = routed(f, table(**route))
    await Verify(Nonces().remember).request(f)
    await Dedup(store, StoreSettlement(store)).request(f)
    return f, ex


async def test_first_delivery_claims_and_proceeds(store: SqliteStore) -> None:
    f, ex = await arrive(store)
    assert f.response is None  # type: ignore[attr-defined]
    assert (ex.outcome.dedup, ex.outcome.attempt) == ("new", 1)
    assert ex.dedup_token and len(ex.outcome.dedup_key) == 16


async def test_done_duplicate_replays_the_cached_reply(store: SqliteStore) -> None:
    _, first = await arrive(store)
    reply = Reply(200, b"<xml>cached</xml>", "application/xml", "passive")
    assert first.dedup_key_raw and first.dedup_token
    await store.complete(first.dedup_key_raw, first.dedup_token, encode_reply(reply), 600)
    f, ex = await arrive(store)
    assert f.response.content == b"<xml>cached</xml>"  # type: ignore[attr-defined]
    assert (ex.outcome.dedup, ex.outcome.attempt, ex.outcome.reply_kind) == ("duplicate_done", 2, "passive")


async def test_in_flight_duplicate_waits_for_the_first(store: SqliteStore) -> None:
    _, first = await arrive(store)
    assert first.dedup_key_raw and first.dedup_token
    reply = Reply(200, b"success", "text/plain", "ack")

    async def finish() -> None:
        await asyncio.sleep(0.2)
        await store.complete(first.dedup_key_raw or "", first.dedup_token or "", encode_reply(reply), 600)

    task = asyncio.create_task(finish())
    f, ex = await arrive(store)
    await task
    assert f.response.content == b"success"  # type: ignore[attr-defined]
    assert ex.outcome.dedup == "duplicate_inflight"


async def test_in_flight_duplicate_at_its_deadline_follows_the_policy(store: SqliteStore) -> None:
    await arrive(store, deadline="0.2s", on_backend_failure="fail")
    f, ex = await arrive(store, deadline="0.2s", on_backend_failure="fail")
    assert f.response.status_code == 502  # type: ignore[attr-defined]
    assert ex.outcome.deadline == "fail"


async def test_in_flight_duplicate_acknowledged_at_its_deadline_queues_itself_first(
    store: SqliteStore,
) -> None:
    # The first attempt's holder never settles: killed with -9, or its own outbox write failed. Acknowledging
    # the retry on its word alone lost the notification (seen in tests/reliability chaos runs).
    await arrive(store, deadline="0.2s")
    f, ex = await arrive(store, deadline="0.2s")
    assert (f.response.status_code, f.response.content) == (200, b"success")  # type: ignore[attr-defined]
    queued = await store.outbox_list(dead=False)
    assert len(queued) == 1 and ex.outcome.outbox == "queued"
    assert Delivery.decode(queued[0].payload).dedup_key == ex.dedup_key_raw


class NoOutboxStore(SqliteStore):
    async def outbox_put(self, item: OutboxItem) -> None:
        raise StoreUnavailable("redis://127.0.0.1:1 refused the connection")


async def test_in_flight_duplicate_that_cannot_be_queued_is_not_acknowledged() -> None:
    store = NoOutboxStore(":memory:")
    await store.open()
    try:
        await arrive(store, deadline="0.2s")
        f, ex = await arrive(store, deadline="0.2s")
        assert f.response.status_code == 502  # type: ignore[attr-defined]
        assert ex.outcome.outbox == "failed"
    finally:
        await store.close()


async def test_released_first_attempt_is_taken_over(store: SqliteStore) -> None:
    _, first = await arrive(store)
    await store.release(first.dedup_key_raw or "", first.dedup_token or "")
    f, ex = await arrive(store)
    assert f.response is None  # type: ignore[attr-defined]
    assert (ex.outcome.dedup, ex.outcome.attempt) == ("new", 2)


async def test_configured_fields_override_the_recipe(store: SqliteStore) -> None:
    f = mp_flow(9)
    ex = routed(f, table(dedup={"fields": ["FromUserName", "Content"]}))
    await Verify(Nonces().remember).request(f)
    assert raw_key(ex.route, ex.verified) == 'fields|[["FromUserName","oUser"],["Content","hi"]]'


async def test_configured_fields_join_unambiguously() -> None:
    keys = set()
    for user, content in (("oUser", "a|b"), ("oUser|a", "b")):
        f = flow_of(mp_message("/wx", TOKEN, mp_text("gh", user, content, 9)))
        ex = routed(f, table(dedup={"fields": ["FromUserName", "Content"]}))
        await Verify(Nonces().remember).request(f)
        keys.add(raw_key(ex.route, ex.verified))
    assert len(keys) == 2


async def test_configured_fields_missing_from_the_message_fall_back_to_its_digest() -> None:
    """A key of the fields that are there would merge every message lacking the others (e.g. events)."""
    keys, now = [], int(time.time())
    for content in ("one", "two", "two"):
        f = mp_flow(9, content, now=now)
        ex = routed(f, table(dedup={"fields": ["FromUserName", "Event"]}))
        await Verify(Nonces().remember).request(f)
        keys.append(raw_key(ex.route, ex.verified) or "")
    assert keys[0].startswith("digest|") and keys[0] != keys[1] and keys[1] == keys[2]


class DownStore(SqliteStore):
    async def claim(self, key: str, lease: float, ttl: float, note: Any = NO_NOTE):  # type: ignore[no-untyped-def]
        raise StoreUnavailable("redis://127.0.0.1:1 refused the connection")

    async def claim_signed(self, *args: object):  # type: ignore[no-untyped-def]
        raise StoreUnavailable("redis://127.0.0.1:1 refused the connection")


@pytest.mark.parametrize(("policy", "answered"), [("fail_open", False), ("fail_closed", True)])
async def test_store_down(policy: str, answered: bool) -> None:
    store = DownStore(":memory:")
    await store.open()
    try:
        f, ex = await arrive(store, dedup={"store_down": policy})  # type: ignore[arg-type]
        assert (f.response is not None) == answered  # type: ignore[attr-defined]
        assert ex.outcome.dedup == "store_error"
    finally:
        await store.close()


class HungStore(SqliteStore):
    async def claim(self, key: str, lease: float, ttl: float, note: Any = NO_NOTE):  # type: ignore[no-untyped-def]
        await asyncio.sleep(30)  # a store that accepted the connection and never answers
        raise AssertionError("unreachable")

    async def claim_signed(self, *args: object):  # type: ignore[no-untyped-def]
        await asyncio.sleep(30)
        raise AssertionError("unreachable")


async def test_a_hung_store_is_treated_as_down_before_the_deadline() -> None:
    store = HungStore(":memory:")
    await store.open()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        f, ex = await arrive(store, deadline="0.3s", dedup={"store_down": "fail_closed"})  # type: ignore[arg-type]
        assert loop.time() - started < 0.5
        assert f.response.status_code == 502  # type: ignore[attr-defined]
        assert (ex.outcome.dedup, ex.outcome.reason) == ("store_error", "store_unavailable")
    finally:
        await store.close()


class CountingStore(SqliteStore):
    """Counts store calls by name (the real in-memory store answers them)."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.calls: list[str] = []

    async def claim(self, key: str, lease: float, ttl: float, note: Any = NO_NOTE):  # type: ignore[no-untyped-def]
        self.calls.append("claim")
        return await super().claim(key, lease, ttl, note)

    async def remember(self, key: str, ttl: float) -> bool:
        self.calls.append("remember")
        return await super().remember(key, ttl)

    async def remember_signed(self, signed: str, body: str, ttl: float):  # type: ignore[no-untyped-def]
        self.calls.append("remember_signed")
        return await super().remember_signed(signed, body, ttl)

    async def claim_signed(self, *args: Any):  # type: ignore[no-untyped-def]
        self.calls.append("claim_signed")
        return await super().claim_signed(*args)


@pytest.fixture
async def counting() -> AsyncIterator[CountingStore]:
    s = CountingStore()
    await s.open()
    yield s
    await s.close()


async def chain(store: Store, *flows: http.HTTPFlow, **route: object) -> list[Exchange]:
    exs = [routed(f, table(**route)) for f in flows]
    for f in flows:
        await Verify(store.remember).request(f)
        await Dedup(store, StoreSettlement(store)).request(f)
    return exs


async def test_the_replay_check_and_the_claim_are_one_store_call(counting: CountingStore) -> None:
    first, again = mp_flow(content="real"), mp_flow(content="real")
    again.request = first.request.copy()
    exs = await chain(counting, first, again, deadline="0.3s")
    assert counting.calls[:2] == ["claim_signed", "claim_signed"]  # then the retry's wait (settle) at most
    assert first.response is None and exs[0].outcome.dedup == "new"
    assert not exs[0].repeat and exs[1].repeat  # an exact repeat: a retry, answered from the dedup record
    assert exs[1].outcome.dedup == "duplicate_inflight"  # the first is still being forwarded


async def test_a_signature_reused_with_another_body_is_refused_and_claims_nothing(store: SqliteStore) -> None:
    first, forged, again = mp_flow(content="real"), mp_flow(content="forged"), mp_flow(content="real")
    forged.request.query = first.request.query  # the captured signed values, a new body
    again.request = first.request.copy()
    reply = Reply(200, b"success", "text/plain", "ack")
    (ex,) = await chain(store, first)
    assert ex.dedup_key_raw and ex.dedup_token
    await store.complete(ex.dedup_key_raw, ex.dedup_token, encode_reply(reply), 600)
    forged_again = mp_flow(content="forged")
    forged_again.request = forged.request.copy()
    for f in (forged, forged_again):  # sent twice, the forgery is no "exact repeat" of anything accepted
        (bad,) = await chain(store, f)
        assert f.response is not None and f.response.status_code == 403
        assert (bad.outcome.verdict, bad.outcome.reason) == ("rejected", "replayed_nonce")
    (retry,) = await chain(store, again)
    # The forgery took no attempt: the genuine retry is the second delivery of this message.
    assert (retry.outcome.dedup, retry.outcome.attempt) == ("duplicate_done", 2)
    assert again.response is not None and again.response.content == b"success"


async def test_without_a_dedup_key_a_first_sighting_proceeds_and_a_repeat_is_refused(
    counting: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every recipe now yields a key (an id or the digest); a protocol may still return None.
    monkeypatch.setattr("addons.dedup.raw_key", lambda route, verified: None)
    first, again = mp_flow(), mp_flow()
    again.request = first.request.copy()
    exs = await chain(counting, first, again)
    assert counting.calls == ["remember_signed", "remember_signed"]
    assert first.response is None and exs[0].outcome.dedup == "no_key"
    assert again.response is not None and again.response.status_code == 403  # a retry or a replay: unknown
    assert exs[1].outcome.reason == "replayed_nonce"
