"""Mini Program and Channels shop push (PROTOCOLS-MINI-OPEN.md §A1, §A3, vectors §A5): verification in each mode
and format, per-event contracts, dedup identities, hostile bodies and sealed replies."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.protocols import wxcrypt, xmlmsg
from proxy.protocols.base import Inbound, Reply, Verified
from proxy.protocols.wechat_miniprogram import (
    EVENT_DEADLINES,
    XPAY_ACK,
    XPAY_DEDUP_TTL,
    WechatMiniProgram,
)
from proxy.protocols.wechat_mp import SUCCESS
from proxy.tools import traffic_miniprogram as wire
from tests.proxy.protocols.helpers import accepted, inbound, rejected, requests, verify_or_reject

# -- §A5 shared inputs and vectors V-M1…V-M4 (S-mini-push worked examples) -------------------------------------
TOKEN, KEY, APP_ID = "AAAAA", "A" * 43, "wxba5fad812f8e6fb9"
VM1 = {"timestamp": "1714036504", "nonce": "1514711492", "echostr": "4375120948345356249"}
VM1_SIGNATURE = "f464b24fc39322e44b38aa78f5edd27bd1441696"
VM2_TS, VM2_NONCE, VM2_SIGNATURE = "1714037059", "486452656", "899cf89e464efb63f54ddac96b0a0a235f53aa78"
VM3_TS, VM3_NONCE = "1714112445", "415670741"
VM3_ENCRYPT = (
    "+qdx1OKCy+5JPCBFWw70tm0fJGb2Jmeia4FCB7kao+/Q5c/ohsOzQHi8khUOb05JCpj0JB4RvQMkUyus8TPxLKJGQqcvZqzDpVzazhZv6Js"
    "XUnnR8XGT740XgXZUXQ7vJVnAG+tE8NUd4yFyjPy7GgiaviNrlCTj+l5kdfMuFUPpRSrfMZuMcp3Fn2Pede2IuQrKEYwKSqFIZoNqJ4M8Eaj"
    "AsjLY2km32IIjdf8YL/P50F7mStwntrA2cPDrM1kb6mOcfBgRtWygb3VIYnSeOBrebufAlr7F9mFUPAJGj04="
)
VM3_MSG_SIGNATURE, VM3_SIGNATURE = (
    "046e02f8204d34f8ba5fa3b1db94908f3df2e9b3",
    "6c5c811b55cc85e0e1b54100749188c20beb3f5d",
)
VM3_PLAIN = (
    b'{"ToUserName":"gh_97417a04a28d","FromUserName":"o9AgO5Kd5ggOC-bXrbNODIiE3bGY","CreateTime":1714112445,'
    b'"MsgType":"event","Event":"debug_demo","debug_str":"hello world"}'
)
VM4_RANDOM, VM4_MSG, VM4_TS, VM4_NONCE = (
    b"707722b803182950",
    b'{"demo_resp":"good luck"}',
    "1713424427",
    "415670741",
)
VM4_ENCRYPT = "ELGduP2YcVatjqIS+eZbp80MNLoAUWvzzyJxgGzxZO/5sAvd070Bs6qrLARC9nVHm48Y4hyRbtzve1L32tmxSQ=="
VM4_MSG_SIGNATURE = "1b9339964ed2e271e7c7b6ff2b0ef902fc94dea1"

NOW = 1714112445
GH, USER = "gh_97417a04a28d", "o9AgO5Kd5ggOC-bXrbNODIiE3bGY"


def mini(**kw: object) -> WechatMiniProgram:
    args: dict[str, object] = {"aes_keys": [("current", KEY)], "app_id": APP_ID}
    args.update(kw)
    return WechatMiniProgram([("current", TOKEN)], **args)  # type: ignore[arg-type]


def vm3_query(**changes: str | None) -> dict[str, str]:
    query = {
        "signature": VM3_SIGNATURE,
        "timestamp": VM3_TS,
        "nonce": VM3_NONCE,
        "openid": USER,
        "encrypt_type": "aes",
        "msg_signature": VM3_MSG_SIGNATURE,
    }
    query.update({k: v for k, v in changes.items() if v is not None})
    return {k: v for k, v in query.items() if changes.get(k, "") is not None}


VM3_BODY = json.dumps({"ToUserName": GH, "Encrypt": VM3_ENCRYPT}).encode()


def vm3(body: bytes = VM3_BODY, **changes: str | None) -> Inbound:
    return Inbound("POST", "/wxa", vm3_query(**changes), {"content-type": "application/json"}, body)


def doc(**fields: object) -> bytes:
    base: dict[str, object] = {"ToUserName": GH, "FromUserName": USER, "CreateTime": NOW, "MsgType": "event"}
    return json.dumps({**base, **fields}, separators=(",", ":")).encode()


def send(
    message: bytes, *, fmt: str = "json", mode: str = "safe", nonce: str = "n1", rand: bytes = b"r" * 16
) -> Inbound:
    return inbound(
        wire.push(
            "/wxa",
            TOKEN,
            message,
            str(NOW),
            nonce,
            fmt=fmt,  # type: ignore[arg-type]
            mode=mode,  # type: ignore[arg-type]
            encoding_aes_key=KEY,
            app_id=APP_ID,
            random_bytes=lambda n: rand[:n],
        )
    )


# -- vectors -----------------------------------------------------------------------------------------------------


def test_vm1_url_verification_echoes_echostr() -> None:
    query = {**VM1, "signature": VM1_SIGNATURE}
    for route in (mini(), mini(format="xml"), mini(channels=True), WechatMiniProgram([("current", TOKEN)])):
        verified = route.verify(Inbound("GET", "/wxa", query, {}, b""), int(VM1["timestamp"]))
        assert verified.direct_reply == Reply(
            200, b"4375120948345356249", "text/plain; charset=utf-8", "echo"
        )
    wrong = Inbound("GET", "/wxa", {**query, "nonce": "1"}, {}, b"")
    assert rejected(mini(), wrong, int(VM1["timestamp"])).reason == "bad_signature"


def test_vm2_plaintext_json_post() -> None:
    assert wxcrypt.sha1_signature(TOKEN, VM2_TS, VM2_NONCE) == VM2_SIGNATURE
    query = {"signature": VM2_SIGNATURE, "timestamp": VM2_TS, "nonce": VM2_NONCE}
    body = doc(MsgType="text", Content="hi", MsgId=49)
    verified = accepted(
        WechatMiniProgram([("current", TOKEN)]), Inbound("POST", "/wxa", query, {}, body), 1714037059
    )
    assert (verified.message["Content"], verified.message["MsgId"]) == ("hi", "49")
    assert verified.seal_context is None and verified.authenticated == body


def test_vm3_safe_json_post_decrypts_and_checks_the_appid() -> None:
    assert wxcrypt.sha1_signature(TOKEN, VM3_TS, VM3_NONCE) == VM3_SIGNATURE
    assert wxcrypt.sha1_signature(TOKEN, VM3_TS, VM3_NONCE, VM3_ENCRYPT) == VM3_MSG_SIGNATURE
    route = mini(require_encryption=True)
    verified = accepted(route, vm3(), NOW)
    assert verified.authenticated == VM3_PLAIN  # 167 bytes; the envelope's pad byte is 19
    assert len(VM3_PLAIN) == 167
    assert verified.message["Event"] == "debug_demo" and verified.message["debug_str"] == "hello world"
    assert verified.message["CreateTime"] == "1714112445"
    assert verified.backend_body is None  # only ToUserName and Encrypt: forwarded as sent
    assert route.dedup_key(verified) is None  # the console's debug tool: never deduplicated
    assert verified.seal_context == wxcrypt.ReplyContext("current", "current", VM3_TS, VM3_NONCE, json=True)
    assert rejected(mini(app_id="wx0000000000000000"), vm3(), NOW).reason == "wrong_app_id"


def test_vm3_msg_signature_is_over_the_decoded_string() -> None:
    """WeChat's JSON may escape "/" as "\\/"; the signature covers the string value, not the raw text."""
    escaped = VM3_BODY.replace(b"/", b"\\/")
    assert escaped != VM3_BODY
    assert accepted(mini(), vm3(escaped), NOW).authenticated == VM3_PLAIN


def test_vm3_without_msg_signature_is_never_a_plaintext_push() -> None:
    assert rejected(mini(), vm3(msg_signature=None), NOW).reason == "missing_param"
    # encrypt_type and msg_signature both removed: refused whether or not the route requires encryption
    stripped = vm3(msg_signature=None, encrypt_type=None)
    assert rejected(mini(require_encryption=True), stripped, NOW).reason == "plaintext_not_allowed"
    e = rejected(mini(), stripped, NOW)
    assert (e.reason, e.detail) == ("missing_param", "msg_signature")
    tampered = VM3_BODY.replace(b"+qdx", b"+qdy")
    assert rejected(mini(), vm3(tampered), NOW).reason == "bad_msg_signature"
    assert rejected(mini(), vm3(signature="0" * 40), NOW).reason == "bad_signature"
    assert rejected(mini(), vm3(openid="oVICTIM"), NOW).reason == "openid_mismatch"
    assert rejected(mini(), vm3(b'{"ToUserName":"gh"}'), NOW).reason == "missing_encrypt"
    assert rejected(mini(), vm3(b'{"Encrypt":7}'), NOW).reason == "missing_encrypt"
    assert rejected(WechatMiniProgram([("current", TOKEN)]), vm3(), NOW).reason == "encryption_not_configured"


def test_vm4_json_reply_is_sealed_exactly() -> None:
    route = mini(random_bytes=lambda n: VM4_RANDOM)
    request = send(doc(MsgType="text", Content="hi", MsgId=1))
    verified = accepted(route, request, NOW)
    verified = Verified(
        message=verified.message,
        seal_context=wxcrypt.ReplyContext("current", "current", VM4_TS, VM4_NONCE, json=True),
    )
    reply = route.seal(route.normalize(200, "application/json", VM4_MSG, verified), verified)
    expected = {
        "Encrypt": VM4_ENCRYPT,
        "MsgSignature": VM4_MSG_SIGNATURE,
        "TimeStamp": 1713424427,
        "Nonce": VM4_NONCE,
    }
    assert reply.body == json.dumps(expected, separators=(",", ":")).encode()
    assert (reply.status, reply.kind, reply.content_type) == (200, "passive", wxcrypt.JSON_CONTENT_TYPE)
    assert wire.decode_reply(reply.body, TOKEN, KEY, APP_ID) == VM4_MSG


# -- round trips -------------------------------------------------------------------------------------------------

XML_TEXT = (
    "<xml><ToUserName><![CDATA[gh_97417a04a28d]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName>"
    "<CreateTime>{ts}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content>"
    "<MsgId>{msg_id}</MsgId></xml>"
)


def cs_message(fmt: str, msg_id: int, content: str) -> bytes:
    if fmt == "xml":
        return XML_TEXT.format(user=USER, ts=NOW, content=content, msg_id=msg_id).encode()
    return doc(MsgType="text", Content=content, MsgId=msg_id)  # MsgId a bare JSON number


def transfer(fmt: str) -> bytes:
    fields = {
        "ToUserName": USER,
        "FromUserName": GH,
        "CreateTime": NOW,
        "MsgType": "transfer_customer_service",
    }
    return json.dumps(fields).encode() if fmt == "json" else xmlmsg.build(fields)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    fmt=st.sampled_from(["json", "xml"]),
    mode=st.sampled_from(wire.MODES),
    msg_id=st.integers(0, 2**64 - 1),
    content=st.text(
        st.characters(categories=("L", "N", "P", "S"), exclude_characters="]"), min_size=1, max_size=30
    ),
    rand=st.binary(min_size=16, max_size=16),
)
def test_round_trip(fmt: str, mode: str, msg_id: int, content: str, rand: bytes) -> None:
    """builder -> verify -> dedup key (stable across re-encryption, 64-bit MsgId exact) -> sealed reply -> decoded."""
    route = mini(format=fmt, decrypt_for_backend=mode != "plaintext")
    message = cs_message(fmt, msg_id, content)
    first = accepted(route, send(message, fmt=fmt, mode=mode, nonce="a", rand=rand), NOW)
    again = accepted(route, send(message, fmt=fmt, mode=mode, nonce="b", rand=bytes(16)), NOW)
    assert first.message["Content"] == content
    assert route.dedup_key(first) == route.dedup_key(again) == f"{GH}|msg|{msg_id}"
    reply = route.seal(route.normalize(200, "", transfer(fmt), first), first)
    assert reply.kind == "passive"
    if mode == "plaintext":
        assert reply.body == transfer(fmt) and first.backend_body is None
    else:
        assert first.backend_body == message and first.drop_query == ("encrypt_type", "msg_signature")
        assert reply.body != transfer(fmt)
        assert (reply.body[:1] == b"{") == (fmt == "json")
        assert wire.decode_reply(reply.body, TOKEN, KEY, APP_ID) == transfer(fmt)
    ack = route.seal(route.normalize(200, "text/plain", b"success", first), first)
    assert (ack.body, ack.kind) == (b"success", "ack")  # never encrypted


def test_compatible_mode_trusts_only_the_ciphertext() -> None:
    message = doc(MsgType="text", Content="real", MsgId=7)
    request = send(message, mode="compatible")
    forged = request.body.replace(b'"Content":"real"', b'"Content":"FORGED"')
    assert forged != request.body
    verified = accepted(mini(), Inbound("POST", "/wxa", request.query, {}, forged), NOW)
    assert verified.message["Content"] == "real"
    # a backend that decrypts by itself gets the authenticated fields, with Encrypt
    backend = json.loads(verified.backend_body or b"")
    assert backend["Content"] == "real" and backend["Encrypt"] == json.loads(forged)["Encrypt"]
    xml = accepted(mini(format="xml"), send(cs_message("xml", 7, "real"), fmt="xml", mode="compatible"), NOW)
    assert b"<Encrypt>" in (xml.backend_body or b"") and xml.message["Content"] == "real"


# -- per-event contracts -----------------------------------------------------------------------------------------


def xpay(event: str = "xpay_goods_deliver_notify", **fields: object) -> bytes:
    return doc(**{"Event": event, "OpenId": USER, "OutTradeNo": "T1", "Env": 0, **fields})


@pytest.mark.parametrize("mode", ["plaintext", "safe"])
def test_xpay_events_answer_errcode_json_unencrypted_with_a_25_hour_ttl(mode: str) -> None:
    route = mini()
    verified = accepted(route, send(xpay(), mode=mode), NOW)
    assert verified.dedup_ttl == XPAY_DEDUP_TTL >= 90000 and verified.deadline is None
    assert route.success_reply(verified) == XPAY_ACK
    assert XPAY_ACK.body == b'{"ErrCode":0,"ErrMsg":"success"}'
    for body, normalized in ((b"success", "success_text"), (b"", "empty"), (b"<html>oops</html>", "html")):
        reply = route.seal(route.normalize(200, "text/plain", body, verified), verified)
        assert (reply.body, reply.normalized) == (XPAY_ACK.body, normalized)
    business = b'{"ErrCode":0,"ErrMsg":"success","Extra":"x"}'
    reply = route.seal(route.normalize(200, "application/json", business, verified), verified)
    assert reply.body == business  # passes through, never encrypted
    assert not route.is_backend_failure(200, "application/json", business)
    assert route.is_backend_failure(200, "application/json", b'{"ErrCode":1,"ErrMsg":"not delivered"}')
    assert route.is_backend_failure(200, "application/json", b'{"ErrCode":"-1"}')
    assert not route.is_backend_failure(200, "text/plain", b"success")
    # an outbox redelivery normalizes with the seal context only: the answer is still never encrypted
    redelivered = Verified(seal_context=verified.seal_context)
    assert route.seal(route.normalize(200, "", business, redelivered), redelivered).body == business


def test_ios_refund_query_gets_a_3_second_deadline() -> None:
    event = "xpay_subscribe_ios_refund_query_notify"
    verified = accepted(mini(), send(xpay(event)), NOW)
    assert verified.deadline == EVENT_DEADLINES[event] == 3.0 and verified.dedup_ttl == XPAY_DEDUP_TTL
    answer = b'{"ErrCode":0,"ErrMsg":"success","RefundResult":1}'
    assert mini().normalize(200, "application/json", answer, verified).body == answer


def test_other_messages_keep_the_routes_contract() -> None:
    route = mini()
    verified = accepted(route, send(cs_message("json", 5, "hi")), NOW)
    assert verified.dedup_ttl is None and verified.deadline is None
    assert route.success_reply(verified) == SUCCESS == route.success_reply()
    for body, normalized in (
        (b"<html>error</html>", "html"),
        (b"[1]", "json"),
        (b"{}", "bad_passive_json"),
        (b"ok", "text"),
        (b" success\n", "whitespace"),
    ):
        reply = route.normalize(200, "text/plain", body, verified)
        assert (reply.body, reply.kind, reply.normalized) == (b"success", "ack", normalized)
    assert route.normalize(201, "", b"{}", verified).normalized == "status_201"
    plain = Verified(message=verified.message)
    envelope = b'{"Encrypt":"x","MsgSignature":"y","TimeStamp":1,"Nonce":"2"}'
    assert route.normalize(200, "", envelope, plain).normalized == "bad_passive_json"
    sealed = route.normalize(200, "", envelope, verified)
    assert route.seal(sealed, verified) is sealed  # a backend that encrypts by itself


def test_xml_route_replies_follow_the_passive_reply_rules() -> None:
    route = mini(format="xml")
    verified = accepted(route, send(cs_message("xml", 5, "hi"), fmt="xml"), NOW)
    reply = route.seal(route.normalize(200, "text/xml", transfer("xml"), verified), verified)
    assert set(xmlmsg.parse(reply.body)) == {"Encrypt", "MsgSignature", "TimeStamp", "Nonce"}
    assert wire.decode_reply(reply.body, TOKEN, KEY, APP_ID) == transfer("xml")
    assert route.normalize(200, "application/json", b'{"a":1}', verified).normalized == "json"


# -- dedup identities (§A1.4) ------------------------------------------------------------------------------------


def key(message: bytes, fmt: str = "json", mode: str = "safe", nonce: str = "n1") -> str | None:
    route = mini(format=fmt)
    return route.dedup_key(accepted(route, send(message, fmt=fmt, mode=mode, nonce=nonce), NOW))


def test_msg_id_is_read_exactly_and_keys_survive_re_encryption() -> None:
    big = 18446744073709551615  # 2**64 - 1: a double would round it to ...552000
    assert key(cs_message("json", big, "a")) == f"{GH}|msg|{big}"
    assert key(doc(MsgType="text", MsgId="49d72d_1555684067")) == f"{GH}|msg|49d72d_1555684067"
    assert key(cs_message("xml", big, "a"), "xml") == f"{GH}|msg|{big}"


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (doc(Event="wxa_media_check", trace_id="t1"), doc(Event="wxa_media_check", trace_id="t2")),
        (xpay(), xpay(OutTradeNo="T2")),
        (
            xpay("xpay_refund_notify", MchRefundId="R1", RetCode=1),
            xpay("xpay_refund_notify", MchRefundId="R1", RetCode=0),
        ),
        (
            doc(Event="user_enter_tempsession", SessionFrom="a"),
            doc(Event="user_enter_tempsession", SessionFrom="b"),
        ),
        (
            doc(Event="subscribe_msg_sent_event", List={"TemplateId": "T", "MsgID": 1, "ErrorCode": 0}),
            doc(Event="subscribe_msg_sent_event", List={"TemplateId": "T", "MsgID": 2, "ErrorCode": 0}),
        ),
        (
            doc(
                Event="subscribe_msg_popup_event",
                List=[{"TemplateId": "T", "SubscribeStatusString": "accept"}],
            ),
            doc(
                Event="subscribe_msg_popup_event",
                List=[{"TemplateId": "T", "SubscribeStatusString": "reject"}],
            ),
        ),
        (
            doc(Event="trade_manage_order_settlement", order="1"),
            doc(Event="trade_manage_order_settlement", order="2"),
        ),
    ],
    ids=["trace_id", "xpay", "xpay_refund", "tempsession", "sent", "popup", "digest"],
)
def test_distinct_events_in_one_second_get_distinct_keys(one: bytes, other: bytes) -> None:
    assert key(one) != key(other)
    assert key(one) == key(one, nonce="n2") is not None  # a retry: new nonce, new random prefix


def test_documented_identities() -> None:
    assert key(doc(Event="wxa_media_check", trace_id="t1")) == f'{GH}|wxa_media_check|["t1"]'
    assert key(xpay()) == f'{GH}|xpay_goods_deliver_notify|["OutTradeNo=T1"]'
    sent_object = doc(
        Event="subscribe_msg_sent_event", List={"TemplateId": "T", "MsgID": 1700000000000000001}
    )
    assert key(sent_object) == f'{GH}|subscribe_msg_sent_event|["1700000000000000001"]'
    sent_array = doc(Event="subscribe_msg_sent_event", List=[{"MsgID": 2}, {"MsgID": 1}])
    assert key(sent_array) == f'{GH}|subscribe_msg_sent_event|["1","2"]'
    items = [
        {"TemplateId": "B", "SubscribeStatusString": "reject"},
        {"TemplateId": "A", "SubscribeStatusString": "accept"},
    ]
    popup = key(doc(Event="subscribe_msg_popup_event", List=items))
    assert popup == f'{GH}|subscribe_msg_popup_event|["{USER}","{NOW}","A:accept","B:reject"]'
    # the same items in another order, and CreateTime as a string (the doc samples): the same notification
    swapped = doc(Event="subscribe_msg_popup_event", List=items[::-1], CreateTime=str(NOW))
    assert key(swapped) == popup


def test_events_without_an_identity_fall_back_to_the_digest_of_the_plaintext() -> None:
    no_trace = doc(Event="wxa_media_check")
    assert key(no_trace) == "digest|" + hashlib.sha256(no_trace).hexdigest()
    no_items = doc(Event="subscribe_msg_popup_event", List=[])
    assert key(no_items) == "digest|" + hashlib.sha256(no_items).hexdigest()
    xml_two = (
        f"<xml><ToUserName>{GH}</ToUserName><FromUserName>{USER}</FromUserName><CreateTime>{NOW}</CreateTime>"
        "<MsgType>event</MsgType><Event>subscribe_msg_popup_event</Event><SubscribeMsgPopupEvent>"
        "<List><TemplateId>A</TemplateId><SubscribeStatusString>accept</SubscribeStatusString></List>"
        "<List><TemplateId>B</TemplateId><SubscribeStatusString>reject</SubscribeStatusString></List>"
        "</SubscribeMsgPopupEvent></xml>"
    ).encode()
    assert key(xml_two, "xml") == "digest|" + hashlib.sha256(xml_two).hexdigest()
    xml_one = xml_two.replace(b"<List><TemplateId>B</TemplateId><SubscribeStatusString>reject", b"").replace(
        b"</SubscribeStatusString></List></Sub", b"</Sub"
    )
    assert key(xml_one, "xml") == f'{GH}|subscribe_msg_popup_event|["{USER}","{NOW}","A:accept"]'


# -- hostile bodies ------------------------------------------------------------------------------------------------

HOSTILE_JSON = {
    "duplicate_key": b'{"ToUserName":"gh","MsgId":1,"MsgId":2}',
    "nested_duplicate": b'{"ToUserName":"gh","List":{"MsgID":1,"MsgID":2}}',
    "deep_arrays": b'{"a":' + b"[" * 40 + b"]" * 40 + b"}",
    "deep_objects": b'{"a":' + b'{"a":' * 20 + b"1" + b"}" * 21,
    "recursion": b'{"a":' + b"[" * 100000,
    "huge_number": b'{"ToUserName":"gh","MsgId":' + b"9" * 100000 + b"}",
    "invalid_utf8": b'{"ToUserName":"gh\xff\xfe"}',
    "surrogate": b'{"ToUserName":"gh\xed\xa0\x80"}',
    "array": b"[1,2]",
    "string": b'"text"',
    "number": b"1",
    "nan": b'{"a":NaN}',
}
HOSTILE_XML = {
    "xxe": b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><a>&e;</a></xml>',
    "billion_laughs": b'<!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><xml><a>&b;</a></xml>',
    "broken": b"<xml><a>",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_JSON))
@pytest.mark.parametrize("mode", ["plaintext", "safe"])
def test_hostile_json_is_refused_with_400(name: str, mode: str) -> None:
    e = rejected(mini(), send(HOSTILE_JSON[name], mode=mode), NOW)
    assert e.status == 400 and e.reason == "malformed_json", e


@pytest.mark.parametrize("name", sorted(HOSTILE_XML))
@pytest.mark.parametrize("mode", ["plaintext", "safe"])
def test_hostile_xml_is_refused_with_400(name: str, mode: str) -> None:
    e = rejected(mini(format="xml"), send(HOSTILE_XML[name], fmt="xml", mode=mode), NOW)
    assert e.status == 400 and e.reason in ("xml_dtd_forbidden", "malformed_xml"), e


def test_format_comes_from_configuration_and_the_body_is_only_cross_checked() -> None:
    xml_push = send(cs_message("xml", 1, "a"), fmt="xml", mode="plaintext")
    e = rejected(mini(), xml_push, NOW)
    assert (e.reason, e.status) == ("format_mismatch", 400)
    json_push = send(cs_message("json", 1, "a"), mode="plaintext")
    assert rejected(mini(format="xml"), json_push, NOW).reason == "format_mismatch"
    # a JSON envelope whose decrypted message is XML
    inner_xml = send(cs_message("xml", 1, "a"), mode="safe")
    assert rejected(mini(), inner_xml, NOW).reason == "format_mismatch"
    # the Content-Type is not what decides (which one WeChat sends is unverified)
    odd = Inbound("POST", "/wxa", json_push.query, {"content-type": "text/xml"}, json_push.body)
    assert accepted(mini(), odd, NOW).message["MsgId"] == "1"


# -- Channels shops (§A3) --------------------------------------------------------------------------------------


def test_channels_shops_accept_safe_mode_json_only() -> None:
    with pytest.raises(ValueError, match="JSON only"):
        mini(channels=True, format="xml")
    with pytest.raises(ValueError, match="safe mode only"):
        WechatMiniProgram([("current", TOKEN)], channels=True)
    shop = mini(channels=True)  # require_encryption is implied
    assert shop.require_encryption
    order = doc(Event="channels_ec_order_pay", order_info={"order_id": 3705115058471208928})
    assert accepted(shop, send(order), NOW).message["order_info.order_id"] == "3705115058471208928"
    assert rejected(shop, send(order, mode="plaintext"), NOW).reason == "plaintext_not_allowed"
    e = rejected(shop, send(cs_message("xml", 1, "a"), fmt="xml"), NOW)
    assert (e.reason, e.status) == ("format_mismatch", 400)


# -- the rest ------------------------------------------------------------------------------------------------------


def test_protocol_facts() -> None:
    assert WechatMiniProgram.name == "wechat-miniprogram"
    assert WechatMiniProgram.default_methods == ("GET", "POST")  # GET is URL verification
    assert {"application/json", "text/xml", "application/xml", ""} <= (
        WechatMiniProgram.content_types or set()
    )
    assert WechatMiniProgram.default_policy == "ack" and WechatMiniProgram.last_attempt == 4
    assert WechatMiniProgram.default_dedup_ttl >= 2 * 300
    schedule = WechatMiniProgram.xpay_retry_schedule
    assert len(schedule) == 15 and sum(schedule) == 24 * 3600 + 4 * 60 < XPAY_DEDUP_TTL


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="token"):
        WechatMiniProgram([])
    with pytest.raises(ValueError, match="app_id"):
        WechatMiniProgram([("current", TOKEN)], aes_keys=[("current", KEY)])
    with pytest.raises(ValueError, match="encoding_aes_key"):
        WechatMiniProgram([("current", TOKEN)], decrypt_for_backend=True)
    with pytest.raises(ValueError, match="json or xml"):
        mini(format="yaml")


def test_rotation_and_fixed_replies() -> None:
    rotated = WechatMiniProgram(
        [("current", "new"), ("previous", TOKEN)],
        aes_keys=[("current", "B" * 43), ("previous", KEY)],
        app_id=APP_ID,
    )
    assert accepted(rotated, vm3(), NOW).key_id == "previous"
    assert mini().failure_reply("format_mismatch", 400) == Reply(
        400, b"", "text/plain; charset=utf-8", "reject"
    )
    assert mini().backend_failure_reply().status == 502
    assert rejected(mini(), Inbound("PUT", "/wxa", {}, {}, b""), NOW).status == 405
    assert rejected(mini(), vm3(encrypt_type="rsa"), NOW).reason == "bad_encrypt_type"


@settings(max_examples=200, deadline=None)
@given(req=requests, now=st.integers(0, 2**33))
def test_verify_raises_only_rejected(req: Inbound, now: int) -> None:
    for route in (mini(), mini(format="xml"), WechatMiniProgram([("current", "t")])):
        verify_or_reject(route, req, now)
