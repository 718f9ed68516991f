"""WeChat Pay v2 notices (PROTOCOLS.md §3): sign vectors, refund decryption vectors, checks, the XML reply contract."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.protocols import wechat_pay_v2, xmlmsg
from proxy.protocols.base import Inbound, Rejected, Verified
from proxy.protocols.wechat_pay_v2 import (
    FAIL_XML,
    SUCCESS_XML,
    WechatPayV2,
    decrypt_req_info,
    encrypt_req_info,
    sign,
)
from proxy.tools import traffic
from tests.proxy.protocols import vectors as v
from tests.proxy.protocols.helpers import accepted, inbound, rejected, requests, verify_or_reject

KEY, MCH, APP = v.V11_KEY, "10000100", "wxd930ea5d5a258f4f"
PAID = {
    "return_code": "SUCCESS",
    "return_msg": "OK",
    "appid": APP,
    "mch_id": MCH,
    "nonce_str": "5d2b6c2a8db53831f7eda20af46e531c",
    "result_code": "SUCCESS",
    "openid": "oUpF8uMEb4qRXf22hE3X68TekukE",
    "trade_type": "JSAPI",
    "bank_type": "CFT",
    "total_fee": "1",
    "cash_fee": "1",
    "transaction_id": "1004400740201409030005092168",
    "out_trade_no": "1409811653",
    "time_end": "20140903131540",
    "attach": "",
    "coupon_fee_0": "0",  # an extension field: signed like any other
}
REFUND = {
    "out_refund_no": "r1",
    "out_trade_no": "o1",
    "refund_id": "50000000000000000001",
    "refund_status": "SUCCESS",
    "refund_fee": "1",
    "transaction_id": "t1",
}


def v2(**kw: object) -> WechatPayV2:
    args: dict[str, object] = {"api_keys": [("current", KEY)], "mch_id": MCH, "app_id": APP}
    args.update(kw)
    return WechatPayV2(**args)  # type: ignore[arg-type]


def notify(fields: dict[str, str] | None = None, sign_type: str | None = None, key: str = KEY) -> Inbound:
    return inbound(traffic.pay_v2_notify("/pay", key, fields or PAID, sign_type))


def refund(key: str = KEY, app: str = APP, mch: str = MCH) -> Inbound:
    return inbound(traffic.pay_v2_refund_notify("/pay", key, app, mch, REFUND, "nonce"))


# -- vectors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "md5", "hmac_sha256"),
    [(v.V11_FIELDS, v.V11_MD5, v.V11_HMAC), (v.V12_FIELDS, v.V12_MD5, v.V12_HMAC)],
    ids=["V11", "V12"],
)
def test_sign_vectors(fields: dict[str, str], md5: str, hmac_sha256: str) -> None:
    assert sign(fields, KEY) == md5
    assert sign(fields, KEY, "HMAC-SHA256") == hmac_sha256
    assert sign({**fields, "sign": "X", "empty": ""}, KEY) == md5  # sign and empty fields are not signed


def test_v13_refund_notice() -> None:
    protocol = WechatPayV2([("current", v.V13_KEY)], v.V13_MCH_ID, app_id=v.V13_APP_ID)
    verified = accepted(protocol, Inbound("POST", "/pay", {}, {}, v.V13_BODY), 0)
    m = verified.message
    assert (m["out_refund_no"], m["out_trade_no"]) == ("1234", "2020010418301551404339261814")
    assert (m["transaction_id"], m["refund_id"]) == (
        "4200000483202001042069747825",
        "50300103182020010413419046597",
    )
    assert "req_info" not in m and verified.replay_key is None
    assert protocol.dedup_key(verified) == "refund|12345678|50300103182020010413419046597|SUCCESS"


def test_v14_req_info_decryption() -> None:
    root = xmlmsg.parse(decrypt_req_info(v.V14_KEY, v.V14_REQ_INFO), root="root")
    assert root["refund_id"] == "50000404922017112502468056157"
    assert root["transaction_id"] == "4200000015201711256947025404"
    assert root["refund_fee"] == "6"


# -- payment notices -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sign_type", [None, "MD5", "HMAC-SHA256"])
def test_payment_notice(sign_type: str | None) -> None:
    verified = accepted(v2(), notify(sign_type=sign_type), 0)
    assert verified.message["transaction_id"] == PAID["transaction_id"]
    assert verified.replay_key is None and verified.key_id == "current"
    assert v2().dedup_key(verified) == f"pay|{MCH}|1004400740201409030005092168|SUCCESS"


def test_out_trade_no_when_no_transaction_id_and_previous_key() -> None:
    fields = {k: x for k, x in PAID.items() if k != "transaction_id"}
    protocol = v2(api_keys=[("current", "n" * 32), ("previous", KEY)])
    verified = accepted(protocol, notify(fields), 0)
    assert verified.key_id == "previous"
    assert protocol.dedup_key(verified) == f"pay|{MCH}|out_trade_no::1409811653|SUCCESS"


def test_a_sub_merchants_own_order_number_keys_only_within_that_sub_merchant() -> None:
    """A partner's notices carry the partner as mch_id: without transaction_id, two sub-merchants numbering
    their orders alike are two notices (and an order number never equals a transaction_id)."""
    fields = {k: x for k, x in PAID.items() if k != "transaction_id"}
    keys = {
        v2().dedup_key(accepted(v2(), notify({**fields, "sub_mch_id": s}), 0)) for s in ("1900000001", "2")
    }
    assert len(keys) == 2
    by_id = {**PAID, "transaction_id": fields["out_trade_no"]}
    assert v2().dedup_key(accepted(v2(), notify(by_id), 0)) != v2().dedup_key(
        accepted(v2(), notify(fields), 0)
    )


def test_unknown_fields_are_signed_and_a_lowercase_sign_is_accepted() -> None:
    assert accepted(v2(), notify({**PAID, "new_field_2030": "x"}), 0).message["new_field_2030"] == "x"
    lowered = xmlmsg.build({**PAID, "sign": sign(PAID, KEY).lower()})
    assert accepted(v2(), Inbound("POST", "/pay", {}, {}, lowered), 0).key_id == "current"


def test_payment_negatives() -> None:
    assert rejected(v2(), traffic.tamper(traffic.pay_v2_notify("/pay", KEY, PAID)), 0).reason == "bad_sign"
    forged_amount = notify().body.replace(b"<total_fee><![CDATA[1]]>", b"<total_fee><![CDATA[9]]>")
    assert rejected(v2(), Inbound("POST", "/pay", {}, {}, forged_amount), 0).reason == "bad_sign"
    assert rejected(v2(), notify(key="k" * 32), 0).reason == "bad_sign"
    assert rejected(v2(mch_id="1900000109"), notify(), 0).reason == "wrong_mch_id"
    assert rejected(v2(app_id="wx0000000000000000"), notify(), 0).reason == "wrong_app_id"
    assert accepted(v2(app_id=None), notify(), 0)
    # Signed with MD5 but labelled HMAC-SHA256, and an unknown algorithm.
    mislabelled = xmlmsg.build({**PAID, "sign_type": "HMAC-SHA256", "sign": sign(PAID, KEY, "MD5")})
    assert rejected(v2(), Inbound("POST", "/pay", {}, {}, mislabelled), 0).reason == "bad_sign"
    sha1 = xmlmsg.build({**PAID, "sign_type": "SHA1", "sign": "0" * 40})
    assert rejected(v2(), Inbound("POST", "/pay", {}, {}, sha1), 0).reason == "unsupported_sign_type"
    unsigned = xmlmsg.build(dict(PAID))
    assert rejected(v2(), Inbound("POST", "/pay", {}, {}, unsigned), 0).reason == "missing_sign"
    failed = xmlmsg.build({"return_code": "FAIL", "return_msg": "x"})
    assert rejected(v2(), Inbound("POST", "/pay", {}, {}, failed), 0).reason == "return_code_not_success"
    xxe = (
        b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY k SYSTEM "file:///etc/passwd">]><xml><a>&k;</a></xml>'
    )
    assert rejected(v2(), Inbound("POST", "/pay", {}, {}, xxe), 0).reason == "xml_dtd_forbidden"
    assert rejected(v2(), Inbound("GET", "/pay", {}, {}, b""), 0).status == 405


# -- refund notices --------------------------------------------------------------------------------------------


def test_refund_round_trip_and_backend_body() -> None:
    verified = accepted(v2(decrypt_for_backend=True), refund(), 0)
    assert verified.message["refund_id"] == REFUND["refund_id"]
    assert verified.backend_body is not None
    forwarded = xmlmsg.parse(verified.backend_body)
    assert (
        forwarded["refund_status"] == "SUCCESS" and forwarded["mch_id"] == MCH and "req_info" not in forwarded
    )
    assert accepted(v2(), refund(), 0).backend_body is None


def test_refund_negatives() -> None:
    assert rejected(v2(), refund(key="k" * 32), 0).reason in ("bad_padding", "malformed_xml")
    assert rejected(v2(), refund(mch="1900000109"), 0).reason == "wrong_mch_id"
    assert rejected(v2(), refund(app="wx0000000000000000"), 0).reason == "wrong_app_id"
    assert rejected(
        v2(), traffic.tamper(traffic.pay_v2_refund_notify("/p", KEY, APP, MCH, REFUND, "n")), 0
    ).reason in (
        "bad_padding",
        "malformed_xml",
        "bad_sign",
    )
    assert accepted(v2(api_keys=[("current", "k" * 32), ("previous", KEY)]), refund(), 0).key_id == "previous"
    body = xmlmsg.build({"return_code": "SUCCESS", "appid": APP, "mch_id": MCH, "req_info": "%%%"})
    assert rejected(v2(), Inbound("POST", "/p", {}, {}, body), 0).reason == "bad_base64"


@pytest.mark.parametrize(
    ("plain", "reason"),
    [
        (b"x" * 15 + b"\x00", "bad_padding"),
        (b"x" * 14 + b"\x01\x02", "bad_padding"),
        (b"x" * 15 + b"\x11", "bad_padding"),
    ],
)
def test_refund_padding_is_validated(plain: bytes, reason: str) -> None:

    key = hashlib.md5(KEY.encode()).hexdigest().encode()
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    with pytest.raises(Rejected) as e:
        decrypt_req_info(KEY, base64.b64encode(enc.update(plain) + enc.finalize()).decode())
    assert e.value.reason == reason


@given(plaintext=st.binary(max_size=500), key=st.text(min_size=1, max_size=40))
def test_req_info_round_trip(plaintext: bytes, key: str) -> None:
    assert decrypt_req_info(key, encrypt_req_info(key, plaintext)) == plaintext


# -- replies ---------------------------------------------------------------------------------------------------


def test_fixed_replies_say_nothing_about_the_reason() -> None:
    protocol = v2()
    assert protocol.success_reply().body == (
        b"<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>"
    )
    assert protocol.success_reply().status == 200
    bad_sign, wrong_mch = protocol.failure_reply("bad_sign", 403), protocol.failure_reply("wrong_mch_id", 403)
    assert bad_sign == wrong_mch and bad_sign.status == 200 and bad_sign.body == FAIL_XML
    assert xmlmsg.parse(protocol.backend_failure_reply().body)["return_code"] == "FAIL"


OK_XML = SUCCESS_XML
FAIL_FROM_BACKEND = xmlmsg.build({"return_code": "FAIL", "return_msg": "db down"})
NORMALIZE = [
    (200, "text/xml", OK_XML, "ack", None, OK_XML),
    (
        200,
        "text/xml",
        b"<xml><return_code>SUCCESS</return_code></xml>",
        "ack",
        None,
        b"<xml><return_code>SUCCESS</return_code></xml>",
    ),
    (201, "text/xml", OK_XML, "ack", "status_201", SUCCESS_XML),
    (200, "text/plain", b"success", "ack", "text", SUCCESS_XML),
    (200, "text/plain", b"ok", "ack", "text", SUCCESS_XML),
    (200, "application/json", b'{"code":"SUCCESS"}', "ack", "json", SUCCESS_XML),
    (200, "text/html", b"<html><body>ok</body></html>", "ack", "html", SUCCESS_XML),
    (200, "text/plain", b"", "ack", "empty", SUCCESS_XML),
    (204, "", b"", "ack", "status_204", SUCCESS_XML),
    (200, "text/xml", b"<xml><broken>", "ack", "xml", SUCCESS_XML),
    (200, "text/xml", FAIL_FROM_BACKEND, "failure", None, FAIL_FROM_BACKEND),
]


@pytest.mark.parametrize(("status", "ctype", "body", "kind", "normalized", "out"), NORMALIZE)
def test_normalize(
    status: int, ctype: str, body: bytes, kind: str, normalized: str | None, out: bytes
) -> None:
    reply = v2().normalize(status, ctype, body, Verified())
    assert (reply.status, reply.kind, reply.normalized, reply.body) == (200, kind, normalized, out)


@pytest.mark.parametrize(
    ("status", "body", "failure"),
    [
        (200, FAIL_FROM_BACKEND, True),
        (200, b"  " + FAIL_FROM_BACKEND, True),
        (200, SUCCESS_XML, False),
        (200, b"success", False),
        (200, b'{"code":"FAIL"}', False),
        (200, b"<xml><broken>", False),
        (200, b"", False),
        (
            200,
            b"<!DOCTYPE html><html><body>Internal error</body></html>",
            True,
        ),  # an error page served with 200
        (200, b"\n<HTML><body>oops</body></HTML>", True),
        (500, FAIL_FROM_BACKEND, False),  # non-2xx is a failure before this is asked
    ],
)
def test_is_backend_failure(status: int, body: bytes, failure: bool) -> None:
    assert v2().is_backend_failure(status, "text/xml", body) is failure


def test_an_html_content_type_is_a_backend_failure_whatever_the_body() -> None:
    assert v2().is_backend_failure(200, "text/html; charset=utf-8", b"success")
    assert not v2().is_backend_failure(200, "text/plain", b"success")


def test_return_code_helper() -> None:
    assert wechat_pay_v2.return_code(b"no") is None
    assert wechat_pay_v2.return_code(b"<xml><a>1</a></xml>") is None


@settings(max_examples=300, deadline=None)
@given(req=requests, now=st.integers(0, 2**33))
def test_verify_raises_only_rejected(req: Inbound, now: int) -> None:
    verify_or_reject(v2(), req, now)


@settings(max_examples=200, deadline=None)
@given(
    fields=st.dictionaries(
        st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
        st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=20),
        max_size=6,
    ),
    req_info=st.none() | st.text(max_size=200),
)
def test_correctly_signed_garbage_raises_only_rejected(fields: dict[str, str], req_info: str | None) -> None:
    doc = {**fields, "return_code": "SUCCESS", "mch_id": MCH}
    if req_info is not None:
        doc["req_info"] = req_info.replace("\x00", "")
    doc["sign"] = sign(doc, KEY)
    verify_or_reject(v2(), Inbound("POST", "/pay", {}, {}, xmlmsg.build(dict(doc))), 0)


# -- what is authenticated -------------------------------------------------------------------------------------


def refund_body(extra: dict[str, str | int], key: str = KEY) -> bytes:
    """A genuine refund notice with ``extra`` outer fields placed around its (captured) ``req_info``."""
    fields = xmlmsg.parse(refund().body if key == KEY else refund(key=key).body)
    return xmlmsg.build({**fields, **extra})


@pytest.mark.parametrize(
    "extra",
    [
        {"out_trade_no": "FORGED"},
        {"total_fee": "100000"},
        {"result_code": "SUCCESS"},
        {"refund_status": "SUCCESS"},
    ],
)
def test_a_refund_with_an_undocumented_outer_field_is_refused(extra: dict[str, str | int]) -> None:
    req = Inbound("POST", "/pay", {}, {}, refund_body(extra))
    for protocol in (v2(), v2(decrypt_for_backend=True)):
        e = rejected(protocol, req, 0)
        assert (e.reason, e.status) == ("unexpected_field", 400)
        assert protocol.failure_reply(e.reason, e.status).body == FAIL_XML


def test_a_refund_message_holds_only_authenticated_values() -> None:
    body = refund_body({"return_msg": "OK"})
    body = body.replace(
        b"<nonce_str><![CDATA[nonce]]></nonce_str>", b"<nonce_str><![CDATA[chosen]]></nonce_str>"
    )
    for protocol in (v2(), v2(app_id=None), v2(decrypt_for_backend=True)):
        verified = accepted(protocol, Inbound("POST", "/pay", {}, {}, body), 0)
        outer = {"return_code": "SUCCESS", "mch_id": MCH} | ({"appid": APP} if protocol.app_id else {})
        assert dict(verified.message) == {**REFUND, **outer}  # no nonce_str, return_msg, req_info
        if verified.backend_body is not None:
            assert xmlmsg.parse(verified.backend_body) == {**REFUND, **outer}
        assert protocol.dedup_key(verified) == f"refund|{MCH}|{REFUND['refund_id']}|SUCCESS"


def test_a_signed_notice_with_a_repeated_field_is_malformed() -> None:
    signed = notify().body
    appended = signed.replace(b"</xml>", b"<out_trade_no><![CDATA[OTHER]]></out_trade_no></xml>")
    assert rejected(v2(), Inbound("POST", "/pay", {}, {}, appended), 0).reason == "malformed_xml"
    # A path twice in a list is refused too: sign covers the flat view ({"g.i.e": "1"}), not the second item.
    flat_sign = sign({**PAID, "g.i.e": "1"}, KEY)
    listed = xmlmsg.build({**PAID, "sign": flat_sign}).replace(
        b"</xml>", b"<g><i><e>1</e></i><i><e>2</e></i></g></xml>"
    )
    assert rejected(v2(), Inbound("POST", "/pay", {}, {}, listed), 0).reason == "malformed_xml"
    # Notices are flat: any nested element is refused (an SDK reading direct children would not sign it).
    single = xmlmsg.build({**PAID, "sign": flat_sign}).replace(b"</xml>", b"<g><i><e>1</e></i></g></xml>")
    assert rejected(v2(), Inbound("POST", "/pay", {}, {}, single), 0).reason == "malformed_xml"


def test_a_refund_whose_req_info_repeats_a_field_is_malformed() -> None:
    inner = xmlmsg.build(dict(REFUND), root="root").replace(
        b"</root>", b"<refund_fee>999</refund_fee></root>"
    )
    body = xmlmsg.build(
        {"return_code": "SUCCESS", "appid": APP, "mch_id": MCH, "req_info": encrypt_req_info(KEY, inner)}
    )
    assert rejected(v2(), Inbound("POST", "/pay", {}, {}, body), 0).reason == "malformed_xml"
    twice = refund().body.replace(b"</xml>", b"<mch_id><![CDATA[" + MCH.encode() + b"]]></mch_id></xml>")
    assert rejected(v2(), Inbound("POST", "/pay", {}, {}, twice), 0).reason == "malformed_xml"


@pytest.mark.parametrize(
    ("moved", "into"),
    [
        ("out_trade_no", "openid"),
        ("transaction_id", "trade_type"),
        ("cash_fee", "bank_type"),
        ("coupon_fee_0", "cash_fee"),
    ],
)
def test_a_signed_field_spliced_into_the_value_before_it_is_refused(moved: str, into: str) -> None:
    """``k=v`` moved into the preceding value keeps the string to sign (raw ``&``-joined): a captured notice
    reshuffled to hide its ids. The signature matches; the notice is refused all the same."""
    genuine = xmlmsg.parse(notify().body, lists=False)
    forged = {k: v for k, v in genuine.items() if k != moved}
    forged[into] = f"{genuine[into]}&{moved}={genuine[moved]}"
    assert wechat_pay_v2.sign_string(forged) == wechat_pay_v2.sign_string(genuine)
    body = xmlmsg.build(dict(forged))
    assert rejected(v2(), Inbound("POST", "/pay", {}, {}, body), 0).reason == "malformed_xml"


def test_an_attach_with_ampersands_and_equals_is_accepted() -> None:
    fields = {**PAID, "attach": "a=1&b=2&out_trade_no=1409811653&x_y=z"}
    assert accepted(v2(), notify(fields), 0).message["attach"] == fields["attach"]
