"""The store contract (``proxy/stores/base.py``), run against every implementation: SQLite file, SQLite
memory, a real redis-server and a real 3-master Redis Cluster.

Expiry is driven by ``subject.advance``: the injected clock for SQLite, a short real sleep for Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from proxy.stores import ClaimState, OutboxItem, OutboxStats
from proxy.stores.base import Claim, Note, Sighting
from tests.proxy.stores.conftest import Subject

NEW, IN_FLIGHT, DONE = ClaimState.NEW, ClaimState.IN_FLIGHT, ClaimState.DONE
LEASE, TTL = 10.0, 60.0
SHORT, PAST_SHORT = 0.3, 0.45  # a lease/TTL that tests let run out
REPLY = b"<xml><MsgType><![CDATA[text]]></MsgType><Content>\xe4\xbd\xa0\xe5\xa5\xbd</Content></xml>\x00\xff"
NOW = 1_700_000_000.0


async def later(delay: float, coro: object) -> None:
    await asyncio.sleep(delay)
    await coro  # type: ignore[misc]


# -- dedup: claim / complete / release -----------------------------------------------------------------------
async def test_first_claim_is_new_and_every_claim_counts_an_attempt(subject: Subject) -> None:
    s = subject.store
    first = await s.claim("k", LEASE, TTL)
    assert (first.state, first.attempt, first.reply) == (NEW, 1, None)
    assert first.token
    second, third = await s.claim("k", LEASE, TTL), await s.claim("k", LEASE, TTL)
    assert (second.state, second.attempt, second.token) == (IN_FLIGHT, 2, None)
    assert (third.state, third.attempt) == (IN_FLIGHT, 3)
    other = await s.claim("other", LEASE, TTL)
    assert (other.state, other.attempt) == (NEW, 1)


async def test_complete_caches_the_exact_reply_for_later_claims(subject: Subject) -> None:
    s = subject.store
    first = await s.claim("k", LEASE, TTL)
    assert await s.complete("k", first.token or "", REPLY, TTL) is True
    for attempt in (2, 3):
        again = await s.claim("k", LEASE, TTL)
        assert (again.state, again.attempt, again.reply, again.token) == (DONE, attempt, REPLY, None)


async def test_an_empty_reply_is_cached_as_empty(subject: Subject) -> None:
    s = subject.store
    first = await s.claim("k", LEASE, TTL)
    await s.complete("k", first.token or "", b"", TTL)
    assert (await s.claim("k", LEASE, TTL)).reply == b""


async def test_a_late_success_is_kept_but_reported_as_not_owned(subject: Subject) -> None:
    s = subject.store
    old = await s.claim("k", SHORT, TTL)
    await subject.advance(PAST_SHORT)
    new = await s.claim("k", LEASE, TTL)
    assert (new.state, new.attempt) == (NEW, 2)
    assert new.token != old.token
    assert await s.complete("k", old.token or "", b"late", TTL) is False
    assert await s.complete("k", new.token or "", b"second", TTL) is False  # already DONE: not overwritten
    done = await s.claim("k", LEASE, TTL)
    assert (done.state, done.attempt, done.reply) == (DONE, 3, b"late")


async def test_release_lets_the_next_claim_take_over_and_attempts_keep_counting(subject: Subject) -> None:
    s = subject.store
    first = await s.claim("k", LEASE, TTL)
    assert (await s.claim("k", LEASE, TTL)).attempt == 2
    await s.release("k", first.token or "")
    taker = await s.claim("k", LEASE, TTL)
    assert (taker.state, taker.attempt) == (NEW, 3)
    assert taker.token not in (None, first.token)
    assert (await s.claim("k", LEASE, TTL)).state is IN_FLIGHT
    assert await s.complete("k", taker.token or "", REPLY, TTL) is True
    assert (await s.claim("k", LEASE, TTL)).reply == REPLY


async def test_release_by_a_non_owner_changes_nothing(subject: Subject) -> None:
    s = subject.store
    first = await s.claim("k", LEASE, TTL)
    await s.release("k", "not-the-owner")
    assert (await s.claim("k", LEASE, TTL)).state is IN_FLIGHT
    assert await s.complete("k", first.token or "", REPLY, TTL) is True


async def test_an_expired_lease_lets_the_next_claim_take_over(subject: Subject) -> None:
    s = subject.store
    await s.claim("k", SHORT, TTL)
    assert (await s.claim("k", SHORT, TTL)).state is IN_FLIGHT
    await subject.advance(PAST_SHORT)
    taker = await s.claim("k", LEASE, TTL)
    assert (taker.state, taker.attempt) == (NEW, 3)
    assert await s.complete("k", taker.token or "", REPLY, TTL) is True


async def test_records_expire_ttl_after_their_last_write(subject: Subject) -> None:
    s = subject.store
    done = await s.claim("done", SHORT, SHORT)
    await s.complete("done", done.token or "", REPLY, SHORT)
    released = await s.claim("released", SHORT, SHORT)
    await s.release("released", released.token or "")
    await subject.advance(PAST_SHORT)
    for key in ("done", "released"):
        fresh = await s.claim(key, LEASE, TTL)
        assert (fresh.state, fresh.attempt) == (NEW, 1), key


async def test_concurrent_claims_of_one_key_make_exactly_one_new(subject: Subject) -> None:
    claims = await asyncio.gather(*(subject.store.claim("k", LEASE, TTL) for _ in range(40)))
    assert Counter(c.state for c in claims) == {NEW: 1, IN_FLIGHT: 39}
    assert sorted(c.attempt for c in claims) == list(range(1, 41))


# -- dedup: settle -------------------------------------------------------------------------------------------
async def test_settle_returns_the_reply_promptly_after_complete(subject: Subject) -> None:
    s = subject.store
    first = await s.claim("k", LEASE, TTL)
    await s.claim("k", LEASE, TTL)
    started = time.monotonic()
    settled, _ = await asyncio.gather(
        s.settle("k", LEASE, 5.0), later(0.05, s.complete("k", first.token or "", REPLY, TTL))
    )
    assert time.monotonic() - started < 1.0
    assert (settled.state, settled.attempt, settled.reply) == (DONE, 2, REPLY)


async def test_settle_takes_over_after_release_with_the_same_attempt(subject: Subject) -> None:
    s = subject.store
    first = await s.claim("k", LEASE, TTL)
    await s.claim("k", LEASE, TTL)
    started = time.monotonic()
    settled, _ = await asyncio.gather(
        s.settle("k", LEASE, 5.0), later(0.05, s.release("k", first.token or ""))
    )
    assert time.monotonic() - started < 1.0
    assert (settled.state, settled.attempt) == (NEW, 2)
    assert settled.token not in (None, first.token)
    assert (await s.claim("k", LEASE, TTL)).state is IN_FLIGHT  # the settler owns it now
    assert await s.complete("k", settled.token or "", REPLY, TTL) is True
    assert (await s.claim("k", LEASE, TTL)).attempt == 4


async def test_settle_times_out_as_in_flight_without_counting_an_attempt(subject: Subject) -> None:
    s = subject.store
    await s.claim("k", LEASE, TTL)
    await s.claim("k", LEASE, TTL)
    started = time.monotonic()
    settled = await s.settle("k", LEASE, 0.3)
    assert 0.25 <= time.monotonic() - started < 2.0
    assert (settled.state, settled.attempt, settled.token) == (IN_FLIGHT, 2, None)
    assert (await s.claim("k", LEASE, TTL)).attempt == 3


async def test_settle_takes_over_an_expired_lease(subject: Subject) -> None:
    s = subject.store
    crashed = await s.claim("k", SHORT, TTL)
    await s.claim("k", SHORT, TTL)
    await subject.advance(PAST_SHORT)
    settled = await s.settle("k", LEASE, 2.0)
    assert (settled.state, settled.attempt) == (NEW, 2)
    assert await s.complete("k", crashed.token or "", b"late", TTL) is False
    assert (await s.claim("k", LEASE, TTL)).reply == b"late"


async def test_settle_on_a_done_key_returns_its_reply_at_once(subject: Subject) -> None:
    s = subject.store
    first = await s.claim("k", LEASE, TTL)
    await s.complete("k", first.token or "", REPLY, TTL)
    started = time.monotonic()
    settled = await s.settle("k", LEASE, 5.0)
    assert time.monotonic() - started < 0.5
    assert (settled.state, settled.attempt, settled.reply) == (DONE, 1, REPLY)


# -- nonce replay cache --------------------------------------------------------------------------------------
async def test_remember_is_true_once_per_ttl(subject: Subject) -> None:
    s = subject.store
    assert await s.remember("nonce-1", SHORT) is True
    assert await s.remember("nonce-1", SHORT) is False
    assert await s.remember("nonce-2", SHORT) is True
    await subject.advance(PAST_SHORT)
    assert await s.remember("nonce-1", SHORT) is True
    assert await s.remember("nonce-1", SHORT) is False


async def test_concurrent_remember_of_one_nonce_is_true_exactly_once(subject: Subject) -> None:
    seen = await asyncio.gather(*(subject.store.remember("nonce", TTL) for _ in range(20)))
    assert seen.count(True) == 1


async def test_remember_signed_tells_a_first_sighting_a_repeat_and_a_forgery(subject: Subject) -> None:
    s = subject.store
    assert await s.remember_signed("nonce:mp:sig", "body-a", SHORT) is Sighting.NEW
    assert await s.remember_signed("nonce:mp:sig", "body-a", SHORT) is Sighting.REPEAT
    assert await s.remember_signed("nonce:mp:sig", "body-b", SHORT) is Sighting.FORGED
    assert await s.remember_signed("nonce:mp:other", "body-a", SHORT) is Sighting.NEW
    await subject.advance(PAST_SHORT)
    assert await s.remember_signed("nonce:mp:sig", "body-b", SHORT) is Sighting.NEW


async def test_remember_signed_shares_remembers_key_for_the_signed_values(subject: Subject) -> None:
    """A route with dedup off (``remember``) and one with it on see the same signed values the same way."""
    s = subject.store
    assert await s.remember("nonce:mp:sig", TTL) is True
    assert await s.remember_signed("nonce:mp:sig", "body-a", TTL) is Sighting.FORGED
    assert await s.remember_signed("nonce:mp:new", "body-a", TTL) is Sighting.NEW
    assert await s.remember("nonce:mp:new", TTL) is False


async def test_a_forgery_sent_again_is_refused_again(subject: Subject) -> None:
    """A captured signature with a new body never becomes a 'repeat' that dedup would let through."""
    s = subject.store
    assert await s.remember_signed("nonce:mp:sig", "real", TTL) is Sighting.NEW
    for _ in range(3):
        assert await s.remember_signed("nonce:mp:sig", "forged", TTL) is Sighting.FORGED
        assert await s.claim_signed("nonce:mp:sig", "forged", TTL, "mp:forged", LEASE, TTL) == (
            Sighting.FORGED,
            None,
        )
    assert await s.remember_signed("nonce:mp:sig", "real", TTL) is Sighting.REPEAT


async def test_concurrent_remember_signed_of_one_request_is_new_exactly_once(subject: Subject) -> None:
    seen = await asyncio.gather(*(subject.store.remember_signed("nonce:mp:sig", "b", TTL) for _ in range(20)))
    assert Counter(seen) == {Sighting.NEW: 1, Sighting.REPEAT: 19}


async def test_claim_signed_checks_the_replay_cache_then_claims(subject: Subject) -> None:
    s = subject.store
    seen, claim = await s.claim_signed("nonce:mp:sig", "body-a", TTL, "mp:k1", LEASE, TTL)
    assert seen is Sighting.NEW and claim is not None
    assert (claim.state, claim.attempt) == (ClaimState.NEW, 1) and claim.token
    seen, again = await s.claim_signed("nonce:mp:sig", "body-a", TTL, "mp:k1", LEASE, TTL)
    assert (
        seen is Sighting.REPEAT
        and again is not None
        and (again.state, again.attempt) == (ClaimState.IN_FLIGHT, 2)
    )
    # The same signed values with another body: a forgery; nothing is claimed, no attempt is counted.
    assert await s.claim_signed("nonce:mp:sig", "body-b", TTL, "mp:k1", LEASE, TTL) == (Sighting.FORGED, None)
    assert await s.claim_signed("nonce:mp:sig", "body-b", TTL, "mp:k2", LEASE, TTL) == (
        Sighting.FORGED,
        None,
    )  # again
    assert await s.complete("mp:k1", claim.token, b"reply", TTL) is True
    seen, done = await s.claim_signed("nonce:mp:new", "body-c", TTL, "mp:k1", LEASE, TTL)
    assert seen is Sighting.NEW and done == Claim(ClaimState.DONE, 3, reply=b"reply")
    fresh = await s.claim("mp:k2", LEASE, TTL)  # the forgeries never touched the key they named
    assert (fresh.state, fresh.attempt) == (ClaimState.NEW, 1)


async def test_claim_signed_uses_the_keys_of_remember_signed_and_claim(subject: Subject) -> None:
    """Replicas running the one-call and the two-call form against one store must agree."""
    s = subject.store
    assert await s.remember_signed("nonce:mp:sig", "body-a", TTL) is Sighting.NEW
    first = await s.claim("mp:k", LEASE, TTL)
    seen, claim = await s.claim_signed("nonce:mp:sig", "body-a", TTL, "mp:k", LEASE, TTL)
    assert (
        seen is Sighting.REPEAT
        and claim is not None
        and (claim.state, claim.attempt) == (ClaimState.IN_FLIGHT, 2)
    )
    _, other = await s.claim_signed("nonce:mp:2", "body-a", TTL, "mp:k2", LEASE, TTL)
    assert await s.remember_signed("nonce:mp:2", "body-a", TTL) is Sighting.REPEAT
    assert await s.remember_signed("nonce:mp:2", "body-x", TTL) is Sighting.FORGED
    assert other is not None and (await s.claim("mp:k2", LEASE, TTL)).state is ClaimState.IN_FLIGHT
    assert first.token and await s.complete("mp:k", first.token, b"r", TTL) is True


async def test_claim_signed_expires_like_its_parts(subject: Subject) -> None:
    s = subject.store
    seen, claim = await s.claim_signed("nonce:mp:sig", "body-a", SHORT, "mp:k", SHORT, SHORT)
    assert seen is Sighting.NEW and claim is not None and claim.state is ClaimState.NEW
    await subject.advance(PAST_SHORT)
    seen, claim = await s.claim_signed("nonce:mp:sig", "body-b", SHORT, "mp:k", SHORT, SHORT)
    assert seen is Sighting.NEW and claim is not None and (claim.state, claim.attempt) == (ClaimState.NEW, 1)


async def test_concurrent_claim_signed_of_one_request_claims_exactly_once(subject: Subject) -> None:
    got = await asyncio.gather(
        *(subject.store.claim_signed("nonce:mp:sig", "b", TTL, "mp:k", LEASE, TTL) for _ in range(20))
    )
    assert Counter(seen for seen, _ in got) == {Sighting.NEW: 1, Sighting.REPEAT: 19}
    states = Counter(claim.state for _, claim in got if claim is not None)
    assert states == {ClaimState.NEW: 1, ClaimState.IN_FLIGHT: 19}


# -- outbox --------------------------------------------------------------------------------------------------
def item(item_id: str, *, created: float = NOW, due: float = NOW, attempts: int = 0) -> OutboxItem:
    payload = b"POST /wechat\r\n\r\n<xml>" + item_id.encode() + b"\x00\xff</xml>"
    return OutboxItem(item_id, "mp", payload, attempts, created, due)


async def ids(items: object) -> set[str]:
    return {i.id for i in await items}  # type: ignore[misc]


async def test_outbox_put_then_get_returns_the_item_exactly(subject: Subject) -> None:
    s = subject.store
    original = OutboxItem(
        "a", "pay-v3", b"\x00\x01binary\xff", 2, NOW - 5.5, NOW + 1.25, "HTTP 502 from backend"
    )
    await s.outbox_put(original)
    assert await s.outbox_get("a") == original
    assert await s.outbox_get("missing") is None


async def test_outbox_lease_hands_out_due_items_once_until_the_lease_lapses(subject: Subject) -> None:
    s = subject.store
    for it in (item("a", due=NOW - 1), item("b", due=NOW), item("c", due=NOW + 60)):
        await s.outbox_put(it)
    leased = await s.outbox_lease(NOW, 30, 10)
    assert sorted(leased, key=lambda i: i.id) == [item("a", due=NOW - 1), item("b")]
    assert await s.outbox_lease(NOW + 29, 30, 10) == []
    assert await ids(s.outbox_lease(NOW + 31, 30, 10)) == {"a", "b"}  # lapsed: a crashed worker's items
    assert await ids(s.outbox_lease(NOW + 60.5, 30, 10)) == {"c"}


async def test_outbox_lease_respects_the_limit(subject: Subject) -> None:
    s = subject.store
    for n in range(5):
        await s.outbox_put(item(f"i{n}", due=NOW + n))
    first = await s.outbox_lease(NOW + 10, 30, 2)
    assert [i.id for i in first] == ["i0", "i1"]  # most overdue first
    assert await ids(s.outbox_lease(NOW + 10, 30, 10)) == {"i2", "i3", "i4"}


async def test_concurrent_leasers_never_get_the_same_item(subject: Subject) -> None:
    s = subject.store
    await asyncio.gather(*(s.outbox_put(item(f"i{n}")) for n in range(40)))
    batches = await asyncio.gather(*(s.outbox_lease(NOW, 30, 15) for _ in range(4)))
    got = [i.id for batch in batches for i in batch]
    assert len(got) == len(set(got)) == 40


async def test_outbox_ack_removes_the_item(subject: Subject) -> None:
    s = subject.store
    await s.outbox_put(item("a"))
    await s.outbox_put(item("b"))
    await s.outbox_lease(NOW, 30, 10)
    await s.outbox_ack("a")
    assert await s.outbox_get("a") is None
    assert await ids(s.outbox_lease(NOW + 31, 30, 10)) == {"b"}
    assert (await s.outbox_stats(NOW)).depth == 1


async def test_outbox_retry_counts_the_attempt_and_is_not_due_before_next_at(subject: Subject) -> None:
    s = subject.store
    await s.outbox_put(item("a"))
    await s.outbox_lease(NOW, 300, 10)
    await s.outbox_retry("a", NOW + 5, "HTTP 503")
    got = await s.outbox_get("a")
    assert got is not None
    assert (got.attempts, got.next_at, got.last_error) == (1, NOW + 5, "HTTP 503")
    assert await s.outbox_lease(NOW + 4.9, 30, 10) == []
    again = await s.outbox_lease(NOW + 5, 30, 10)  # due at next_at although the 300 s lease had not run out
    assert [(i.id, i.attempts) for i in again] == [("a", 1)]
    await s.outbox_retry("a", NOW + 60, "timeout after 4.5 s")
    assert (await s.outbox_get("a") or item("x")).attempts == 2


async def test_outbox_defer_hands_the_item_back_without_counting_an_attempt(subject: Subject) -> None:
    s = subject.store
    await s.outbox_put(item("a", attempts=3))
    await s.outbox_lease(NOW, 300, 10)
    await s.outbox_defer("a", NOW + 5, "route 'old' is not configured here")
    got = await s.outbox_get("a")
    assert got is not None
    assert (got.attempts, got.next_at, got.last_error) == (3, NOW + 5, "route 'old' is not configured here")
    assert await s.outbox_lease(NOW + 4.9, 30, 10) == []
    again = await s.outbox_lease(NOW + 5, 30, 10)  # due at next_at although the 300 s lease had not run out
    assert [(i.id, i.attempts) for i in again] == [("a", 3)]
    await s.outbox_bury("a", "x")
    await s.outbox_defer("a", NOW, "x")  # a dead letter stays dead
    assert await s.outbox_list(dead=False) == []


async def test_outbox_bury_moves_the_item_to_the_dead_letters(subject: Subject) -> None:
    s = subject.store
    await s.outbox_put(item("a", attempts=7))
    await s.outbox_put(item("b"))
    await s.outbox_bury("a", "gave up after 8 attempts")
    dead = await s.outbox_list(dead=True)
    assert [(i.id, i.attempts, i.last_error, i.payload) for i in dead] == [
        ("a", 7, "gave up after 8 attempts", item("a").payload)
    ]
    assert [i.id for i in await s.outbox_list(dead=False)] == ["b"]
    assert await ids(s.outbox_lease(NOW + 3600, 30, 10)) == {"b"}
    assert await s.outbox_get("a") == dead[0]
    assert await s.outbox_stats(NOW) == OutboxStats(depth=1, oldest_age=0.0, dead=1)


async def test_outbox_list_orders_queued_items_by_due_time_and_limits(subject: Subject) -> None:
    s = subject.store
    for name, due in (("late", NOW + 30), ("early", NOW + 10), ("middle", NOW + 20)):
        await s.outbox_put(item(name, due=due))
    assert [i.id for i in await s.outbox_list(dead=False)] == ["early", "middle", "late"]
    assert [i.id for i in await s.outbox_list(dead=False, limit=2)] == ["early", "middle"]
    assert await s.outbox_list(dead=True) == []


async def test_outbox_revive_one_and_all(subject: Subject) -> None:
    s = subject.store
    for name in ("a", "b", "c"):
        await s.outbox_put(item(name, attempts=8))
        await s.outbox_bury(name, "exhausted")
    assert await s.outbox_revive("a", NOW + 10) == 1
    revived = await s.outbox_get("a")
    assert revived is not None
    # A replay starts over: its age as well as its attempts, so max_age gives it a full life again.
    assert (revived.attempts, revived.next_at, revived.created_at) == (0, NOW + 10, NOW + 10)
    assert (await s.outbox_stats(NOW + 10)).oldest_age == 0.0
    assert await ids(s.outbox_list(dead=True)) == {"b", "c"}
    assert await s.outbox_revive("a", NOW + 10) == 0  # not dead any more
    assert await s.outbox_revive("missing", NOW) == 0
    assert await s.outbox_revive(None, NOW + 20) == 2
    assert await s.outbox_list(dead=True) == []
    assert await ids(s.outbox_lease(NOW + 20, 30, 10)) == {"a", "b", "c"}


async def test_outbox_purge_one_or_all_of_either_kind(subject: Subject) -> None:
    s = subject.store
    for name in ("q1", "q2", "d1", "d2"):
        await s.outbox_put(item(name))
    await s.outbox_bury("d1", "x")
    await s.outbox_bury("d2", "x")
    assert await s.outbox_purge(dead=True, item_id="q1") == 0  # queued, not dead
    assert await s.outbox_purge(dead=True, item_id="d1") == 1
    assert await s.outbox_purge(dead=False, item_id="q1") == 1
    assert await s.outbox_purge(dead=False) == 1
    assert await s.outbox_purge(dead=True) == 1
    assert [await s.outbox_get(n) for n in ("q1", "q2", "d1", "d2")] == [None] * 4
    assert await s.outbox_stats(NOW) == OutboxStats(depth=0, oldest_age=0.0, dead=0)


async def test_outbox_revive_and_purge_all_handle_many_items(subject: Subject) -> None:
    s = subject.store
    names = [f"i{n}" for n in range(1100)]  # more than one Redis script chunk (500)
    await asyncio.gather(*(s.outbox_put(item(n)) for n in names))
    await asyncio.gather(*(s.outbox_bury(n, "x") for n in names))
    assert await s.outbox_revive(None, NOW) == 1100
    assert (await s.outbox_stats(NOW)).depth == 1100
    assert await s.outbox_purge(dead=False) == 1100
    assert await s.outbox_stats(NOW) == OutboxStats(depth=0, oldest_age=0.0, dead=0)


async def test_outbox_stats_report_depth_oldest_age_and_dead_letters(subject: Subject) -> None:
    s = subject.store
    assert await s.outbox_stats(NOW) == OutboxStats(depth=0, oldest_age=0.0, dead=0)
    await s.outbox_put(item("old", created=NOW - 30))
    await s.outbox_put(item("new", created=NOW - 10))
    assert await s.outbox_stats(NOW) == OutboxStats(depth=2, oldest_age=30.0, dead=0)
    await s.outbox_bury("old", "x")
    assert await s.outbox_stats(NOW) == OutboxStats(depth=1, oldest_age=10.0, dead=1)


# -- lookup: inspect / resolve --------------------------------------------------------------------------------
async def test_inspect_shows_a_record_through_its_states_without_touching_it(subject: Subject) -> None:
    s = subject.store
    assert await s.inspect("k") is None
    before = time.time() - 5  # Redis' clock vs ours: loose bounds
    first = await s.claim("k", LEASE, TTL, Note("4bf92f3577b34da6a3ce929d0e0e4736"))
    seen = await s.inspect("k")
    assert seen is not None
    assert (seen.state, seen.attempt, seen.trace_id, seen.reply) == (
        "in_flight",
        1,
        "4bf92f3577b34da6a3ce929d0e0e4736",
        None,
    )
    assert seen.first_seen is not None and seen.lease_until is not None and seen.expires_at is not None
    if subject.kind.startswith("redis"):
        assert before < seen.first_seen < time.time() + 5
    assert seen.lease_until - seen.first_seen == pytest.approx(LEASE, abs=1)
    assert (await s.inspect("k")) == seen  # looking changes nothing
    await s.claim("k", LEASE, TTL, Note("other-trace"))  # a retry: attempt 2, the first trace stays
    await s.complete("k", first.token or "", REPLY, TTL)
    done = await s.inspect("k")
    assert done is not None
    assert (done.state, done.attempt, done.trace_id, done.reply, done.lease_until) == (
        "done",
        2,
        "4bf92f3577b34da6a3ce929d0e0e4736",
        REPLY,
        None,
    )
    assert done.first_seen == seen.first_seen


async def test_a_released_record_says_so(subject: Subject) -> None:
    s = subject.store
    first = await s.claim("k", LEASE, TTL)
    await s.release("k", first.token or "")
    seen = await s.inspect("k")
    assert seen is not None and (seen.state, seen.attempt, seen.trace_id) == ("released", 1, "")


async def test_a_first_claim_files_the_record_under_its_aliases(subject: Subject) -> None:
    s = subject.store
    note = Note("", ("r:alias-msgid", "r:alias-from-time"))
    await s.claim("r:key", LEASE, TTL, note)
    assert await s.resolve("r:alias-msgid") == "r:key"
    assert await s.resolve("r:alias-from-time") == "r:key"
    assert await s.resolve("r:unknown") is None
    # Later claims of the key write no aliases (nor do they move existing ones).
    await s.claim("r:key", LEASE, TTL, Note("", ("r:late-alias",)))
    assert await s.resolve("r:late-alias") is None
    _, claim = await s.claim_signed("sig", "body", TTL, "r:key2", LEASE, TTL, Note("", ("r:signed-alias",)))
    assert claim is not None and await s.resolve("r:signed-alias") == "r:key2"


async def test_aliases_expire_with_the_ttl(subject: Subject) -> None:
    s = subject.store
    await s.claim("r:key", SHORT, SHORT, Note("", ("r:alias",)))
    await subject.advance(PAST_SHORT)
    assert await s.resolve("r:alias") is None
    assert await s.inspect("r:key") is None
