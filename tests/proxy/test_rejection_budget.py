"""The rejection ledger: a failing source is blocked after its budget, a passing one never, memory bounded."""

from __future__ import annotations

import pytest

from proxy.config import RejectionBudgetConfig
from proxy.pipeline.rejection_budget import RejectionLedger, source_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ledger(clock: Clock, **over: object) -> RejectionLedger:
    return RejectionLedger(
        RejectionBudgetConfig.model_validate({"failures": 3, "per": 60, "block": 300, **over}), clock
    )


def test_a_source_is_blocked_at_its_budget_for_the_block_period_then_served() -> None:
    clock = Clock()
    lg = ledger(clock)
    assert [lg.failed("203.0.113.9") for _ in range(3)] == [False, False, True]
    assert lg.blocked("203.0.113.9") and not lg.blocked("203.0.113.10")
    assert lg.blocked_sources() == 1
    clock.now += 301
    assert not lg.blocked("203.0.113.9") and lg.blocked_sources() == 0


def test_failures_spread_beyond_the_window_do_not_add_up() -> None:
    clock = Clock()
    lg = ledger(clock)
    for _ in range(5):
        lg.failed("203.0.113.9")
        clock.now += 31
    assert not lg.blocked("203.0.113.9")


def test_a_source_that_passed_verification_is_never_blocked() -> None:
    clock = Clock()
    lg = ledger(clock)
    lg.failed("198.51.100.1")
    lg.passed("198.51.100.1")
    assert not any(lg.failed("198.51.100.1") for _ in range(50))
    assert not lg.blocked("198.51.100.1")


def test_ipv6_sources_are_counted_by_their_64() -> None:
    assert source_of("2001:db8:1:2::1") == source_of("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_of("::ffff:203.0.113.9") == "203.0.113.9"
    clock = Clock()
    lg = ledger(clock)
    for i in range(3):
        lg.failed(f"2001:db8:1:2::{i + 1}")
    assert lg.blocked("2001:db8:1:2::abcd") and not lg.blocked("2001:db8:1:3::1")


@pytest.mark.parametrize("flood", [10, 1000])
def test_a_flood_of_failing_addresses_never_evicts_a_passing_source(flood: int) -> None:
    clock = Clock()
    lg = ledger(clock, sources=8)
    lg.passed("198.51.100.1")
    for i in range(flood):
        lg.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(lg._failing) <= 8 and "198.51.100.1" in lg._passing
    assert not any(lg.failed("198.51.100.1") for _ in range(5))
