"""WeCom callbacks (PROTOCOLS.md §2): URL verification, app and robot messages, replies and sealing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.protocols import wxcrypt, xmlmsg
from proxy.protocols.base import Inbound, Reply, Verified
from proxy.protocols.wecom import EMPTY, Wecom
from proxy.tools import traffic
from tests.proxy.protocols import vectors as v
from tests.proxy.protocols.helpers import accepted, inbound, rejected, requests, verify_or_reject

NOW = 1700000000
CORP, TOKEN, KEY = "ww0123456789abcdef", "tok", "C" * 43
MSG = (
    b"<xml><ToUserName><![CDATA[ww0123456789abcdef]]></ToUserName><FromUserName><![CDATA[zhang]]></FromUserName>"
    b"<CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi]]></Content>"
    b"<MsgId>77</MsgId><AgentID>1000002</AgentID></xml>"
)
PASSIVE = (
    b"<xml><ToUserName><![CDATA[zhang]]></ToUserName><FromUserName><![CDATA[ww0123456789abcdef]]></FromUserName>"
    b"<CreateTime>1700000001</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[yo]]></Content></xml>"
)
ROBOT = json.dumps(
    {"msgid": "m1", "aibotid": "bot1", "chattype": "single", "from": {"userid": "zhang"}, "msgtype": "text"}
).encode()


def wecom(**kw: object) -> Wecom:
    args: dict[str, object] = {
        "tokens": [("current", TOKEN)],
        "aes_keys": [("current", KEY)],
        "receive_id": CORP,
    }
    args.update(kw)
    return Wecom(**args)  # type: ignore[arg-type]


def message(body: bytes = MSG, ts: int = NOW, nonce: str = "n1", **kw: object) -> Inbound:
    robot = bool(kw.pop("robot", False))
    rid = "" if robot else CORP
    return inbound(
        traffic.wecom_message(
            "/wc", TOKEN, KEY, rid, body, str(ts), nonce, robot=robot, agent_id="1000002", **kw
        )  # type: ignore[arg-type]
    )


# -- public vectors --------------------------------------------------------------------------------------------


def test_v7_url_verification_from_the_raw_query() -> None:
    wc = Wecom([("current", v.V7_TOKEN)], [("current", v.V7_KEY)], v.V7_CORP_ID)
    target = f"/wc?msg_signature={v.V7_MSG_SIGNATURE}&timestamp={v.V7_TS}&nonce={v.V7_NONCE}&echostr={v.V7_ECHOSTR_URL}"
    verified = accepted(wc, traffic.Outbound("GET", target, (), b""), int(v.V7_TS))
    assert verified.direct_reply == Reply(200, v.V7_REPLY, "text/plain; charset=utf-8", "echo")


def test_v7_echostr_whose_plus_signs_a_form_decoder_turned_into_spaces() -> None:
    wc = Wecom([("current", v.V7_TOKEN)], [("current", v.V7_KEY)], v.V7_CORP_ID)
    query = {
        "msg_signature": v.V7_MSG_SIGNATURE,
        "timestamp": v.V7_TS,
        "nonce": v.V7_NONCE,
        "echostr": v.V7_ECHOSTR.replace("+", " "),
    }
    verified = accepted(wc, Inbound("GET", "/wc", query, {}, b""), int(v.V7_TS))
    assert verified.direct_reply is not None and verified.direct_reply.body == v.V7_REPLY


def test_v8_message() -> None:
    wc = Wecom([("current", v.V7_TOKEN)], [("current", v.V7_KEY)], v.V7_CORP_ID)
    query = {"msg_signature": v.V8_MSG_SIGNATURE, "timestamp": v.V8_TS, "nonce": v.V8_NONCE}
    verified = accepted(wc, Inbound("POST", "/wc", query, {}, v.V8_BODY), int(v.V8_TS))
    m = verified.message
    assert (m["Content"], m["MsgId"], m["AgentID"], m["FromUserName"]) == (
        "hello",
        "4561255354251345929",
        "218",
        "mycreate",
    )
    assert wc.dedup_key(verified) == "agent:218|wx5823bf96d3bd56c7|msg|4561255354251345929"


def test_v9_url_verification_and_message() -> None:
    wc = Wecom([("current", v.V9_TOKEN)], [("current", v.V9_KEY)], v.V9_CORP_ID)
    get = {
        "msg_signature": v.V9_GET_SIGNATURE,
        "timestamp": v.V9_GET_TS,
        "nonce": v.V9_GET_NONCE,
        "echostr": v.V9_ECHOSTR,
    }
    verified = accepted(wc, Inbound("GET", "/wc", get, {}, b""), int(v.V9_GET_TS))
    assert verified.direct_reply is not None and verified.direct_reply.body == v.V9_GET_REPLY
    post = {"msg_signature": v.V9_POST_SIGNATURE, "timestamp": v.V9_POST_TS, "nonce": v.V9_POST_NONCE}
    verified = accepted(wc, Inbound("POST", "/wc", post, {}, v.V9_BODY), int(v.V9_POST_TS))
    assert (verified.message["Content"], verified.message["MsgId"]) == ("你好", "1456453720")


def test_v10_url_verification_and_wrong_nonce() -> None:
    wc = Wecom([("current", v.V10_TOKEN)], [("current", v.V10_KEY)], v.V10_CORP_ID)
    query = {
        "msg_signature": v.V10_MSG_SIGNATURE,
        "timestamp": v.V10_TS,
        "nonce": v.V10_NONCE,
        "echostr": v.V10_ECHOSTR,
    }
    verified = accepted(wc, Inbound("GET", "/wc", query, {}, b""), int(v.V10_TS))
    assert verified.direct_reply is not None and verified.direct_reply.body == v.V10_REPLY
    bad = Inbound("GET", "/wc", {**query, "nonce": v.V10_BAD_NONCE}, {}, b"")
    assert rejected(wc, bad, int(v.V10_TS)).reason == "bad_msg_signature"


# -- round trips and negatives ---------------------------------------------------------------------------------


def test_url_verification_round_trip_replies_the_plaintext_exactly() -> None:
    req = traffic.wecom_url_check("/wc", TOKEN, KEY, CORP, "8321337123", str(NOW), "n")
    verified = accepted(wecom(), req, NOW)
    assert verified.direct_reply == Reply(200, b"8321337123", "text/plain; charset=utf-8", "echo")
    assert verified.replay_key is None


def test_app_message_round_trip() -> None:
    verified = accepted(wecom(decrypt_for_backend=True), message(), NOW)
    assert verified.message["Content"] == "hi"
    assert verified.backend_body == MSG and verified.drop_query == ("msg_signature",)
    assert verified.replay_key is not None and verified.replay_key.startswith(f"wecom:{NOW}:n1:")
    assert verified.replay_ttl == 600
    assert wecom().dedup_key(verified) == "agent:1000002|ww0123456789abcdef|msg|77"
    assert accepted(wecom(), message(), NOW).backend_body is None


def test_robot_json_round_trip_and_dedup() -> None:
    robot = wecom(receive_id="")
    verified = accepted(robot, message(ROBOT, robot=True), NOW)
    assert verified.message["from.userid"] == "zhang"
    assert robot.dedup_key(verified) == "robot|bot1|m1"
    ctx = verified.seal_context
    assert isinstance(ctx, wxcrypt.ReplyContext) and ctx.json


def test_negatives() -> None:
    assert rejected(
        wecom(), traffic.tamper(traffic.wecom_message("/wc", TOKEN, KEY, CORP, MSG, str(NOW), "n")), NOW
    ).reason == ("bad_msg_signature")
    assert rejected(wecom(receive_id="ww_other"), message(), NOW).reason == "wrong_receive_id"
    assert rejected(wecom(aes_keys=[("current", "D" * 43)]), message(), NOW).reason in (
        "bad_padding",
        "bad_length",
    )
    assert rejected(wecom(), message(ts=NOW - 301), NOW).reason == "stale_timestamp"
    assert rejected(wecom(), message(ts=NOW + 301), NOW).reason == "future_timestamp"
    req = message()
    no_sig = Inbound(
        "POST", "/wc", {k: x for k, x in req.query.items() if k != "msg_signature"}, {}, req.body
    )
    assert (rejected(wecom(), no_sig, NOW).reason, rejected(wecom(), no_sig, NOW).detail) == (
        "missing_param",
        "msg_signature",
    )
    no_encrypt = Inbound("POST", "/wc", req.query, {}, b"<xml><ToUserName>x</ToUserName></xml>")
    assert rejected(wecom(), no_encrypt, NOW).reason == "missing_encrypt"
    robot_no_encrypt = Inbound(
        "POST", "/wc", req.query, {"content-type": "application/json"}, b'{"encrypt": 1}'
    )
    assert rejected(wecom(), robot_no_encrypt, NOW).reason == "missing_encrypt"
    assert rejected(wecom(), Inbound("PUT", "/wc", {}, {}, b""), NOW).status == 405
    get = traffic.wecom_url_check("/wc", TOKEN, KEY, CORP, "1", str(NOW), "n")
    assert rejected(wecom(), traffic.tamper(get), NOW).reason == "bad_msg_signature"
    non_utf8 = traffic.wecom_url_check("/wc", TOKEN, KEY, CORP, "x", str(NOW), "n")
    key = wxcrypt.AesKey.decode("current", KEY).key
    env = wxcrypt.envelope(TOKEN, key, b"\xff\xfe", CORP, str(NOW), "n", b"r" * 16)
    odd = Inbound(
        "GET",
        "/wc",
        {"msg_signature": env.signature, "timestamp": str(NOW), "nonce": "n", "echostr": env.encrypt},
        {},
        b"",
    )
    assert accepted(wecom(), non_utf8, NOW).direct_reply is not None
    assert rejected(wecom(), odd, NOW).reason == "bad_plaintext"


def test_rotation_reports_previous() -> None:
    wc = wecom(
        tokens=[("current", "new"), ("previous", TOKEN)], aes_keys=[("current", "D" * 43), ("previous", KEY)]
    )
    assert accepted(wc, message(), NOW).key_id == "previous"


# -- replies ---------------------------------------------------------------------------------------------------


def test_seal_app_reply() -> None:
    wc = wecom(random_bytes=lambda n: b"\x07" * n)
    verified = accepted(wc, message(nonce="n9"), NOW)
    sealed = wc.seal(wc.normalize(200, "text/xml", PASSIVE, verified), verified)
    fields = xmlmsg.parse(sealed.body)
    assert (fields["TimeStamp"], fields["Nonce"]) == (str(NOW), "n9")
    assert fields["MsgSignature"] == wxcrypt.sha1_signature(TOKEN, str(NOW), "n9", fields["Encrypt"])
    key = wxcrypt.AesKey.decode("current", KEY)
    assert wxcrypt.decrypt([key], fields["Encrypt"], [CORP]).message == PASSIVE
    assert wc.seal(EMPTY, verified) is EMPTY


def test_seal_robot_reply_is_a_json_envelope() -> None:
    robot = wecom(receive_id="")
    verified = accepted(robot, message(ROBOT, robot=True, nonce="n5"), NOW)
    answer = b'{"msgtype":"stream","stream":{"id":"s1","finish":true,"content":"yo"}}'
    reply = robot.normalize(200, "application/json", answer, verified)
    assert reply.kind == "passive"
    sealed = robot.seal(reply, verified)
    doc = json.loads(sealed.body)
    assert set(doc) == {"encrypt", "msgsignature", "timestamp", "nonce"}
    assert (doc["timestamp"], doc["nonce"]) == (NOW, "n5")
    assert doc["msgsignature"] == wxcrypt.sha1_signature(TOKEN, str(NOW), "n5", doc["encrypt"])
    key = wxcrypt.AesKey.decode("current", KEY)
    assert wxcrypt.decrypt([key], doc["encrypt"], [""]).message == answer
    assert robot.seal(sealed, verified) is sealed


APP_NORMALIZE = [
    (200, "text/xml", PASSIVE, "passive", None, PASSIVE),
    (200, "text/plain", b"", "ack", None, b""),
    (200, "text/plain", b"success", "ack", "success_text", b""),
    (200, "application/json", b'{"ok":1}', "ack", "json", b""),
    (200, "text/html", b"<html>oops</html>", "ack", "html", b""),
    (200, "text/plain", b"ok", "ack", "not_xml", b""),
    (201, "text/plain", b"", "ack", "status_201", b""),
    (200, "text/xml", b"<xml><Foo>1</Foo></xml>", "ack", "bad_passive_xml", b""),
]


@pytest.mark.parametrize(("status", "ctype", "body", "kind", "normalized", "out"), APP_NORMALIZE)
def test_normalize_app(
    status: int, ctype: str, body: bytes, kind: str, normalized: str | None, out: bytes
) -> None:
    wc = wecom()
    reply = wc.normalize(status, ctype, body, accepted(wc, message(), NOW))
    assert (reply.status, reply.kind, reply.normalized, reply.body) == (200, kind, normalized, out)


def test_normalize_accepts_a_backend_that_encrypts_by_itself() -> None:
    wc = wecom()
    verified = accepted(wc, message(), NOW)
    key = wxcrypt.AesKey.decode("current", KEY).key
    envelope = wxcrypt.envelope(TOKEN, key, PASSIVE, CORP, "1", "2", b"r" * 16).to_xml()
    reply = wc.normalize(200, "text/xml", envelope, verified)
    assert reply.kind == "passive" and wc.seal(reply, verified) is reply


ROBOT_NORMALIZE = [
    (200, "application/json", b'{"msgtype":"text"}', "passive", None),
    (200, "text/plain", b"", "ack", None),
    (200, "text/plain", b"success", "ack", "text"),
    (200, "application/json", b"[]", "ack", "json"),
    (200, "text/html", b"<html/>", "ack", "html"),
    (202, "application/json", b'{"msgtype":"text"}', "ack", "status_202"),
]


@pytest.mark.parametrize(("status", "ctype", "body", "kind", "normalized"), ROBOT_NORMALIZE)
def test_normalize_robot(status: int, ctype: str, body: bytes, kind: str, normalized: str | None) -> None:
    robot = wecom(receive_id="")
    reply = robot.normalize(status, ctype, body, accepted(robot, message(ROBOT, robot=True), NOW))
    assert (reply.status, reply.kind, reply.normalized) == (200, kind, normalized)


def test_fixed_replies() -> None:
    wc = wecom()
    assert wc.success_reply() == Reply(200, b"", "text/plain; charset=utf-8", "ack")
    assert wc.failure_reply("bad_msg_signature", 403).status == 403
    assert wc.backend_failure_reply().status == 502  # any non-200 makes WeCom retry
    assert (wc.dedup_key(Verified(message={"ToUserName": "x"})) or "").startswith("agent:|digest|")


@settings(max_examples=300, deadline=None)
@given(req=requests, now=st.integers(0, 2**33))
def test_verify_raises_only_rejected(req: Inbound, now: int) -> None:
    verify_or_reject(wecom(), req, now)


@settings(max_examples=200, deadline=None)
@given(encrypted=st.text(max_size=300), robot=st.booleans(), echo=st.booleans())
def test_correctly_signed_garbage_raises_only_rejected(encrypted: str, robot: bool, echo: bool) -> None:
    sig = wxcrypt.sha1_signature(TOKEN, str(NOW), "n", encrypted)
    query = {"msg_signature": sig, "timestamp": str(NOW), "nonce": "n"}
    if echo:
        verify_or_reject(wecom(), Inbound("GET", "/wc", {**query, "echostr": encrypted}, {}, b""), NOW)
        return
    body = (
        json.dumps({"encrypt": encrypted}).encode()
        if robot
        else xmlmsg.build({"Encrypt": encrypted.replace("\x00", "")})
    )
    verify_or_reject(wecom(), Inbound("POST", "/wc", query, {}, body), NOW)
