"""Deadline policies: when wxgate acknowledges on the backend's behalf, how long a claim is held, how much of
the deadline is left, and that a store call never holds the sender's answer past it (ACK_GRACE aside)."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy.config import parse_config
from proxy.pipeline.exchange import Exchange, Routed
from proxy.pipeline.policy import (
    ACK_GRACE,
    acknowledges,
    before_deadline,
    claim_lease,
    deadline,
    dedup_ttl,
    time_left,
)
from proxy.pipeline.routes import RouteRuntime, build_route
from proxy.protocols.base import Verified
from proxy.stores.base import StoreUnavailable

SECRETS = {"T": "unit-token"}
FIELDS = {"wechat-mp": {"token": "${T}"}, "hmac": {"secret": "${T}"}, "wechat-pay-v2": {"api_key": "${T}"}}


def route(protocol: str = "wechat-mp", **extra: object) -> RouteRuntime:
    fields = {"name": "r", "path": "/r", "protocol": protocol, **FIELDS[protocol], **extra}
    if protocol == "wechat-pay-v2":
        fields["mch_id"] = "1900000001"
    config = parse_config({"routes": [fields]}, SECRETS)
    return build_route(config, config.routes[0])


def exchange(r: RouteRuntime, attempt: int = 1, age: float = 0.0, verified: Verified | None = None) -> Routed:
    ex = Exchange(started=time.perf_counter() - age, route=r, verified=verified)
    ex.outcome.attempt = attempt
    return ex.routed()


# -- acknowledges ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 4, 9])
def test_ack_always_acknowledges_and_fail_never_does(attempt: int) -> None:
    assert acknowledges(exchange(route(on_backend_failure="ack"), attempt))
    assert not acknowledges(exchange(route(on_backend_failure="fail"), attempt))


def test_relay_acknowledges_only_the_senders_last_expected_attempt() -> None:
    # WeChat delivers a message four times at most: earlier attempts are told to retry, so the retry can replay
    # the backend's late reply; the fourth is acknowledged, since nothing would come after it
    mp = route(on_backend_failure="relay")
    assert [acknowledges(exchange(mp, n)) for n in (1, 2, 3, 4, 5)] == [False, False, False, True, True]
    # a sender whose retries are not counted: every attempt may be its last
    assert acknowledges(exchange(route("hmac", on_backend_failure="relay"), 1))


def test_unset_policy_is_the_senders_default() -> None:
    assert acknowledges(exchange(route("wechat-mp")))  # users must never see an error
    assert not acknowledges(exchange(route("wechat-pay-v2")))  # WeChat Pay retries on its own schedule


# -- claim_lease -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lease", "deadline", "backend_timeout", "held"),
    [
        ("30s", "4.5s", "30s", 39.5),
        ("60s", "4.5s", "10s", 60.0),
        ("1s", "4.5s", "2s", 11.5),
        ("1s", "20s", "4s", 29.0),
    ],
)
def test_a_claim_outlasts_the_backend_call_it_protects(
    lease: str, deadline: str, backend_timeout: str, held: float
) -> None:
    """A call starts before the deadline (after a wait for a backend slot, at most until then) and runs at most
    backend_timeout: the claim lasts that long and 5 s more."""
    r = route(dedup={"lease": lease}, deadline=deadline, backend_timeout=backend_timeout)
    assert claim_lease(r) == held


# -- deadline, time_left, dedup_ttl ----------------------------------------------------------------------------


def test_time_left_counts_down_from_the_routes_deadline() -> None:
    assert time_left(exchange(route(), age=1.0)) == pytest.approx(3.5, abs=0.05)
    assert time_left(exchange(route(deadline="2s"), age=3.0)) == pytest.approx(-1.0, abs=0.05)


def test_a_message_with_a_shorter_contract_is_answered_before_it() -> None:
    r = route()
    assert deadline(exchange(r, verified=Verified(deadline=3.0))) == 2.5  # its sender waits 3 s
    assert deadline(exchange(r, verified=Verified(deadline=30.0))) == 4.5  # never later than the route's
    assert deadline(exchange(r, verified=Verified(deadline=0.2))) == 0.1
    assert time_left(exchange(r, age=1.0, verified=Verified(deadline=3.0))) == pytest.approx(1.5, abs=0.05)


def test_a_message_retried_for_longer_keeps_its_dedup_record_longer() -> None:
    r = route()
    assert dedup_ttl(r, None) == dedup_ttl(r, Verified()) == 600.0
    assert dedup_ttl(r, Verified(dedup_ttl=90_000.0)) == 90_000.0
    assert dedup_ttl(r, Verified(dedup_ttl=60.0)) == 600.0  # never shorter than the route's


# -- before_deadline -------------------------------------------------------------------------------------------


async def test_a_store_call_in_time_returns_its_value() -> None:
    async def answer() -> str:
        await asyncio.sleep(0.01)
        return "claimed"

    assert await before_deadline(exchange(route()), answer()) == "claimed"


async def test_a_hung_store_call_ends_at_the_deadline_as_a_store_outage() -> None:
    cancelled = asyncio.Event()

    async def hang() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    start = time.perf_counter()
    with pytest.raises(StoreUnavailable, match="did not answer before the route's deadline"):
        await before_deadline(exchange(route(deadline="0.3s"), age=0.1), hang())
    assert 0.15 <= time.perf_counter() - start < 1.0
    assert cancelled.is_set()  # the call is abandoned, not left running


async def test_ack_grace_lets_the_acknowledgement_at_the_deadline_be_made_durable() -> None:
    async def outbox_write() -> str:
        await asyncio.sleep(0.1)
        return "durable"

    past = exchange(route(deadline="1s"), age=1.05)  # the deadline has just passed
    with pytest.raises(StoreUnavailable):
        await before_deadline(past, outbox_write())
    assert await before_deadline(past, outbox_write(), grace=ACK_GRACE) == "durable"
    # the grace is bounded: a write that takes longer than what is left of it still gives up
    with pytest.raises(StoreUnavailable):
        await before_deadline(exchange(route(deadline="1s"), age=1.25), outbox_write(), grace=ACK_GRACE)
