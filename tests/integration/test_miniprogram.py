"""Mini Program and Channels shop pushes through the running proxy, in front of the demo backend: JSON and XML in
each mode, URL verification, retries, same-second events, the virtual-payment reply and the shop's restrictions."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.protocols import xmlmsg
from proxy.tools import traffic_miniprogram as mini
from proxy.tools.sender import Request
from proxy.tools.traffic import Outbound
from tests.support.procs import Backend, Sidecar, http

pytestmark = pytest.mark.integration

TOKEN, KEY = "mini-token", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APPID, GH, OPENID = "wxba5fad812f8e6fb9", "gh_97417a04a28d", "o9AgO5Kd5ggOC-bXrbNODIiE3bGY"
SHOP = "wx0123456789abcdef"
ROUTE: dict[str, Any] = {
    "protocol": "wechat-miniprogram",
    "token": "${TOKEN}",
    "app_id": APPID,
    "encoding_aes_key": "${KEY}",
    "require_encryption": False,  # plaintext, compatible and safe mode on one URL
}


@pytest.fixture(scope="module")
def sidecar(tmp_module: Path, backend: Backend) -> Iterator[Sidecar]:
    routes = [
        {**ROUTE, "name": "mini-json", "path": "/mini/json", "format": "json"},
        {**ROUTE, "name": "mini-xml", "path": "/mini/xml", "format": "xml", "decrypt_for_backend": True},
        {
            **ROUTE,
            "name": "shop",
            "path": "/shop",
            "channels": True,
            "app_id": SHOP,
            "require_encryption": True,
        },
    ]
    s = Sidecar(tmp_module, {"upstream": backend.url, "routes": routes}, env={"TOKEN": TOKEN, "KEY": KEY})
    s.start()
    yield s
    s.stop()


def send(s: Sidecar, out: Outbound) -> tuple[int, bytes]:
    r = Request.of(out)
    status, body, _ = http(r.method, s.url + r.path_query, r.body, r.headers)
    return status, body


def document(fields: dict[str, Any], fmt: mini.Format) -> bytes:
    if fmt == "json":
        return json.dumps(fields, ensure_ascii=False).encode()
    return xmlmsg.build(fields)


def pushed(
    path: str,
    fields: dict[str, Any],
    fmt: mini.Format = "json",
    mode: mini.Mode = "safe",
    app_id: str = APPID,
) -> Outbound:
    now = str(int(time.time()))
    return mini.push(
        path,
        TOKEN,
        document(fields, fmt),
        now,
        f"n{time.perf_counter_ns()}",
        fmt=fmt,
        mode=mode,
        encoding_aes_key=KEY,
        app_id=app_id,
        openid=OPENID if mode != "plaintext" else None,
    )


def text(content: str, msg_id: int) -> dict[str, Any]:
    return {
        "ToUserName": GH,
        "FromUserName": OPENID,
        "CreateTime": int(time.time()),
        "MsgType": "text",
        "Content": content,
        "MsgId": msg_id,
    }


def event(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "ToUserName": GH,
        "FromUserName": OPENID,
        "CreateTime": 1714112445,
        "MsgType": "event",
        "Event": name,
        **extra,
    }


def test_url_verification_echoes_echostr(sidecar: Sidecar, fresh_backend: Backend) -> None:
    check = mini.url_check("/mini/json", TOKEN, "4375120948345356249", str(int(time.time())), "1514711492")
    assert send(sidecar, check) == (200, b"4375120948345356249")
    assert fresh_backend.requests() == []


@pytest.mark.parametrize("mode", mini.MODES)
@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_each_format_in_each_mode_reaches_the_backend_once(
    sidecar: Sidecar, fresh_backend: Backend, fmt: mini.Format, mode: mini.Mode
) -> None:
    msg_id = 2**63 - time.perf_counter_ns() % 1000  # a 64-bit MsgId, beyond a float's exact integers
    out = pushed(f"/mini/{fmt}", text(f"hello {fmt} {mode}", msg_id), fmt, mode)
    status, body = send(sidecar, out)
    assert status == 200
    plain = mini.decode_reply(body, TOKEN, KEY, APPID)  # an encrypted reply must open for this mini program
    if fmt == "xml":  # the demo backend echoes XML messages with a passive reply
        assert xmlmsg.parse(plain)["Content"] == f"echo: hello {fmt} {mode}"
        assert (body != plain) == (mode != "plaintext")  # sealed for an encrypted push only
    else:
        assert plain == b"success"
    # WeChat's retry, byte for byte: the first reply again (sealed afresh in safe mode)
    retry_status, retry_body = send(sidecar, out)
    assert retry_status == 200 and mini.decode_reply(retry_body, TOKEN, KEY, APPID) == plain
    (got,) = fresh_backend.requests()
    if fmt == "xml" and mode != "plaintext":  # decrypt_for_backend
        assert f"<Content><![CDATA[hello {fmt} {mode}]]></Content>" in got["body"]
        assert "msg_signature" not in got["query"]


def test_a_retry_signed_anew_is_deduplicated_by_its_msg_id(sidecar: Sidecar, fresh_backend: Backend) -> None:
    message = text("once", 2**63 + 7)
    assert send(sidecar, pushed("/mini/json", message))[0] == 200
    assert send(sidecar, pushed("/mini/json", message))[0] == 200  # new nonce, same message
    assert len(fresh_backend.requests()) == 1


def test_distinct_events_in_one_second_are_all_delivered(sidecar: Sidecar, fresh_backend: Backend) -> None:
    # wxa_media_check: same sender, same CreateTime, told apart by trace_id alone (WxJava#2705)
    for trace_id in ("trace-a", "trace-b", "trace-a"):
        check = event(
            "wxa_media_check", appid=APPID, trace_id=trace_id, version=2, result={"suggest": "pass"}
        )
        assert send(sidecar, pushed("/mini/json", check))[0] == 200
    assert [json.loads(r["body"]).get("ToUserName") for r in fresh_backend.requests()] == [GH, GH]


def test_a_virtual_payment_event_gets_its_errcode_reply_unencrypted(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    deliver = event("xpay_goods_deliver_notify", OpenId=OPENID, OutTradeNo="order-1", Env=0)
    first = send(sidecar, pushed("/mini/json", deliver))
    assert first == (200, b'{"ErrCode":0,"ErrMsg":"success"}')
    assert send(sidecar, pushed("/mini/json", deliver)) == first  # the retry: "和第一次一样"
    assert len(fresh_backend.requests()) == 1


def test_a_channels_shop_takes_safe_mode_json_only(sidecar: Sidecar, fresh_backend: Backend) -> None:
    order = event(
        "channels_ec_order_pay", order_info={"order_id": 3705115058471208928, "pay_time": 1658509200}
    )
    status, body = send(sidecar, pushed("/shop", order, app_id=SHOP))
    assert status == 200 and mini.decode_reply(body, TOKEN, KEY, SHOP) == b"success"
    assert send(sidecar, pushed("/shop", order, mode="plaintext"))[0] == 403  # plaintext_not_allowed
    as_xml = pushed("/shop", event("channels_ec_order_pay", order_id=1), "xml", app_id=SHOP)
    assert send(sidecar, as_xml)[0] == 400  # format_mismatch
    assert len(fresh_backend.requests()) == 1
    refused = sidecar.metric("wxgate_verifications_total", route="shop", reason="plaintext_not_allowed")
    assert (
        refused >= 1
        and sidecar.metric("wxgate_verifications_total", route="shop", reason="format_mismatch") >= 1
    )
