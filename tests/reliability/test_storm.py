"""Storm: two replicas sharing Redis, 1,000 notifications across protocols (same-second event bursts among them),
each delivered 4× like WeChat."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.reliability import scenarios
from tests.reliability.conftest import Figures
from tests.reliability.fleet import EVENT_KINDS, Timing

# The demo backend's passive reply names the event; Pay v3 answers 204 without a body.
EVENT_REPLIES = {
    "mp-card": "user_get_card",
    "mp-sent": "subscribe_msg_sent_event",
    "wecom-contact": "change_contact",
    "wecom-external": "change_external_contact",
}

pytestmark = pytest.mark.integration


def test_each_notification_reaches_the_backend_once_and_every_delivery_is_answered_in_time(
    tmp_path: Path, figures: Figures
) -> None:
    out = scenarios.storm(tmp_path, count=1000)
    figures.add(out.row)
    fig = out.figures
    assert fig["notifications"] == 1000 and fig["deliveries"] == 4000
    assert set(fig["patterns"]) == {"burst", "retry", "mixed"}  # overlapping in flight and after the first
    assert (fig["delivered"], fig["duplicates"], fig["lost"]) == (1000, 0, 0)
    assert fig["replies"] == {"ack": 4000}  # every delivery got its protocol's success reply
    assert fig["worst_latency"] < Timing().sender_timeout
    per_replica = Counter(a.replica for n in out.notifications for a in n.attempts)
    assert sorted(per_replica) == [0, 1] and min(per_replica.values()) > 1500
    events = {kind: "echo: " + event for kind, event in EVENT_REPLIES.items()}
    assert {n.route for n in out.notifications} >= set(EVENT_KINDS)  # same-second bursts of every kind
    for n in out.notifications:
        replies = {a.content for a in n.attempts}
        if n.route in ("mp", "mp-safe", "wecom"):
            # every retry gets the backend's real passive reply (sealed afresh in safe mode), not a bare ack
            assert replies == {f"echo: n{n.id}"}, (n.id, n.route, n.pattern, replies)
        elif n.route in events:
            assert replies == {events[n.route]}, (n.id, n.route, n.pattern, replies)
