"""Official Account: plaintext, compatible and safe mode (PROTOCOLS.md §1), replies and their sealing."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.protocols import wxcrypt, xmlmsg
from proxy.protocols.base import Inbound, Reply, Verified
from proxy.protocols.wechat_mp import (
    SUCCESS,
    WechatMp,
    check_signature,
    classify_reply,
    message_key,
    signature,
)
from proxy.tools import traffic
from tests.proxy.protocols import vectors as v
from tests.proxy.protocols.helpers import accepted, inbound, rejected, requests, verify_or_reject

TEXT = (
    b"<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[o_user]]></FromUserName>"
    b"<CreateTime>1409735668</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi]]></Content>"
    b"<MsgId>42</MsgId></xml>"
)
PASSIVE = (
    b"<xml><ToUserName><![CDATA[o_user]]></ToUserName><FromUserName><![CDATA[gh_1]]></FromUserName>"
    b"<CreateTime>1409735669</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[yo]]></Content></xml>"
)
NOW = 1409735669


def counter_bytes() -> object:
    count = itertools.count()
    return lambda n: bytes([next(count) % 256]) * n


def safe(**kw: object) -> WechatMp:
    args: dict[str, object] = {"aes_keys": [("current", v.MP_KEY)], "app_id": v.V4_APP_ID}
    args.update(kw)
    return WechatMp([("current", v.V4_TOKEN)], **args)  # type: ignore[arg-type]


def safe_request(xml: bytes = TEXT, ts: str = str(NOW), nonce: str = "n1", **kw: object) -> Inbound:
    return inbound(
        traffic.mp_message(
            "/mp",
            v.V4_TOKEN,
            xml,
            ts,
            nonce,
            encoding_aes_key=v.MP_KEY,
            app_id=v.V4_APP_ID,
            **kw,  # type: ignore[arg-type]
        )
    )


# -- signature vectors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "ts", "nonce", "expected"),
    [
        ("test", "1410685589", "test", "f21891de399b4e33a1a93c9a7b8a8fffb5a443ff"),  # V1
        ("AAAAA", "1714036504", "1514711492", "f464b24fc39322e44b38aa78f5edd27bd1441696"),  # V2
        ("spamtest", "1409735669", "1320562132", "16120ec1b8dbb870f510d87ce6bc2463eae6ca1a"),  # V3
    ],
    ids=["V1", "V2", "V3"],
)
def test_signature_vectors(token: str, ts: str, nonce: str, expected: str) -> None:
    assert signature(token, ts, nonce) == expected
    assert check_signature([("current", token)], expected.upper(), ts, nonce) == "current"


def test_v2_url_verification_echoes_echostr_verbatim() -> None:
    mp = WechatMp([("current", "AAAAA")])
    query = {
        "signature": "f464b24fc39322e44b38aa78f5edd27bd1441696",
        "timestamp": "1714036504",
        "nonce": "1514711492",
        "echostr": "4375120948345356249",
    }
    verified = mp.verify(Inbound("GET", "/mp", query, {}, b""), 1714036504)
    assert verified.direct_reply == Reply(200, b"4375120948345356249", "text/plain; charset=utf-8", "echo")
    assert (
        rejected(mp, Inbound("GET", "/mp", {**query, "nonce": "1"}, {}, b""), 1714036504).reason
        == "bad_signature"
    )


def test_v3_signature_binds_no_body() -> None:
    mp = WechatMp([("current", "spamtest")])
    query = {"signature": v.V4_SIGNATURE, "timestamp": v.V4_TS, "nonce": v.V4_NONCE}
    for body in (TEXT, PASSIVE):
        assert accepted(mp, Inbound("POST", "/mp", query, {}, body), NOW).message["ToUserName"]


# -- plaintext mode --------------------------------------------------------------------------------------------


def test_plaintext_post() -> None:
    mp = WechatMp([("current", "t")], timestamp_window=300)
    verified = accepted(mp, traffic.mp_message("/mp", "t", TEXT, str(NOW), "n1", openid="o_user"), NOW)
    assert verified.message["Content"] == "hi"
    assert verified.replay_key == f"mp:{NOW}:n1:{signature('t', str(NOW), 'n1')}"
    assert verified.replay_ttl == 600
    assert verified.backend_body is None and verified.seal_context is None
    assert mp.dedup_key(verified) == "gh_1|msg|42"


@pytest.mark.parametrize(("ts", "reason"), [(NOW - 301, "stale_timestamp"), (NOW + 301, "future_timestamp")])
def test_timestamp_window_both_ways(ts: int, reason: str) -> None:
    mp = WechatMp([("current", "t")])
    assert rejected(mp, traffic.mp_message("/mp", "t", TEXT, str(ts), "n"), NOW).reason == reason


@pytest.mark.parametrize("missing", ["signature", "timestamp", "nonce"])
def test_missing_query_parameters(missing: str) -> None:
    req = inbound(traffic.mp_message("/mp", "t", TEXT, str(NOW), "n"))
    query = {k: val for k, val in req.query.items() if k != missing}
    e = rejected(WechatMp([("current", "t")]), Inbound("POST", "/mp", query, {}, TEXT), NOW)
    assert (e.reason, e.detail) == ("missing_param", missing)


def test_previous_token_is_reported() -> None:
    mp = WechatMp([("current", "new"), ("previous", "old")])
    assert accepted(mp, traffic.mp_message("/mp", "old", TEXT, str(NOW), "n"), NOW).key_id == "previous"


def test_plaintext_refused_when_encryption_required_and_other_modes() -> None:
    req = traffic.mp_message("/mp", v.V4_TOKEN, TEXT, str(NOW), "n")
    assert rejected(safe(require_encryption=True), req, NOW).reason == "plaintext_not_allowed"
    assert accepted(safe(require_encryption=False), req, NOW).message["MsgId"] == "42"
    assert (
        rejected(WechatMp([("current", v.V4_TOKEN)]), safe_request(), NOW).reason
        == "encryption_not_configured"
    )
    odd = inbound(req)
    odd = Inbound("POST", "/mp", {**odd.query, "encrypt_type": "rsa"}, {}, TEXT)
    assert rejected(safe(), odd, NOW).reason == "bad_encrypt_type"
    assert rejected(safe(), Inbound("PUT", "/mp", {}, {}, b""), NOW).status == 405


# -- compatible and safe mode ----------------------------------------------------------------------------------


def v4_request(body: bytes = v.V4_BODY) -> Inbound:
    query = {
        "signature": v.V4_SIGNATURE,
        "timestamp": v.V4_TS,
        "nonce": v.V4_NONCE,
        "openid": "oyORnuP8q7ou2gfYjqLzSIWZf0rs",
        "encrypt_type": "aes",
        "msg_signature": v.V4_MSG_SIGNATURE,
    }
    return Inbound("POST", "/mp", query, {"content-type": "text/xml"}, body)


def test_v4_compatible_mode_trusts_only_the_ciphertext() -> None:
    verified = accepted(safe(), v4_request(), NOW)
    assert verified.message["Content"] == "abcdteT"
    assert verified.message["MsgId"] == "6054768590064713728"
    assert verified.message["CreateTime"] == "1409735668"
    # Rewrite the unauthenticated plaintext copy: still verifies, and the message still comes from the ciphertext.
    forged = v.V4_BODY.replace(b"abcdteT", b"FORGED!").replace(b"6054768590064713728", b"1")
    verified = accepted(safe(), v4_request(forged), NOW)
    assert (verified.message["Content"], verified.message["MsgId"]) == ("abcdteT", "6054768590064713728")


def test_v5b_safe_mode_decrypts() -> None:
    mp = WechatMp([("current", v.V5_TOKEN)], aes_keys=[("current", v.MP_KEY)], app_id=v.V5_APP_ID)
    query = {
        "signature": signature(v.V5_TOKEN, v.V5B_TS, v.V5B_NONCE),
        "timestamp": v.V5B_TS,
        "nonce": v.V5B_NONCE,
        "encrypt_type": "aes",
        "msg_signature": v.V5B_MSG_SIGNATURE,
    }
    verified = accepted(mp, Inbound("POST", "/mp", query, {}, v.V5B_BODY), int(v.V5B_TS))
    assert (verified.message["Content"], verified.message["MsgId"]) == ("hello", "12345")
    assert verified.message["FromUserName"] == "asdasdasdsadasd"
    wrong = WechatMp([("current", v.V5_TOKEN)], aes_keys=[("current", v.MP_KEY)], app_id="wx0000000000000000")
    assert (
        rejected(wrong, Inbound("POST", "/mp", query, {}, v.V5B_BODY), int(v.V5B_TS)).reason == "wrong_app_id"
    )


def test_safe_mode_round_trip_and_backend_body() -> None:
    verified = accepted(safe(decrypt_for_backend=True), safe_request(), NOW)
    assert verified.message["Content"] == "hi"
    assert verified.backend_body == TEXT
    assert verified.drop_query == ("encrypt_type", "msg_signature")
    assert isinstance(verified.seal_context, wxcrypt.ReplyContext)
    plain = accepted(safe(), safe_request(), NOW)
    assert plain.backend_body is None and plain.drop_query == ()


def test_safe_mode_negatives() -> None:
    req = safe_request()
    tampered = Inbound(
        "POST", "/mp", req.query, {}, traffic.tamper(traffic.Outbound("POST", "/", (), req.body)).body
    )
    assert rejected(safe(), tampered, NOW).reason == "bad_msg_signature"
    no_sig = Inbound(
        "POST", "/mp", {k: x for k, x in req.query.items() if k != "msg_signature"}, {}, req.body
    )
    assert rejected(safe(), no_sig, NOW).reason == "missing_param"
    no_encrypt = Inbound("POST", "/mp", req.query, {}, b"<xml><ToUserName>gh</ToUserName></xml>")
    assert rejected(safe(), no_encrypt, NOW).reason == "missing_encrypt"
    other_app = safe(app_id="wx0000000000000000")
    assert rejected(other_app, req, NOW).reason == "wrong_app_id"
    other_key = safe(aes_keys=[("current", "B" * 43)])
    assert rejected(other_key, req, NOW).reason in ("bad_padding", "bad_length")
    dtd = Inbound("POST", "/mp", req.query, {}, b'<!DOCTYPE x [<!ENTITY a "b">]><xml>&a;</xml>')
    assert rejected(safe(), dtd, NOW).reason == "xml_dtd_forbidden"


def test_rotated_aes_key_and_token_are_reported() -> None:
    mp = safe(aes_keys=[("current", "B" * 43), ("previous", v.MP_KEY)])
    assert accepted(mp, safe_request(), NOW).key_id == "previous"
    assert accepted(safe(), safe_request(), NOW).key_id == "current"


# -- replies ---------------------------------------------------------------------------------------------------


def test_seal_encrypts_a_plaintext_passive_reply_with_a_fresh_random_prefix() -> None:
    mp = safe(random_bytes=counter_bytes())
    verified = accepted(mp, safe_request(nonce="n7"), NOW)
    reply = mp.normalize(200, "text/xml", PASSIVE, verified)
    first, second = mp.seal(reply, verified), mp.seal(reply, verified)
    assert first.kind == "passive" and first.status == 200
    f1, f2 = xmlmsg.parse(first.body), xmlmsg.parse(second.body)
    assert f1["Encrypt"] != f2["Encrypt"]  # fresh random16 each time
    assert (f1["TimeStamp"], f1["Nonce"]) == (str(NOW), "n7")
    assert f1["MsgSignature"] == signature(v.V4_TOKEN, str(NOW), "n7", f1["Encrypt"])
    key = wxcrypt.AesKey.decode("current", v.MP_KEY)
    assert wxcrypt.decrypt([key], f1["Encrypt"], [v.V4_APP_ID]).message == PASSIVE


def test_seal_leaves_acks_plaintext_requests_and_sealed_replies_alone() -> None:
    mp = safe()
    encrypted = accepted(mp, safe_request(), NOW)
    assert mp.seal(SUCCESS, encrypted) is SUCCESS
    empty = Reply(200, b"", "text/plain", "ack")
    assert mp.seal(empty, encrypted) is empty
    sealed = mp.seal(mp.normalize(200, "text/xml", PASSIVE, encrypted), encrypted)
    assert mp.seal(sealed, encrypted) is sealed
    plain = Verified(message={"MsgId": "1"})
    passive = mp.normalize(200, "text/xml", PASSIVE, plain)
    assert mp.seal(passive, plain) is passive


NORMALIZE = [
    (200, "text/xml", PASSIVE, "passive", None),
    (200, "text/plain", b"success", "ack", None),
    (200, "text/plain", b"", "ack", None),
    (200, "text/plain", b"  \n", "ack", "whitespace"),
    (200, "application/json", b'{"ok": true}', "ack", "json"),
    (200, "text/html", b"<html><body>Error</body></html>", "ack", "html"),
    (200, "text/plain", b"ok", "ack", "not_xml"),
    (201, "text/plain", b"success", "ack", "status_201"),
    (200, "text/xml", b"<xml><Broken>", "ack", "bad_xml"),
    (200, "text/xml", b"<xml><MsgType>text</MsgType></xml>", "ack", "bad_passive_xml"),
    (200, "text/xml", b'<?xml version="1.0"?><!DOCTYPE x []><xml/>', "ack", "html"),
]


@pytest.mark.parametrize(("status", "ctype", "body", "kind", "normalized"), NORMALIZE)
def test_normalize(status: int, ctype: str, body: bytes, kind: str, normalized: str | None) -> None:
    reply = safe().normalize(status, ctype, body, Verified())
    assert (reply.status, reply.kind, reply.normalized) == (200, kind, normalized)
    assert reply.body == (body if normalized is None else b"success")


def test_an_encrypted_backend_reply_passes_only_for_encrypted_requests() -> None:
    envelope = wxcrypt.envelope("t", b"k" * 32, PASSIVE, "wx", "1", "2", b"r" * 16).to_xml()
    assert classify_reply(200, "text/xml", envelope, encrypted=True) == ("passive", None)
    assert classify_reply(200, "text/xml", envelope) == ("ack", "bad_passive_xml")


def test_fixed_replies() -> None:
    mp = safe()
    assert mp.success_reply() == SUCCESS
    assert mp.failure_reply("bad_signature", 403) == Reply(403, b"", "text/plain; charset=utf-8", "reject")
    assert mp.backend_failure_reply().status == 502
    assert not mp.is_backend_failure(200, "text/plain", b"anything")


@pytest.mark.parametrize(
    ("message", "key"),
    [
        ({"ToUserName": "gh", "MsgId": "1"}, "gh|msg|1"),
        ({"ToUserName": "gh", "MsgID": "2", "Event": "MASSSENDJOBFINISH"}, "gh|MASSSENDJOBFINISH|2"),
        (
            {
                "ToUserName": "gh",
                "Event": "subscribe_msg_sent_event",
                "SubscribeMsgSentEvent.List.MsgID": "3",
            },
            "gh|subscribe_msg_sent_event|3",
        ),
    ],
)
def test_message_key_uses_documented_ids(message: dict[str, str], key: str) -> None:
    assert message_key(message) == key


def test_message_key_of_an_event_without_an_id_is_the_digest_of_its_plaintext() -> None:
    body = (
        b"<xml><FromUserName>o</FromUserName><CreateTime>9</CreateTime><Event>wxa_media_check</Event></xml>"
    )
    key = message_key({"FromUserName": "o", "CreateTime": "9", "Event": "wxa_media_check"}, body)
    assert key == "digest|" + hashlib.sha256(body).hexdigest()
    # without the bytes, the canonical flat message (sorted pairs) stands in
    assert (
        message_key({"ToUserName": "gh"}) == "digest|" + hashlib.sha256(b'[["ToUserName","gh"]]').hexdigest()
    )


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="token"):
        WechatMp([])
    with pytest.raises(ValueError, match="app_id"):
        WechatMp([("current", "t")], aes_keys=[("current", v.MP_KEY)])
    with pytest.raises(ValueError, match="encoding_aes_key"):
        WechatMp([("current", "t")], decrypt_for_backend=True)


@settings(max_examples=300, deadline=None)
@given(req=requests, now=st.integers(0, 2**33))
def test_verify_raises_only_rejected(req: Inbound, now: int) -> None:
    for mp in (safe(), WechatMp([("current", "t")])):
        verify_or_reject(mp, req, now)


B64 = st.text(
    st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=% <&"), max_size=400
)


@settings(max_examples=300, deadline=None)
@given(encrypted=B64)
def test_correctly_signed_garbage_raises_only_rejected(encrypted: str) -> None:
    """Past both signatures (the sender holds the token) nothing but Rejected may come out of decryption."""
    ts, nonce = str(NOW), "n"
    query = {
        "signature": signature(v.V4_TOKEN, ts, nonce),
        "timestamp": ts,
        "nonce": nonce,
        "encrypt_type": "aes",
        "msg_signature": signature(v.V4_TOKEN, ts, nonce, encrypted),
    }
    body = b"<xml><Encrypt><![CDATA[" + encrypted.encode() + b"]]></Encrypt></xml>"
    verify_or_reject(safe(), Inbound("POST", "/mp", query, {}, body), NOW)


def test_an_openid_in_the_query_must_name_the_sender_of_the_message() -> None:
    """No signature covers the query's openid, and some SDKs take the sender from it."""
    mp = WechatMp([("current", "t")], timestamp_window=300)
    sender_id = xmlmsg.parse(TEXT)["FromUserName"]
    assert accepted(mp, traffic.mp_message("/mp", "t", TEXT, str(NOW), "n1", openid=sender_id), NOW)
    other = traffic.mp_message("/mp", "t", TEXT, str(NOW), "n2", openid="oVICTIM")
    assert rejected(mp, other, NOW).reason == "openid_mismatch"
    assert accepted(
        mp, traffic.mp_message("/mp", "t", TEXT, str(NOW), "n3"), NOW
    )  # no openid: nothing to check
