"""Nothing lost in operations: rolling updates, slow backends, SIGTERM and long outages, with real processes.

Time is compressed with configuration (short leases, short backoff) so that each test shows in seconds what
would take minutes or hours with the defaults; each docstring says what stands for what.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.tools import sender
from tests.integration.conftest import ENV, mp_route, pay_v3_route
from tests.integration.test_outbox import _cli, msg_ids, text
from tests.support.procs import Backend, Sidecar, http, wait_until
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.integration
FAST_OUTBOX = {"backoff_base": "0.05s", "backoff_max": "0.2s"}
PAY_KEY = "192006250b4c09247ec02edce69f6a2d"
MCH = "1900000109"


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Backend]:
    b = Backend(tmp_path)
    b.start()
    yield b
    b.stop()


def outbox_counts(s: Sidecar) -> tuple[int, int]:
    """(queued, dead) as the outbox CLI reports them."""
    out = _cli(s, "list")
    assert out.returncode == 0, out.stderr
    fields = dict(f.split("=", 1) for f in out.stdout.splitlines()[0].split())
    return int(fields["queued"]), int(fields["dead"])


def post(s: Sidecar, req: sender.Request, timeout: float = 10.0) -> tuple[int, bytes, float]:
    started = time.monotonic()
    status, body, _ = http("POST", s.url + req.path_query, req.body, req.headers, timeout=timeout)
    return status, body, time.monotonic() - started


def in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` aside; its result (or the exception it raised: a connection cut at shutdown) lands in the list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except Exception as e:  # reported to the test through ``out``
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_a_replica_without_the_route_hands_its_items_back_during_a_rolling_update(
    tmp_path: Path, fresh: Backend, redis: RedisServer
) -> None:
    """The old replica queued notifications for route `mp`; the new configuration calls it `mp-v2`. While
    only new replicas run, the items stay queued (they used to be dead-lettered at once as "no longer
    configured"); a replica that knows `mp` delivers each once."""
    old = {"upstream": fresh.url, "store": redis.url, "routes": [mp_route(outbox=FAST_OUTBOX)]}
    new = {**old, "routes": [mp_route(name="mp-v2", outbox=FAST_OUTBOX)]}
    fresh.set_mode("fail")
    a = Sidecar(tmp_path, old, env=ENV, name="old")
    a.start()
    try:
        for i in range(1, 6):
            assert post(a, text(i))[:2] == (200, b"success")
    finally:
        a.stop()
    b = Sidecar(tmp_path, new, env=ENV, name="new")
    b.start()
    a2 = Sidecar(tmp_path, old, env=ENV, name="old2")
    try:
        fresh.set_mode("passive")
        http("POST", fresh.url + "/_demo/reset")
        time.sleep(3)  # six of the new replica's polls
        assert outbox_counts(b) == (5, 0)
        assert fresh.stats()["count"] == 0
        a2.start()  # a replica that knows `mp` (a rollback, or one still on the old configuration)
        wait_until(lambda: outbox_counts(b) == (0, 0), 30, "outbox delivered")
        seen = msg_ids(fresh)
        assert set(seen) == {str(i) for i in range(1, 6)} and set(seen.values()) == {1}
        assert b.metric("wxgate_outbox_dead_lettered_total") == 0
    finally:
        b.stop()
        a2.stop()


def test_a_slow_backend_call_is_not_sent_again_by_wechat_pays_retries_at_another_replica(
    tmp_path: Path, fresh: Backend, redis: RedisServer
) -> None:
    """A Pay notice whose backend takes 6 s (an ERP behind Pay; the report had 90 s with a 120 s
    backend_timeout): `dedup.lease: 2s` stands for the 30 s lease and the retries 3 s and 8 s later for Pay's
    15 s schedule. The claim used to run out at 2 s, so the retry at the other replica was forwarded as new
    while the first call was still running; now the lease covers backend_timeout and the backend sees it once."""
    route = {
        "name": "pay",
        "path": "/pay/v2",
        "protocol": "wechat-pay-v2",
        "api_key": "${PAY}",
        "mch_id": MCH,
        "backend_timeout": "10s",
        "dedup": {"lease": "2s"},
    }
    cfg = {"upstream": fresh.url, "store": redis.url, "routes": [route]}
    env = {**ENV, "PAY": PAY_KEY}
    a, b = Sidecar(tmp_path, cfg, env=env, name="a"), Sidecar(tmp_path, cfg, env=env, name="b")
    a.start()
    b.start()
    try:
        fresh.set_mode("slow:6:paysuccess")
        notice = sender.Request.of(
            sender._pay_v2("/pay/v2", PAY_KEY, MCH, "wx2421b1c4370ec43b", sender.SendOptions(message_id="77"))
        )
        first, first_out = in_thread(lambda: post(a, notice))
        time.sleep(3)
        second, second_out = in_thread(lambda: post(b, notice))
        time.sleep(5)
        third = post(a, notice)
        first.join(10)
        second.join(10)
        assert fresh.stats()["count"] == 1, fresh.requests()
        assert first_out[0][0] != 200 or b"SUCCESS" not in first_out[0][1]  # `fail`: the deadline came first
        for status, body, _ in (second_out[0], third):
            assert status == 200 and b"SUCCESS" in body  # the backend's real answer, replayed
    finally:
        a.stop()
        b.stop()


def test_sigterm_lets_a_running_redelivery_finish(tmp_path: Path, fresh: Backend) -> None:
    """The worker used to be cancelled mid-call at shutdown, leaving its item leased (sent again by the next
    replica once the lease ran out). Now the redelivery running at SIGTERM gets the drain window."""
    fresh.set_mode("fail")
    cfg = {"upstream": fresh.url, "drain_timeout": "10s", "routes": [mp_route(outbox=FAST_OUTBOX)]}
    s = Sidecar(tmp_path, cfg, env=ENV)
    s.start()
    try:
        assert post(s, text(31))[:2] == (200, b"success")
        fresh.set_mode("slow:3")
        wait_until(lambda: fresh.stats()["requests"][-1]["mode"] == "slow:3", 10, "redelivery under way")
        s.signal(signal.SIGTERM)
        assert s.wait(15) == 0
    finally:
        s.stop()
    assert outbox_counts(s) == (0, 0)  # delivered and removed before the process exited
    assert [r["mode"] for r in fresh.requests()].count("slow:3") == 1


def test_a_request_cut_at_drain_timeout_releases_its_claim(
    tmp_path: Path, fresh: Backend, redis: RedisServer
) -> None:
    """A request still waiting on the backend when drain_timeout runs out used to keep its claim for the
    whole lease: the sender's retry at another replica waited on it until its deadline and failed. Now the
    claim is released on the way out and the retry is forwarded at once."""
    route = mp_route(on_backend_failure="fail")
    cfg = {"upstream": fresh.url, "store": redis.url, "drain_timeout": "1s", "routes": [route]}
    a, b = Sidecar(tmp_path, cfg, env=ENV, name="a"), Sidecar(tmp_path, cfg, env=ENV, name="b")
    a.start()
    b.start()
    try:
        fresh.set_mode("slow:20")
        cut, _ = in_thread(lambda: post(a, text(41, "cut short")))
        wait_until(lambda: fresh.stats()["count"] == 1, 5, "first call under way")
        a.signal(signal.SIGTERM)
        assert a.wait(10) == 0
        fresh.set_mode("passive")
        status, body, seconds = post(b, text(41, "cut short"))
        assert (status, seconds < 3.0) == (200, True), (status, body, seconds)
        assert b"echo: cut short" in body
        cut.join(10)
    finally:
        a.stop()
        b.stop()


def test_an_outage_longer_than_the_old_attempt_limit_loses_nothing(tmp_path: Path, fresh: Backend) -> None:
    """Backoff 0.05-0.2 s stands for 1 s-10 min: the old default of 15 attempts ran out after about 2 s of
    this (33 min at the defaults). Attempts are now bounded by max_age alone: an 8 s outage loses nothing."""
    fresh.set_mode("fail")
    s = Sidecar(tmp_path, {"upstream": fresh.url, "routes": [mp_route(outbox=FAST_OUTBOX)]}, env=ENV)
    s.start()
    try:
        assert post(s, text(51, "outlast me"))[:2] == (200, b"success")
        wait_until(lambda: fresh.stats()["count"] > 16, 20, "more redeliveries than the old limit")
        time.sleep(8 - 0.5 * 16)
        assert outbox_counts(s) == (1, 0)
        fresh.set_mode("passive")
        wait_until(lambda: outbox_counts(s) == (0, 0), 10, "delivered after the outage")
        taken = [r for r in fresh.requests() if r["mode"] == "passive"]
        assert len(taken) == 1 and "outlast me" in taken[0]["body"]
    finally:
        s.stop()


def test_a_replayed_dead_letter_gets_its_whole_max_age_again(tmp_path: Path, fresh: Backend) -> None:
    """`max_age: 2s` stands for 24 h. A replayed dead letter used to keep its original age and was buried
    again after one try; now a replay starts its age and attempts over."""
    fresh.set_mode("fail")
    outbox = {**FAST_OUTBOX, "max_age": "2s"}
    s = Sidecar(tmp_path, {"upstream": fresh.url, "routes": [mp_route(outbox=outbox)]}, env=ENV)
    s.start()
    try:
        assert post(s, text(61))[:2] == (200, b"success")
        wait_until(lambda: outbox_counts(s) == (0, 1), 10, "dead letter")
        time.sleep(1)
        before = fresh.stats()["count"]
        assert "replaying 1" in _cli(s, "replay", "--all").stdout
        wait_until(lambda: outbox_counts(s) == (0, 1), 10, "dead letter again")
        assert fresh.stats()["count"] - before >= 3  # tried for the whole max_age, not once
    finally:
        s.stop()


def test_a_v2_notice_redelivered_at_a_v3_route_is_answered_with_v2_xml_afterwards(
    tmp_path: Path, fresh: Backend
) -> None:
    """Console refunds send Pay v2 XML to a v3 URL. Acknowledged while the backend was down, delivered by the
    outbox, its retries must still get v2's SUCCESS XML from the dedup record: the redelivery normalized the
    backend's answer with an empty verification and cached v3's 204, which a v2 sender reads as a failure and
    keeps re-sending for 24 hours."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from proxy.protocols import wechat_pay_v2
    from proxy.tools import traffic

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = tmp_path / "platform.pem"
    cert.write_bytes(traffic.platform_certificate(key, 0x5157F09E, time.time()))
    route = pay_v3_route(cert, MCH, api_key="${PAY}", on_backend_failure="ack", outbox=FAST_OUTBOX)
    env = {"V3": "0123456789abcdef0123456789abcdef", "PAY": PAY_KEY}
    fresh.set_mode("down")
    s = Sidecar(tmp_path, {"upstream": fresh.url, "routes": [route]}, env=env, name="v2-at-v3")
    s.start()
    try:
        fields = {
            "return_code": "SUCCESS",
            "mch_id": MCH,
            "nonce_str": "n1",
            "result_code": "SUCCESS",
            "transaction_id": "4200000001",
            "out_trade_no": "T1",
            "total_fee": "1",
        }
        notice = sender.Request.of(traffic.pay_v2_notify("/pay/v3", PAY_KEY, fields))
        assert post(s, notice)[:2] == (200, wechat_pay_v2.SUCCESS_XML)  # acknowledged, queued
        fresh.set_mode("passive")
        wait_until(lambda: outbox_counts(s) == (0, 0) and fresh.stats()["count"] >= 1, 30, "outbox delivered")
        delivered = fresh.stats()["count"]
        assert post(s, notice)[:2] == (200, wechat_pay_v2.SUCCESS_XML)  # the sender's retry, from the record
        assert fresh.stats()["count"] == delivered
    finally:
        assert s.stop() == 0
