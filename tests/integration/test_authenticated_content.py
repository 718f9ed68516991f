"""Only authenticated content reaches the backend, and a Pay backend's 2xx error page is a failure: through the
running proxy, in front of the demo backend (refund outer fields, repeated XML elements, HTML/ERROR 2xx answers,
the HMAC string to sign)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.protocols import wechat_pay_v2, xmlmsg
from proxy.tools import traffic
from proxy.tools.sender import Request
from tests.integration.conftest import pay_v3_route
from tests.support.procs import Backend, Sidecar, http

pytestmark = pytest.mark.integration

TOKEN = "auth-token"
PAY_KEY = "192006250b4c09247ec02edce69f6a2d"
V3_KEY = "0123456789abcdef0123456789abcdef"
MCH, APP = "1900000109", "wx4f4bc4dec97d474b"
HMAC_SECRET = "hmac-secret"
ENV = {"TOKEN": TOKEN, "PAY": PAY_KEY, "V3": V3_KEY, "HM": HMAC_SECRET}
SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
SUCCESS_XML = wechat_pay_v2.SUCCESS_XML
REFUND = {
    "refund_id": "50300103182020010413419046597",
    "out_refund_no": "1234",
    "refund_status": "SUCCESS",
    "transaction_id": "4200000483202001042069747825",
    "out_trade_no": "GENUINE",
    "refund_fee": "1",
}


def nonce() -> str:
    return f"n{time.perf_counter_ns()}"


@pytest.fixture(scope="module")
def sidecar(tmp_module: Path, backend: Backend) -> Iterator[Sidecar]:
    cert = tmp_module / "platform-auth.pem"
    cert.write_bytes(traffic.platform_certificate(SIGNING_KEY, int(SERIAL, 16), time.time()))
    pay2: dict[str, Any] = {"protocol": "wechat-pay-v2", "api_key": "${PAY}", "mch_id": MCH}
    routes: list[dict[str, Any]] = [
        {"name": "pay2", "path": "/pay/v2", **pay2},
        {"name": "pay2-dec", "path": "/pay/v2dec", **pay2, "app_id": APP, "decrypt_for_backend": True},
        pay_v3_route(cert, MCH, api_key="${PAY}"),
        {"name": "mp", "path": "/mp", "protocol": "wechat-mp", "token": "${TOKEN}"},
        {"name": "hooks", "path": "/hooks", "protocol": "hmac", "secret": "${HM}"},
    ]
    s = Sidecar(tmp_module, {"upstream": backend.url, "routes": routes}, env=ENV, name="authenticated")
    s.start()
    yield s
    s.stop()


def send(s: Sidecar, out: traffic.Outbound, body: bytes | None = None) -> tuple[int, bytes]:
    r = Request.of(out)
    status, answer, _ = http(r.method, s.url + r.path_query, r.body if body is None else body, r.headers)
    return status, answer


def refund(path: str, fields: dict[str, str] | None = None) -> traffic.Outbound:
    return traffic.pay_v2_refund_notify(path, PAY_KEY, APP, MCH, fields or REFUND, nonce())


def refused(answer: tuple[int, bytes], path: str) -> bool:
    """The route's rejection form: Pay v2's 200 + FAIL XML, or a v3 route's 400 + FAIL JSON (its failure reply
    is chosen before the request's format is known)."""
    status, body = answer
    if path.startswith("/pay/v3"):
        return status == 400 and json.loads(body)["code"] == "FAIL"
    return status == 200 and xmlmsg.parse(body)["return_code"] == "FAIL"


def around(out: traffic.Outbound, extra: bytes) -> bytes:
    """The notice's body with ``extra`` elements appended inside ``<xml>``."""
    return out.body.replace(b"</xml>", extra + b"</xml>")


# -- Pay v2 refund notices: documented outer fields only --------------------------------------------------------


@pytest.mark.parametrize("path", ["/pay/v2", "/pay/v2dec", "/pay/v3"])
def test_unsigned_outer_fields_around_a_captured_req_info_are_refused(
    sidecar: Sidecar, fresh_backend: Backend, path: str
) -> None:
    captured = refund(path)
    for extra in (b"<out_trade_no>FORGED</out_trade_no>", b"<total_fee>100000</total_fee>"):
        assert refused(send(sidecar, captured, around(captured, extra)), path)
    assert fresh_backend.stats()["count"] == 0
    route = {"/pay/v2": "pay2", "/pay/v2dec": "pay2-dec", "/pay/v3": "pay3"}[path]
    assert sidecar.metric("wxgate_verifications_total", route=route, reason="unexpected_field") == 2


def test_the_backend_gets_only_authenticated_refund_content(sidecar: Sidecar, fresh_backend: Backend) -> None:
    status, body = send(sidecar, refund("/pay/v2dec"))
    assert (status, body) == (200, SUCCESS_XML)
    got = xmlmsg.parse(fresh_backend.requests()[0]["body"].encode())
    assert got == {
        **REFUND,
        "return_code": "SUCCESS",
        "mch_id": MCH,
        "appid": APP,
    }  # no nonce_str, no req_info
    status, body = send(sidecar, refund("/pay/v2", {**REFUND, "refund_id": "50300103182020010413419046598"}))
    assert (status, body) == (200, SUCCESS_XML)
    original = xmlmsg.parse(fresh_backend.requests()[1]["body"].encode())
    assert set(original) <= wechat_pay_v2.REFUND_OUTER_FIELDS  # forwarded as sent: documented fields only
    assert fresh_backend.stats()["count"] == 2


# -- repeated XML elements --------------------------------------------------------------------------------------


def pay_fields(txn: str) -> dict[str, str]:
    return {
        "return_code": "SUCCESS",
        "appid": APP,
        "mch_id": MCH,
        "nonce_str": nonce(),
        "result_code": "SUCCESS",
        "total_fee": "1",
        "transaction_id": txn,
        "out_trade_no": "T" + txn,
    }


def test_a_signed_notice_with_a_second_field_appended_is_refused(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    for path in ("/pay/v2", "/pay/v3"):
        signed = traffic.pay_v2_notify(path, PAY_KEY, pay_fields("4200900"))
        assert refused(send(sidecar, signed, around(signed, b"<out_trade_no>OTHER</out_trade_no>")), path)
    captured = refund("/pay/v2")
    assert refused(
        send(sidecar, captured, around(captured, b"<mch_id>" + MCH.encode() + b"</mch_id>")), "/pay/v2"
    )
    assert fresh_backend.stats()["count"] == 0
    assert sidecar.metric("wxgate_verifications_total", route="pay2", reason="malformed_xml") == 2
    assert sidecar.metric("wxgate_verifications_total", route="pay3", reason="malformed_xml") == 1


def test_official_account_repeated_leaf_refused_list_items_accepted(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    repeated = (
        b"<xml><ToUserName>gh</ToUserName><FromUserName>o1</FromUserName><CreateTime>1</CreateTime>"
        b"<MsgType>text</MsgType><Content>hi</Content><MsgId>1</MsgId><MsgId>2</MsgId></xml>"
    )
    ts = str(int(time.time()))
    status, _ = send(sidecar, traffic.mp_message("/mp", TOKEN, repeated, ts, nonce()))
    assert status == 400 and fresh_backend.stats()["count"] == 0
    pictures = (
        b"<xml><ToUserName>gh</ToUserName><FromUserName>o1</FromUserName><CreateTime>2</CreateTime>"
        b"<MsgType>event</MsgType><Event>pic_sysphoto</Event><EventKey>k</EventKey><SendPicsInfo><Count>2</Count>"
        b"<PicList><item><PicMd5Sum>aaa</PicMd5Sum></item><item><PicMd5Sum>bbb</PicMd5Sum></item></PicList>"
        b"</SendPicsInfo></xml>"
    )
    status, _ = send(sidecar, traffic.mp_message("/mp", TOKEN, pictures, ts, nonce()))
    assert status == 200 and fresh_backend.stats()["count"] == 1


# -- a Pay backend's 2xx that says it failed ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["html200", "payfail"])
def test_a_pay_v2_backend_error_page_with_200_is_a_failure_and_the_retry_is_delivered(
    sidecar: Sidecar, fresh_backend: Backend, mode: str
) -> None:
    notice = traffic.pay_v2_notify("/pay/v2", PAY_KEY, pay_fields(f"42009-{mode}"))
    fresh_backend.set_mode(mode)
    status, body = send(sidecar, notice)
    assert status == 200 and xmlmsg.parse(body)["return_code"] == "FAIL"  # WeChat Pay will retry
    fresh_backend.set_mode("paysuccess")
    status, body = send(sidecar, notice)  # WeChat Pay's retry: not answered from the failed first attempt
    assert status == 200 and xmlmsg.parse(body)["return_code"] == "SUCCESS"
    assert [r["mode"] for r in fresh_backend.requests()] == [mode, "paysuccess"]


@pytest.mark.parametrize("mode", ["html200", "v3error200"])
def test_a_pay_v3_backend_error_with_200_is_a_failure_and_the_retry_is_delivered(
    sidecar: Sidecar, fresh_backend: Backend, mode: str
) -> None:
    plaintext = {"mchid": MCH, "transaction_id": f"T-{mode}", "out_trade_no": mode, "trade_state": "SUCCESS"}
    notice = traffic.pay_v3_notify(
        "/pay/v3",
        SIGNING_KEY,
        SERIAL,
        V3_KEY,
        plaintext,
        str(int(time.time())),
        nonce(),
        notification_id="EV-1",
    )
    fresh_backend.set_mode(mode)
    status, body = send(sidecar, notice)
    assert status == 500 and json.loads(body)["code"] == "FAIL"
    fresh_backend.set_mode("empty")
    retry = traffic.pay_v3_notify(
        "/pay/v3",
        SIGNING_KEY,
        SERIAL,
        V3_KEY,
        plaintext,
        str(int(time.time())),
        nonce(),
        notification_id="EV-1",
    )
    status, body = send(sidecar, retry)
    assert status in (200, 204) and body == b""
    assert [r["mode"] for r in fresh_backend.requests()] == [mode, "empty"]


# -- HMAC: a value holding "&b=2" is not two parameters ---------------------------------------------------------


def test_an_hmac_signature_over_one_value_does_not_sign_two_parameters(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    ts = str(int(time.time()))
    # Signed for one parameter, order="1&state=paid". With raw values its string to sign was
    # "nonce=…&order=1&state=paid&timestamp=…", the very string of two parameters order=1 and state=paid.
    signed = traffic.hmac_request("/hooks", HMAC_SECRET, {"order": "1&state=paid"}, ts, "n-hmac-1")
    sign = dict(p.split("=", 1) for p in signed.target.split("?", 1)[1].split("&"))["sign"]
    split = traffic.Outbound(
        "POST",
        f"/hooks?timestamp={ts}&nonce=n-hmac-1&sign={sign}",
        (("content-type", "application/x-www-form-urlencoded"),),
        b"order=1&state=paid",
    )
    assert send(sidecar, split)[0] == 401
    assert fresh_backend.stats()["count"] == 0
    assert send(sidecar, signed)[0] == 200
    assert fresh_backend.stats()["count"] == 1


# -- a captured Pay v2 notice reshuffled: mixed content and spliced values ------------------------------------


def reshuffled(signed: dict[str, str], forged: dict[str, str], mixed: bool) -> bytes:
    """A captured notice rebuilt without its key: each forged field's signed ``k=v`` moved into the value of the
    field sorted just before it (the string to sign is unchanged), the field itself carrying the forged value as
    text beside a child element (``mixed``) or left out."""
    out: dict[str, str | None] = dict(signed)
    names = sorted(k for k in signed if k != "sign")
    for k in sorted(forged, reverse=True):
        before = names[names.index(k) - 1]
        out[before] = f"{out[before]}&{k}={out[k]}"
        out[k] = None
    parts = ["<xml>"]
    for k, v in out.items():
        if v is not None:
            parts.append(f"<{k}>{xmlmsg.cdata(v)}</{k}>")
        elif mixed:
            parts.append(f"<{k}>{forged[k]}<x/></{k}>")
    return "".join([*parts, "</xml>"]).encode()


@pytest.mark.parametrize("mixed", [True, False])
def test_a_captured_notice_reshuffled_to_other_ids_and_amounts_is_refused(
    sidecar: Sidecar, fresh_backend: Backend, mixed: bool
) -> None:
    """What ElementTree/minidom read from the forgery is another order (EXPENSIVE, 888800); wxgate's flat view
    signs exactly like the captured 1-fen notice. Refused, and the genuine retry is still answered from dedup."""
    genuine = traffic.pay_v2_notify(
        "/pay/v2",
        PAY_KEY,
        {
            **pay_fields(f"420077{int(mixed)}"),
            "openid": "oUser",
            "cash_fee": "1",
            "time_end": "20261204120000",
        },
    )
    assert send(sidecar, genuine) == (200, SUCCESS_XML)
    signed = xmlmsg.parse(genuine.body, lists=False)
    forged = {"out_trade_no": "EXPENSIVE-9999", "transaction_id": "4200999", "total_fee": "888800"}
    if not mixed:
        forged["cash_fee"] = ""
    body = reshuffled(signed, forged, mixed)
    before = sidecar.metric("wxgate_verifications_total", route="pay2", reason="malformed_xml")
    assert refused(send(sidecar, genuine, body), "/pay/v2")
    assert sidecar.metric("wxgate_verifications_total", route="pay2", reason="malformed_xml") == before + 1
    assert send(sidecar, genuine) == (200, SUCCESS_XML)  # the real retry: from dedup
    (delivered,) = fresh_backend.requests()
    assert f"<out_trade_no><![CDATA[T420077{int(mixed)}]]></out_trade_no>" in delivered["body"]


def test_an_attach_holding_ampersands_and_equals_is_still_accepted(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    fields = {**pay_fields("4200778"), "attach": "a=1&b=2&total=3&out_trade_no=T4200778"}
    assert send(sidecar, traffic.pay_v2_notify("/pay/v2", PAY_KEY, fields)) == (200, SUCCESS_XML)
    assert fresh_backend.stats()["count"] == 1


def test_a_json_key_given_twice_is_refused(sidecar: Sidecar, fresh_backend: Backend) -> None:
    """Signed for amount 88800; the body repeats the key with 1 first. wxgate's parser kept the last value and
    verified; a first-value-wins backend read 1."""
    ts = str(int(time.time()))
    signed = traffic.hmac_request(
        "/hooks", HMAC_SECRET, {"order": "A-1", "amount": "88800"}, ts, "n-dup", body="json"
    )
    forged = b'{"order": "A-1", "amount": "1", "amount": "88800"}'
    status, _ = send(sidecar, signed, forged)
    assert status == 400
    assert fresh_backend.stats()["count"] == 0
    assert send(sidecar, signed)[0] == 200  # the genuine one still verifies
