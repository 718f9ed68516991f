"""backend_concurrency through a running wxgate: a WeChat Pay storm against a backend that fails above 20 at once.

2,000 distinct Pay v2 and v3 notices arrive together (a bounded pool of concurrent senders); the backend takes
50 ms each and answers 503 to any request beyond 20 in flight. With ``backend_concurrency: 20`` and
``on_backend_failure: ack``, every sender is answered success before its deadline, the backend never sees more
than 20 at once, and every notice reaches it exactly once: directly, or from the outbox at the backend's pace.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.protocols import xmlmsg
from proxy.tools import traffic
from tests.integration.conftest import pay_v2_route, pay_v3_route
from tests.support.limited_backend import LimitedBackend
from tests.support.procs import Sidecar, wait_until

pytestmark = pytest.mark.integration

LIMIT = 20
NOTICES = 2000
SENDERS = 300  # concurrent sender connections: 15 times what the backend takes at once
WORK = 0.25  # the backend's time per notice: 20 at a time is 80 a second
PAY_KEY = "192006250b4c09247ec02edce69f6a2d"
V3_KEY = "0123456789abcdef0123456789abcdef"
MCH, APP = "1900000109", "wx4f4bc4dec97d474b"
SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
ENV = {"PAY": PAY_KEY, "V3": V3_KEY}
FAST_OUTBOX = {"backoff_base": "0.1s", "backoff_max": "0.5s"}
PAY_FIELDS = {
    "return_code": "SUCCESS",
    "appid": APP,
    "mch_id": MCH,
    "nonce_str": "n",
    "result_code": "SUCCESS",
}


def notices(key: rsa.RSAPrivateKey) -> list[traffic.Outbound]:
    now = str(int(time.time()))
    out = []
    for i in range(NOTICES // 2):
        fields = {
            "return_code": "SUCCESS",
            "appid": APP,
            "mch_id": MCH,
            "nonce_str": f"n2-{i}",
            "result_code": "SUCCESS",
            "total_fee": "1",
            "transaction_id": f"42000{i:06d}",
            "out_trade_no": f"T{i:06d}",
        }
        out.append(traffic.pay_v2_notify("/pay/v2", PAY_KEY, fields))
        plaintext = {
            "mchid": MCH,
            "transaction_id": f"43000{i:06d}",
            "out_trade_no": f"V{i}",
            "trade_state": "SUCCESS",
        }
        out.append(
            traffic.pay_v3_notify(
                "/pay/v3", key, SERIAL, V3_KEY, plaintext, now, f"n3-{i}", notification_id=f"EV-{i:06d}"
            )
        )
    return out


async def storm(url: str, requests: list[traffic.Outbound]) -> list[tuple[int, float, bytes]]:
    """Every request sent at once through ``SENDERS`` connections: (status, seconds to the answer, body) each."""
    senders = asyncio.Semaphore(SENDERS)
    connector = aiohttp.TCPConnector(limit=SENDERS)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(req: traffic.Outbound) -> tuple[int, float, bytes]:
            async with senders:  # a sender's clock starts when it sends, not while it waits for a connection
                started = time.perf_counter()
                async with session.post(url + req.target, data=req.body, headers=dict(req.headers)) as r:
                    body = await r.read()
                    return r.status, time.perf_counter() - started, body

        return await asyncio.gather(*(one(r) for r in requests))


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[LimitedBackend]:
    b = LimitedBackend(tmp_path, LIMIT, WORK)
    b.start()
    yield b
    b.stop()


def test_a_storm_of_2000_pay_notices_reaches_a_backend_of_20_once_each_and_never_above_20(
    tmp_path: Path, backend: LimitedBackend
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = tmp_path / "platform.pem"
    cert.write_bytes(traffic.platform_certificate(key, int(SERIAL, 16), time.time()))
    policy: dict[str, Any] = {"on_backend_failure": "ack", "outbox": FAST_OUTBOX}
    routes = [
        pay_v2_route(MCH, **policy),
        pay_v3_route(cert, MCH, **policy),
    ]
    s = Sidecar(tmp_path, {"upstream": backend.url, "backend_concurrency": LIMIT, "routes": routes}, env=ENV)
    s.start()
    try:
        requests = notices(key)
        started = time.time()
        answers = asyncio.run(storm(s.url, requests))
        answered = time.time() - started
        wait_until(lambda: len(backend.stats()["delivered"]) == NOTICES, 60, "every notice delivered")
        seen = backend.stats()
        delivered: dict[str, int] = seen["delivered"]
        drained = seen["last_delivery"] - started
        spilled = s.metric("wxgate_backpressure_spilled_total")
        drained_items = s.metric("wxgate_backpressure_drained_total")
        slowest = max(seconds for _, seconds, _ in answers)
        print(
            f"\nstorm: {NOTICES} notices through {SENDERS} senders in {answered:.1f}s; delivered "
            f"{len(delivered)} (max {max(delivered.values())} each); max concurrent at the backend "
            f"{seen['max_seen']} (limit {LIMIT}), refused {seen['refused']}; max answer time {slowest:.2f}s; spilled "
            f"{spilled:.0f} (drained from the outbox {drained_items:.0f}); all delivered {drained:.1f}s after the start"
        )
        statuses = Counter(status for status, _, _ in answers)
        assert statuses[200] + statuses[204] == NOTICES  # v2 SUCCESS XML, v3 200 (backend) or 204 (wxgate)
        assert slowest < 5.0  # the sender's own timeout (the route's deadline is 4.5 s)
        assert set(delivered.values()) == {1}
        assert seen["max_seen"] <= LIMIT and seen["refused"] == 0
        assert spilled > 0 and drained_items >= spilled
        assert s.metric("wxgate_backpressure_queued") == 0
    finally:
        s.stop()


def test_a_fail_route_over_its_limit_asks_the_sender_to_retry_and_the_retry_is_delivered(
    tmp_path: Path,
) -> None:
    backend = LimitedBackend(tmp_path, 1, 1.2)
    backend.start()
    route = pay_v2_route(MCH)
    # fail is WeChat Pay's default policy; a 2 s deadline lets a waiter wait 1 s, less than the backend's 1.2 s
    cfg = {"upstream": backend.url, "routes": [{**route, "deadline": "2s", "backend_concurrency": 1}]}
    s = Sidecar(tmp_path, cfg, env=ENV)
    s.start()
    try:
        first, second = (
            traffic.pay_v2_notify("/pay/v2", PAY_KEY, {**PAY_FIELDS, "transaction_id": t})
            for t in ("4201", "4202")
        )
        answers = asyncio.run(storm(s.url, [first, second]))
        codes = sorted(xmlmsg.parse(body)["return_code"] for status, _, body in answers if status == 200)
        assert codes == ["FAIL", "SUCCESS"]  # the one over the limit is told to retry
        assert s.metric("wxgate_backpressure_spilled_total", route="pay2") == 1
        assert sorted(backend.stats()["delivered"]) == ["4201"]
        retry = asyncio.run(storm(s.url, [second]))[0]  # the sender's retry
        assert xmlmsg.parse(retry[2])["return_code"] == "SUCCESS"
        stats = backend.stats()
        assert (
            stats["delivered"] == {"4201": 1, "4202": 1} and stats["max_seen"] == 1 and stats["refused"] == 0
        )
        assert s.metric("wxgate_outbox_enqueued_total") == 0  # nothing acknowledged for the backend
    finally:
        s.stop()
        backend.stop()


def test_a_retry_while_the_first_copy_waited_for_a_slot_is_not_sent_again(tmp_path: Path) -> None:
    """The claim covers the wait for a backend slot as well as the call: with a long deadline, a notification
    can wait most of it for a slot, then take backend_timeout; a retry meanwhile must find it in flight (a
    lease of dedup.lease or backend_timeout + 5 s from the claim ran out first: the retry was sent as new)."""
    backend = LimitedBackend(tmp_path, 1, 1.2)
    backend.start()
    route = pay_v2_route(
        MCH,
        on_backend_failure="ack",
        deadline="9s",  # a waiter may wait 8 s for the backend's one slot
        backend_timeout="1.5s",
        dedup={"lease": "1s"},
    )
    cfg = {"upstream": backend.url, "backend_concurrency": 1, "routes": [route]}
    s = Sidecar(tmp_path, cfg, env=ENV)
    s.start()
    try:
        ahead = [
            traffic.pay_v2_notify("/pay/v2", PAY_KEY, {**PAY_FIELDS, "transaction_id": f"43{i}"})
            for i in range(5)
        ]
        late = traffic.pay_v2_notify("/pay/v2", PAY_KEY, {**PAY_FIELDS, "transaction_id": "4399"})

        async def scenario() -> list[tuple[int, float, bytes]]:
            first = asyncio.ensure_future(storm(s.url, ahead))
            await asyncio.sleep(0.1)
            second = asyncio.ensure_future(storm(s.url, [late]))  # claimed now, gets the slot ~6 s later
            await asyncio.sleep(6.9)  # past a lease of backend_timeout + 5 s, while it is at the backend
            retry = await storm(s.url, [late])
            return [*await first, *await second, *retry]

        answers = asyncio.run(scenario())
        assert [xmlmsg.parse(body)["return_code"] for _, _, body in answers] == ["SUCCESS"] * 7
        wait_until(lambda: len(backend.stats()["delivered"]) == 6, 10, "every notice delivered")
        time.sleep(1.5)  # a second copy, if one was sent, arrives within one backend call
        assert backend.stats()["delivered"] == {**{f"43{i}": 1 for i in range(5)}, "4399": 1}
    finally:
        s.stop()
        backend.stop()
