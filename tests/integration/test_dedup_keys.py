"""Same-second bursts of distinct notifications through a running wxgate: each reaches the backend once.

Before dedup keys were an id or a digest of the whole message, sender + time + event made WeCom contact changes,
MP card events, subscribe_msg_sent_event and Pay v3 profit-sharing notices of one second share a key: the backend
got the first, the others got its cached reply. Here every distinct notification must be delivered exactly once,
and a retry of each (new timestamp, nonce, signature, and a fresh envelope) must be answered from dedup.
"""

from __future__ import annotations

import asyncio
import json
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
from proxy.tools.sender import Request
from tests.integration.conftest import pay_v2_route, pay_v3_route
from tests.proxy.protocols.test_idempotency import MP_BURST, WECOM_BURST, share
from tests.support.procs import Backend, Sidecar

pytestmark = pytest.mark.integration

TOKEN, AES = "keys-token", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APP_ID, CORP, MCH = "wx2c2769f8efd9abc2", "ww1436e0e65a779aee", "1900000109"
V3_KEY, SERIAL = "0123456789abcdef0123456789abcdef", "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SHARES = [share(order, account) for order in ("01", "02", "03") for account in ("1900000201", "1900000202")]


@pytest.fixture
def sidecar(tmp_path: Path, fresh_backend: Backend) -> Iterator[Sidecar]:
    cert = tmp_path / "platform.pem"
    cert.write_bytes(traffic.platform_certificate(SIGNING_KEY, int(SERIAL, 16), time.time()))
    aes = {"token": "${TOKEN}", "encoding_aes_key": "${AES}", "decrypt_for_backend": True}
    routes: list[dict[str, Any]] = [
        {"name": "mp", "path": "/mp", "protocol": "wechat-mp", "token": "${TOKEN}"},
        {"name": "mp-safe", "path": "/mp/safe", "protocol": "wechat-mp", "app_id": APP_ID, **aes},
        {"name": "wecom", "path": "/wecom", "protocol": "wecom", "receive_id": CORP, **aes},
        pay_v3_route(cert, MCH, decrypt_for_backend=True),
    ]
    env = {"TOKEN": TOKEN, "AES": AES, "V3": V3_KEY}
    s = Sidecar(tmp_path, {"upstream": fresh_backend.url, "routes": routes}, env=env, name="keys")
    s.start()
    yield s
    s.stop()


def deliveries(attempt: int) -> list[traffic.Outbound]:
    """Every notification of the bursts, as delivery ``attempt`` of it (its own timestamp, nonce, envelope)."""
    ts = str(int(time.time()))

    def nonce(i: int) -> str:
        return f"n{attempt}x{i}x{time.perf_counter_ns()}"

    out = [traffic.mp_message("/mp", TOKEN, body, ts, nonce(i)) for i, body in enumerate(MP_BURST)]
    out += [
        traffic.mp_message("/mp/safe", TOKEN, body, ts, nonce(i), encoding_aes_key=AES, app_id=APP_ID)
        for i, body in enumerate(MP_BURST)
    ]
    out += [
        traffic.wecom_message("/wecom", TOKEN, AES, CORP, body, ts, nonce(i))
        for i, body in enumerate(WECOM_BURST)
    ]
    out += [
        traffic.pay_v3_notify(
            "/pay/v3",
            SIGNING_KEY,
            SERIAL,
            V3_KEY,
            plaintext,
            ts,
            nonce(i),
            notification_id=f"EV-share-{i}-{attempt}",
            event_type="PROFITSHARING.SUCCESS",
            resource_nonce=f"res{attempt:02d}{i:06d}",
        )
        for i, plaintext in enumerate(SHARES)
    ]
    return out


async def burst(sidecar: Sidecar, outs: list[traffic.Outbound]) -> list[int]:
    async with aiohttp.ClientSession() as session:

        async def one(out: traffic.Outbound) -> int:
            r = Request.of(out)
            async with session.request(
                r.method, sidecar.url + r.path_query, data=r.body, headers=r.headers
            ) as resp:
                await resp.read()
                return resp.status

        return list(await asyncio.gather(*(one(o) for o in outs)))


def received(backend: Backend) -> Counter[tuple[str, str]]:
    """(path, notification) for every request the backend took: the XML as sent, or the profit-sharing ids."""
    out: Counter[tuple[str, str]] = Counter()
    for r in backend.requests():
        if r["path"] == "/pay/v3":
            resource = json.loads(r["body"])["resource"]
            out[(r["path"], f"{resource['order_id']}/{resource['receiver']['account']}")] += 1
        else:
            out[(r["path"], r["body"])] += 1
    return out


def test_same_second_bursts_of_distinct_notifications_each_reach_the_backend_once(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    first = asyncio.run(burst(sidecar, deliveries(1)))
    assert set(first) <= {200, 204}, first
    expected = Counter(
        [("/mp", b.decode()) for b in MP_BURST]
        + [("/mp/safe", b.decode()) for b in MP_BURST]
        + [("/wecom", b.decode()) for b in WECOM_BURST]
        + [("/pay/v3", f"{s['order_id']}/{s['receiver']['account']}") for s in SHARES]  # type: ignore[index]
    )
    assert received(fresh_backend) == expected  # every one, once

    again = asyncio.run(burst(sidecar, deliveries(2)))
    assert again == first  # the same answers
    assert received(fresh_backend) == expected  # nothing delivered twice
    routes = {"mp": len(MP_BURST), "mp-safe": len(MP_BURST), "wecom": len(WECOM_BURST), "pay3": len(SHARES)}
    for route, count in routes.items():
        assert sidecar.metric("wxgate_dedup_total", route=route, result="new") == count
        assert sidecar.metric("wxgate_dedup_total", route=route, result="duplicate_done") == count


def test_two_sub_merchants_numbering_an_order_alike_both_reach_the_backend(
    tmp_path: Path, fresh_backend: Backend
) -> None:
    """A partner route's Pay v2 notices without transaction_id: out_trade_no is unique per sub-merchant only,
    so the same number from two sub-merchants is two notices (each delivered once; a retry of each is not)."""
    pay_key = "192006250b4c09247ec02edce69f6a2d"
    route = pay_v2_route(MCH)
    s = Sidecar(
        tmp_path, {"upstream": fresh_backend.url, "routes": [route]}, env={"PAY": pay_key}, name="subs"
    )
    s.start()
    try:
        fields = {"return_code": "SUCCESS", "appid": APP_ID, "mch_id": MCH, "result_code": "SUCCESS"}
        notices = [
            traffic.pay_v2_notify(
                "/pay/v2",
                pay_key,
                {**fields, "sub_mch_id": sub, "out_trade_no": "1001", "nonce_str": f"n{sub}"},
            )
            for sub in ("1900000001", "1900000002")
        ]
        assert asyncio.run(burst(s, notices + notices)) == [200] * 4
        subs = Counter(xmlmsg.parse(r["body"].encode())["sub_mch_id"] for r in fresh_backend.requests())
        assert subs == Counter({"1900000001": 1, "1900000002": 1})
    finally:
        s.stop()
