"""rejection_budget through a running wxgate behind a trusted proxy (the test's own address, 127.0.0.1).

A source sending bad signatures is answered 429 once its budget is spent, without verification work (even a
correctly signed request from it is not looked at); a sender at another address is served throughout; a source
that has passed verification is never blocked; after the block period the blocked source is served again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.tools import sender
from tests.integration.conftest import ENV, TOKEN, mp_route
from tests.support.procs import Backend, Sidecar, http

pytestmark = pytest.mark.integration

PATH = "/wechat/callback"
BUDGET = 5
BLOCK = 2.0
ATTACKER, WECHAT = "203.0.113.9", "198.51.100.7"


@pytest.fixture
def sidecar(tmp_path: Path, fresh_backend: Backend) -> Iterator[Sidecar]:
    cfg = {
        "upstream": fresh_backend.url,
        "trusted_proxies": ["127.0.0.1/32"],
        "rejection_budget": {"failures": BUDGET, "per": "60s", "block": f"{BLOCK}s"},
        "routes": [mp_route()],
    }
    s = Sidecar(tmp_path, cfg, env=ENV)
    s.start()
    yield s
    s.stop()


_ids = iter(range(1, 1_000_000))


def send(s: Sidecar, source: str, signed: bool = True) -> int:
    """One text message from ``source`` (as the trusted proxy says), correctly signed or not; the status."""
    req = sender.mp_message(
        PATH, TOKEN if signed else "not-the-token", sender.mp_text("gh", "oU", "hi", next(_ids))
    )
    return http("POST", s.url + req.path_query, req.body, {**req.headers, "X-Forwarded-For": source})[0]


def test_a_failing_source_is_answered_429_after_its_budget_and_served_again_after_the_block(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    assert send(sidecar, WECHAT) == 200
    assert [send(sidecar, ATTACKER, signed=False) for _ in range(BUDGET)] == [403] * BUDGET
    blocked_at = time.monotonic()
    assert send(sidecar, ATTACKER, signed=False) == 429
    assert send(sidecar, ATTACKER) == 429  # no verification work at all while blocked
    assert send(sidecar, WECHAT) == 200  # another address is untouched
    assert sidecar.metric("wxgate_verifications_total", route="mp", reason="rejection_budget") == 2
    assert sidecar.metric("wxgate_rejection_budget_blocked_sources") == 1
    assert fresh_backend.stats()["count"] == 2
    time.sleep(max(BLOCK - (time.monotonic() - blocked_at), 0) + 0.2)
    assert send(sidecar, ATTACKER) == 200
    assert sidecar.metric("wxgate_rejection_budget_blocked_sources") == 0
    assert fresh_backend.stats()["count"] == 3


def test_a_source_that_passed_verification_is_never_blocked(sidecar: Sidecar) -> None:
    assert send(sidecar, WECHAT) == 200
    assert {send(sidecar, WECHAT, signed=False) for _ in range(3 * BUDGET)} == {403}
    assert send(sidecar, WECHAT) == 200
    assert sidecar.metric("wxgate_verifications_total", reason="rejection_budget") == 0
