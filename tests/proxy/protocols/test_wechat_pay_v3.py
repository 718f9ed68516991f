"""WeChat Pay v3 notices (PROTOCOLS.md §4): the wechatpay-go vector, keys by serial, probes, window, GCM, replies."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.protocols import wechat_pay_v3, xmlmsg
from proxy.protocols.base import Inbound, Rejected, Verified
from proxy.protocols.wechat_pay_v2 import SUCCESS_XML, WechatPayV2
from proxy.protocols.wechat_pay_v3 import (
    FAIL_JSON,
    PlatformKey,
    V2Notice,
    WechatPayV3,
    decrypt_resource,
    load_certificate,
    load_public_key,
    serial_key,
)
from proxy.tools import traffic
from tests.proxy.protocols import vectors as v
from tests.proxy.protocols.helpers import accepted, inbound, rejected, requests, rsa_key, verify_or_reject

NOW = 1700000000
MCH, APP, APIV3 = "1900000109", "wxd678efh567hg6787", "0123456789abcdef0123456789abcdef"
SERIAL = 0x5157F09EFDC096DE15EBE81A47057A7232F1B8E1
SERIAL_HEX = format(SERIAL, "X")
PUB_ID = "PUB_KEY_ID_0114232134912410000000000000"
PAID = {
    "mchid": MCH,
    "appid": APP,
    "out_trade_no": "1217752501201407033233368018",
    "transaction_id": "1217752501201407033233368018",
    "trade_state": "SUCCESS",
    "amount": {"total": 100, "payer_total": 100, "currency": "CNY"},
    "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
}
REFUND = {
    "mchid": MCH,
    "out_refund_no": "r1",
    "refund_id": "50000000382019052709732678859",
    "refund_status": "SUCCESS",
}


def platform() -> PlatformKey:
    return load_certificate(traffic.platform_certificate(rsa_key(1), SERIAL, NOW))


def public() -> PlatformKey:
    return load_public_key(PUB_ID, traffic.public_key_pem(rsa_key(2)))


def v3(**kw: object) -> WechatPayV3:
    args: dict[str, object] = {
        "apiv3_keys": [("current", APIV3)],
        "mch_id": MCH,
        "platform_keys": [platform(), public()],
        "app_id": APP,
    }
    args.update(kw)
    return WechatPayV3(**args)  # type: ignore[arg-type]


def notice(plaintext: dict[str, object] | None = None, ts: int = NOW, **kw: object) -> traffic.Outbound:
    args: dict[str, object] = {"notification_id": "EV-2018022511223320873", "serial": SERIAL_HEX}
    args.update(kw)
    key = rsa_key(2) if str(args["serial"]).startswith("PUB_KEY_ID_") else rsa_key(1)
    return traffic.pay_v3_notify(
        "/v3",
        key,
        str(args.pop("serial")),
        str(args.pop("apiv3_key", APIV3)),
        plaintext or PAID,
        str(ts),
        "nonce-1",
        **args,
    )  # type: ignore[arg-type]


def with_header(out: traffic.Outbound, name: str, value: str | None) -> Inbound:
    req = inbound(out)
    headers = {k: x for k, x in req.headers.items() if k != name}
    if value is not None:
        headers[name] = value
    return Inbound(req.method, req.path, req.query, headers, req.body)


# -- V15 -------------------------------------------------------------------------------------------------------


def v15() -> WechatPayV3:
    return WechatPayV3(
        [("current", v.V15_APIV3_KEY)],
        "1234567890",
        [load_certificate(v.V15_CERTIFICATE)],
        app_id="054aa7d7a2a54ab5898df65bd96f001c",
    )


def test_v15_wechatpay_go_notice() -> None:
    req = Inbound("POST", "/v3", {}, v.V15_HEADERS, v.V15_BODY)
    verified = accepted(v15(), req, v.V15_NOW)
    assert verified.key_id == "D7CE59D1F522D701"
    assert verified.message["out_contract_code"] == "21640bdbd08e473e828f3206a2741c6e"
    assert verified.message["notification_id"] == "3119dfba-e649-5eec-ab1e-3412bc4d2e17"
    assert verified.message["event_type"] == "PAYSCORE.USER_OPEN_SERVICE"
    assert verified.replay_key == "v3:1624523846:EcZ9Cmy4Xyx1i6RlJQzLcCyEqDa26NBz"
    assert verified.replay_ttl == 600
    # Pay-score has no trade_state: keyed by the decrypted resource, not by the notification id
    digest = hashlib.sha256(v.V15_PLAINTEXT).hexdigest()
    assert v15().dedup_key(verified) == f"digest|PAYSCORE.USER_OPEN_SERVICE|{digest}"
    resource = json.loads(v.V15_BODY)["resource"]
    assert decrypt_resource([v.V15_APIV3_KEY.encode()], resource) == v.V15_PLAINTEXT


@pytest.mark.parametrize(
    ("now", "reason"), [(v.V15_NOW + 301, "stale_timestamp"), (v.V15_NOW - 301, "future_timestamp")]
)
def test_v15_only_passes_inside_the_window(now: int, reason: str) -> None:
    e = rejected(v15(), Inbound("POST", "/v3", {}, v.V15_HEADERS, v.V15_BODY), now)
    assert (e.reason, e.status) == (reason, 401)


def test_v15_tampered_body_and_serial_forms() -> None:
    body = v.V15_BODY.replace(
        b"\xe7\xad\xbe\xe7\xba\xa6", b"\xe6\x88\x90\xe5\x8a\x9f"
    )  # summary 签约 -> 成功
    assert (
        rejected(v15(), Inbound("POST", "/v3", {}, v.V15_HEADERS, body), v.V15_NOW).reason == "bad_signature"
    )
    for serial in ("d7ce59d1f522d701", "00D7CE59D1F522D701"):
        headers = {**v.V15_HEADERS, "wechatpay-serial": serial}
        assert (
            accepted(v15(), Inbound("POST", "/v3", {}, headers, v.V15_BODY), v.V15_NOW).key_id
            == "D7CE59D1F522D701"
        )


# -- keys, serials, signatures ---------------------------------------------------------------------------------


def test_certificate_and_public_key_side_by_side() -> None:
    assert accepted(v3(), notice(), NOW).key_id == SERIAL_HEX
    assert accepted(v3(), notice(serial=PUB_ID), NOW).key_id == PUB_ID
    assert serial_key(SERIAL_HEX.lower()) == serial_key("000" + SERIAL_HEX) == SERIAL_HEX
    assert serial_key("0x12") is None and serial_key("1_2") is None


def test_signature_checks() -> None:
    assert rejected(v3(), notice(serial="ABCDEF"), NOW).reason == "unknown_serial"
    assert rejected(v3(platform_keys=[platform()]), notice(serial=PUB_ID), NOW).reason == "unknown_serial"
    # A key registered under the other's id: signature does not verify.
    swapped = [PlatformKey(SERIAL_HEX, public().public_key)]
    assert rejected(v3(platform_keys=swapped), notice(), NOW).reason == "bad_signature"
    tampered = traffic.tamper(notice())
    assert rejected(v3(), tampered, NOW).reason == "bad_signature"
    assert (
        rejected(v3(), with_header(notice(), "wechatpay-signature", "!!notbase64"), NOW).reason
        == "bad_signature"
    )
    assert rejected(v3(), with_header(notice(), "wechatpay-nonce", "other"), NOW).reason == "bad_signature"


def test_signature_probe_is_refused_and_never_forwarded() -> None:
    e = rejected(v3(), notice(probe=True), NOW)
    assert (e.reason, e.status) == ("signature_probe", 401)
    assert v3().failure_reply(e.reason, e.status).body == FAIL_JSON


@pytest.mark.parametrize(
    "name", ["wechatpay-timestamp", "wechatpay-nonce", "wechatpay-signature", "wechatpay-serial"]
)
def test_missing_headers(name: str) -> None:
    e = rejected(v3(), with_header(notice(), name, None), NOW)
    assert (e.reason, e.status, e.detail) == ("missing_header", 401, name)


def test_signature_type() -> None:
    assert accepted(v3(), with_header(notice(), "wechatpay-signature-type", None), NOW)
    e = rejected(v3(), with_header(notice(), "wechatpay-signature-type", "WECHATPAY2-SM2-WITH-SM3"), NOW)
    assert e.reason == "unsupported_signature_type"


@pytest.mark.parametrize(("ts", "reason"), [(NOW - 301, "stale_timestamp"), (NOW + 301, "future_timestamp")])
def test_window_both_ways(ts: int, reason: str) -> None:
    assert rejected(v3(), notice(ts=ts), NOW).reason == reason
    assert accepted(v3(), notice(ts=ts), ts)


# -- resource --------------------------------------------------------------------------------------------------


def test_resource_checks() -> None:
    assert rejected(v3(apiv3_keys=[("current", "f" * 32)]), notice(), NOW).reason == "decrypt_failed"
    rotated = v3(apiv3_keys=[("current", "f" * 32), ("previous", APIV3)])
    assert accepted(rotated, notice(), NOW).message["trade_state"] == "SUCCESS"
    assert rejected(v3(mch_id="1900000110"), notice(), NOW).reason == "wrong_mch_id"
    assert rejected(v3(app_id="wx0000000000000000"), notice(), NOW).reason == "wrong_app_id"
    assert accepted(v3(app_id=None), notice(), NOW)
    partner = {"sp_mchid": MCH, "sub_mchid": "1900000111", "transaction_id": "t", "trade_state": "SUCCESS"}
    assert accepted(v3(), notice(partner), NOW)
    assert rejected(v3(), notice({**partner, "sp_mchid": "1"}), NOW).reason == "wrong_mch_id"
    complaint = {"complaint_id": "200201820200101080076610000", "action_type": "CREATE_COMPLAINT"}
    assert accepted(v3(), notice(complaint, event_type="COMPLAINT.CREATE"), NOW)


def signed_body(body: bytes, serial: str = SERIAL_HEX) -> traffic.Outbound:
    out = notice()
    sig = rsa_key(1).sign(
        wechat_pay_v3.signed_message(str(NOW), "nonce-1", body), padding.PKCS1v15(), hashes.SHA256()
    )
    headers = tuple(
        (k, base64.b64encode(sig).decode() if k == "wechatpay-signature" else x) for k, x in out.headers
    )
    return out._replace(body=body, headers=headers)


@pytest.mark.parametrize(
    ("resource", "reason"),
    [
        ({"algorithm": "AEAD_AES_128_GCM", "ciphertext": "AAAA", "nonce": "n" * 12}, "unsupported_algorithm"),
        ({"algorithm": "AEAD_AES_256_GCM", "ciphertext": 5, "nonce": "n" * 12}, "bad_resource"),
        ({"algorithm": "AEAD_AES_256_GCM", "ciphertext": "AAAA", "nonce": ""}, "bad_resource"),
        ({"algorithm": "AEAD_AES_256_GCM", "ciphertext": "%%", "nonce": "n" * 12}, "bad_base64"),
        ({"algorithm": "AEAD_AES_256_GCM", "ciphertext": "AAAA", "nonce": "n" * 12}, "decrypt_failed"),
        ("not an object", "bad_resource"),
    ],
)
def test_malformed_resources(resource: object, reason: str) -> None:
    body = json.dumps({"id": "x", "resource_type": "encrypt-resource", "resource": resource}).encode()
    assert rejected(v3(), signed_body(body), NOW).reason == reason


def test_resource_type_and_bodies() -> None:
    body = json.dumps({"id": "x", "resource_type": "plain", "resource": {}}).encode()
    assert rejected(v3(), signed_body(body), NOW).reason == "bad_resource"
    assert rejected(v3(), signed_body(b"[1]"), NOW).reason == "malformed_json"
    assert rejected(v3(), signed_body(b" "), NOW).reason == "empty_body"


def test_empty_associated_data() -> None:
    assert accepted(v3(), notice(associated_data=""), NOW).message["transaction_id"]


@given(plaintext=st.binary(max_size=400), aad=st.text(max_size=16), nonce=st.text(min_size=12, max_size=12))
def test_gcm_round_trip(plaintext: bytes, aad: str, nonce: str) -> None:
    ct = AESGCM(APIV3.encode()).encrypt(nonce.encode(), plaintext, aad.encode())
    resource = {"algorithm": "AEAD_AES_256_GCM", "ciphertext": base64.b64encode(ct).decode(), "nonce": nonce}
    if aad:
        resource["associated_data"] = aad
    assert decrypt_resource([b"x" * 32, APIV3.encode()], resource) == plaintext
    flipped = base64.b64encode(ct[:-1] + bytes([ct[-1] ^ 1])).decode()
    with pytest.raises(Rejected):
        decrypt_resource([APIV3.encode()], {**resource, "ciphertext": flipped})


# -- backend body, dedup ---------------------------------------------------------------------------------------


def test_decrypt_for_backend_replaces_resource_with_the_plaintext_object() -> None:
    verified = accepted(v3(decrypt_for_backend=True), notice(), NOW)
    assert verified.backend_body is not None
    doc = json.loads(verified.backend_body)
    assert doc["resource"] == PAID
    assert doc["id"] == "EV-2018022511223320873" and doc["event_type"] == "TRANSACTION.SUCCESS"
    assert accepted(v3(), notice(), NOW).backend_body is None


def test_dedup_keys() -> None:
    paid = accepted(v3(), notice(), NOW)
    assert v3().dedup_key(paid) == "trade|1217752501201407033233368018|SUCCESS"
    assert paid.message["amount.total"] == "100"
    refund = accepted(v3(), notice(REFUND, event_type="REFUND.SUCCESS"), NOW)
    assert v3().dedup_key(refund) == "refund|50000000382019052709732678859|SUCCESS"
    assert v3().dedup_key(Verified()) == f"digest||{hashlib.sha256(b'[]').hexdigest()}"


def test_a_merchants_own_numbers_key_only_within_that_merchant() -> None:
    """Without WeChat Pay's ids, out_trade_no / out_refund_no are unique per (sub-)merchant only: two
    sub-merchants of one partner numbering their orders alike are two notices, and a merchant's number never
    equals a transaction_id of WeChat Pay's."""
    trade = {"sp_mchid": MCH, "out_trade_no": "1001", "trade_state": "SUCCESS"}
    refund = {"sp_mchid": MCH, "out_refund_no": "r1", "refund_status": "SUCCESS"}
    keys = {
        v3().dedup_key(accepted(v3(), notice({**fields, "sub_mchid": sub}), NOW))
        for fields in (trade, refund)
        for sub in ("1900000001", "1900000002")
    }
    assert len(keys) == 4
    by_id = accepted(v3(), notice({"mchid": MCH, "transaction_id": "1001", "trade_state": "SUCCESS"}), NOW)
    by_own = accepted(v3(), notice({"mchid": MCH, "out_trade_no": "1001", "trade_state": "SUCCESS"}), NOW)
    assert v3().dedup_key(by_id) != v3().dedup_key(by_own)


# -- v2 notices at the v3 route --------------------------------------------------------------------------------

V2_KEY = v.V11_KEY
V2_PAID = {
    "return_code": "SUCCESS",
    "appid": APP,
    "mch_id": MCH,
    "transaction_id": "t9",
    "result_code": "SUCCESS",
}


def test_v2_notice_at_the_v3_route() -> None:
    req = traffic.pay_v2_notify("/v3", V2_KEY, V2_PAID)
    assert rejected(v3(), req, NOW).reason == "v2_notice_not_configured"
    route = v3(v2=WechatPayV2([("current", V2_KEY)], MCH, app_id=APP))
    verified = accepted(route, req, NOW)
    assert isinstance(verified.seal_context, V2Notice)
    assert route.dedup_key(verified) == f"pay|{MCH}|t9|SUCCESS"
    assert route.normalize(200, "text/plain", b"ok", verified).body == SUCCESS_XML
    assert route.success_reply(verified).body == SUCCESS_XML
    assert route.success_reply().status == 204
    assert rejected(route, traffic.tamper(req), NOW).reason == "bad_sign"
    refund = traffic.pay_v2_refund_notify(
        "/v3", V2_KEY, APP, MCH, {"refund_id": "r", "refund_status": "SUCCESS"}, "n"
    )
    assert route.dedup_key(accepted(route, refund, NOW)) == f"refund|{MCH}|r|SUCCESS"


# -- replies ---------------------------------------------------------------------------------------------------


def test_fixed_replies() -> None:
    protocol = v3()
    assert (protocol.success_reply().status, protocol.success_reply().body) == (204, b"")
    assert json.loads(protocol.failure_reply("bad_signature", 401).body) == {
        "code": "FAIL",
        "message": "失败",
    }
    assert protocol.failure_reply("bad_signature", 401).status == 401
    assert (
        protocol.failure_reply("bad_resource", 400).body
        == protocol.failure_reply("signature_probe", 401).body
    )
    assert (protocol.backend_failure_reply().status, protocol.backend_failure_reply().body) == (
        500,
        FAIL_JSON,
    )


NORMALIZE = [
    (204, "", b"", 204, None),
    (200, "", b"", 200, None),
    (200, "application/json", '{"code":"SUCCESS","message":"成功"}'.encode(), 200, None),
    (200, "application/json", b'{"ok":true}', 200, "json"),
    (200, "text/html", b"<html>done</html>", 200, "html"),
    (200, "text/plain", b"ok", 200, "text"),
    (200, "text/plain", b"success", 200, "text"),
    (201, "application/json", b'{"id":1}', 204, "status_201"),
    (202, "", b"", 204, "status_202"),
]


@pytest.mark.parametrize(("status", "ctype", "body", "out", "normalized"), NORMALIZE)
def test_normalize(status: int, ctype: str, body: bytes, out: int, normalized: str | None) -> None:
    reply = v3().normalize(status, ctype, body, Verified())
    assert (reply.status, reply.body, reply.kind, reply.normalized) == (out, b"", "ack", normalized)


@pytest.mark.parametrize(
    ("status", "body", "failure"),
    [
        (200, b'{"code":"FAIL","message":"x"}', True),
        (200, b'{"code":"fail"}', True),
        (200, xmlmsg.build({"return_code": "FAIL"}), True),
        (200, b'{"code":"SUCCESS"}', False),
        (204, b"", False),
        (200, b"FAIL", False),
        (500, b'{"code":"FAIL"}', False),
    ],
)
def test_is_backend_failure(status: int, body: bytes, failure: bool) -> None:
    assert v3().is_backend_failure(status, "application/json", body) is failure


def test_loaders_refuse_non_rsa_and_bad_ids() -> None:
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError, match="RSA"):
        load_public_key(PUB_ID, ec_pem)
    with pytest.raises(ValueError, match="PUB_KEY_ID_"):
        load_public_key("1234", traffic.public_key_pem(rsa_key(2)))
    with pytest.raises(ValueError):
        WechatPayV3([("current", "short")], MCH, [platform()])


@settings(max_examples=300, deadline=None)
@given(req=requests, now=st.integers(0, 2**33))
def test_verify_raises_only_rejected(req: Inbound, now: int) -> None:
    verify_or_reject(v3(v2=WechatPayV2([("current", V2_KEY)], MCH)), req, now)


@settings(max_examples=100, deadline=None)
@given(
    body=st.binary(max_size=300)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda c: (
            st.lists(c, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    ["resource", "algorithm", "ciphertext", "nonce", "associated_data", "resource_type", "id"]
                ),
                c,
                max_size=5,
            )
        ),
    ).map(lambda d: json.dumps(d).encode())
)
def test_correctly_signed_garbage_raises_only_rejected(body: bytes) -> None:
    if body.lstrip()[:1] == b"<":
        return
    verify_or_reject(v3(), inbound(signed_body(body)), NOW)


@pytest.mark.parametrize(
    ("ctype", "body", "failure"),
    [
        ("application/json", b'{"code":"ERROR","message":"db down"}', True),
        ("application/json", b'{"code":"error"}', True),
        ("text/html", b"<html><body>500</body></html>", True),  # an error page served with 200
        ("text/plain", b"<!DOCTYPE html><html><body>oops</body></html>", True),
        ("", b"", False),
        ("application/json", b'{"errcode":0}', False),
        ("text/xml", SUCCESS_XML, False),
    ],
)
def test_html_and_error_2xx_are_backend_failures(ctype: str, body: bytes, failure: bool) -> None:
    assert v3().is_backend_failure(200, ctype, body) is failure


def test_a_v2_refund_at_the_v3_route_holds_only_documented_outer_fields() -> None:
    route = v3(v2=WechatPayV2([("current", V2_KEY)], MCH, app_id=APP))
    refund = traffic.pay_v2_refund_notify(
        "/v3", V2_KEY, APP, MCH, {"refund_id": "r", "refund_status": "SUCCESS", "out_trade_no": "o1"}, "n"
    )
    forged = refund.body.replace(b"</xml>", b"<out_trade_no><![CDATA[FORGED]]></out_trade_no></xml>")
    e = rejected(route, Inbound("POST", "/v3", {}, {"content-type": "text/xml"}, forged), NOW)
    assert (e.reason, e.status) == ("unexpected_field", 400)
    verified = accepted(route, refund, NOW)
    assert verified.message["out_trade_no"] == "o1" and "nonce_str" not in verified.message
    twice = refund.body.replace(b"</xml>", b"<mch_id>1</mch_id></xml>")
    e = rejected(route, Inbound("POST", "/v3", {}, {"content-type": "text/xml"}, twice), NOW)
    assert e.reason == "malformed_xml"
