"""Chaos during a storm: Redis killed and restarted, the backend flapping, a replica killed with -9, a Redis
Cluster master killed. Nothing acknowledged is lost; no duplicate but those the configuration allows."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import scenarios
from tests.reliability.conftest import Figures
from tests.reliability.fleet import PAY

pytestmark = pytest.mark.integration


def check(out: scenarios.Outcome) -> None:
    fig = out.figures
    assert fig["lost"] == 0, f"acknowledged, never delivered: {fig['lost_ids']}"
    assert fig["duplicates_unexplained"] == 0, fig["duplicates_by_route"]
    assert (fig["outbox_depth"], fig["dead_letters"]) == (0, 0)
    # every answer was a valid one of the protocol: its success reply or its retry-me form
    assert "invalid" not in fig["replies"], fig["replies"]
    # ... and came before the sender's timeout, also while the store hung (store calls are bounded by the
    # deadline): all but a handful, which an overloaded 2-core host can delay past the 0.5 s margin
    assert fig["replies"].get("late", 0) <= fig["deliveries"] // 200, fig["replies"]
    assert out.cut_on_live == 0  # connections were cut only by the replica we killed
    # a WeChat Pay sender retries until it is acknowledged, and then the backend has it
    pay = [n for n in out.notifications if n.route in PAY]
    assert all(n.acked for n in pay)


def test_redis_killed_and_hung_backend_flapping_and_a_replica_killed_mid_flight(
    tmp_path: Path, figures: Figures
) -> None:
    # Redis hangs first, then a replica dies with backend calls in flight (the backend is slow then), both
    # before the flapping backend fills the outbox: an item leased by a killed worker, or by a lease command
    # that timed out while Redis hung and was applied when it resumed, waits out the 60 s worker lease (the
    # soak's random timelines cover those overlaps). A hung store is a down store: answers stay in time.
    faults = [(0.5, "hang", 1.5), (2.5, "slow", 2.5), (3.0, "replica", 2.0)]
    faults += [(7.0, "flap", 10.0), (10.0, "redis", 4.0)]
    out = scenarios.chaos(tmp_path, faults, count=800, rate=40.0)
    figures.add(out.row)
    check(out)
    assert len(out.row.faults) == 5
    assert out.figures["replies"].get("cut", 0) > 0  # the kill hit requests in flight
    assert out.figures["replies"].get("failure", 0) > 0  # the faults were felt


def test_redis_cluster_master_killed(tmp_path: Path, figures: Figures) -> None:
    out = scenarios.chaos(tmp_path, [(3.0, "cluster", 6.0)], count=300, rate=30.0, cluster=True)
    figures.add(out.row)
    # A master that is gone makes redis-py's cluster client retry and rediscover slots, up to about a second
    # per store call: the deadline still holds.
    check(out)
    assert out.figures["replies"].get("failure", 0) > 0
