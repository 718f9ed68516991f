"""Sender helpers: what they produce is what the verifiers accept, and tampering always breaks it."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from proxy.config import RouteBase, parse_config
from proxy.protocols import build_protocol, xmlmsg
from proxy.protocols.base import Inbound
from proxy.protocols.wechat_pay_v3 import load_certificate
from proxy.tools import sender, traffic
from tests.proxy.protocols.helpers import accepted, inbound, rejected, rsa_key


def test_outbound_is_a_plain_tuple() -> None:
    method, target, headers, body = traffic.mp_url_check("/mp", "t", "echo", "1", "2")
    assert method == "GET" and target.startswith("/mp?signature=") and headers == () and body == b""


def test_tamper_changes_one_character_of_the_longest_value() -> None:
    out = traffic.Outbound("POST", "/p?a=1", (), b"<xml><A>x</A><Encrypt>abcdefghij</Encrypt></xml>")
    assert traffic.tamper(out).body == b"<xml><A>x</A><Encrypt>abcdegghij</Encrypt></xml>"
    query_only = traffic.Outbound("GET", "/p?sig=abc123&x=1", (), b"")
    assert traffic.tamper(query_only).target == "/p?sig=abc223&x=1"
    digits = traffic.Outbound("POST", "/p", (), b"12345")
    assert traffic.tamper(digits).body == b"12445"
    sig = "0123456789abcdef0123456789abcdef01234567"
    unsigned_body = traffic.Outbound("POST", f"/p?signature={sig}&nonce=1", (), b"<xml><A>x</A></xml>")
    changed = traffic.tamper(unsigned_body, body_signed=False)
    assert changed.body == unsigned_body.body
    assert changed.target.startswith("/p?signature=") and changed.target != unsigned_body.target


def test_compatible_mode_carries_plaintext_and_ciphertext() -> None:
    xml = b"<xml><ToUserName>gh</ToUserName><Content>hi</Content></xml>"
    out = traffic.mp_message(
        "/mp", "t", xml, "1", "2", encoding_aes_key="A" * 43, app_id="wx", compatible=True
    )
    fields = xmlmsg.parse(out.body)
    assert fields["Content"] == "hi" and fields["Encrypt"]
    assert inbound(out).query["encrypt_type"] == "aes"


def test_platform_certificate_has_the_chosen_serial() -> None:
    pem = traffic.platform_certificate(rsa_key(1), 0x00ABCDEF, 1700000000)
    assert load_certificate(pem).key_id == "ABCDEF"


# -- wxgate send: Mini Program, Channels shop and Open Platform routes ---------------------------------------------

TOKEN, KEY = "send-token", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
MINI_APP, COMPONENT = "wxba5fad812f8e6fb9", "wx134c8103faa5a59e"
AUTHORIZER, AUTHORIZER_GH = "wx0123456789abcdef", "gh_0123456789ab"
BIG_MSG_ID = "9007199254740993"  # 2**53 + 1: a float would make it ...992
MINI = {"protocol": "wechat-miniprogram", "token": "${T}", "app_id": MINI_APP, "encoding_aes_key": "${K}"}
OPEN = {
    "protocol": "wechat-open-platform",
    "component_app_id": COMPONENT,
    "token": "${T}",
    "encoding_aes_key": "${K}",
}


def configured(**fields: Any) -> RouteBase:
    raw = {"routes": [{"name": "r", "path": "/cb", **fields}]}
    return parse_config(raw, {"T": TOKEN, "K": KEY}).routes[0]


def sent(route: RouteBase, **opts: Any) -> Inbound:
    """What ``wxgate send`` puts on the wire for ``route``, as the verify addon reads it (path template filled)."""
    req = sender.build(route, sender.SendOptions(**opts))
    got = inbound(traffic.Outbound(req.method, req.path_query, tuple(req.headers.items()), req.body))
    appid = got.path.split("/")[2] if got.path.startswith("/open/") else None
    return dataclasses.replace(got, path_params={"appid": appid} if appid else {})


@pytest.mark.parametrize("fmt", ["json", "xml"])
@pytest.mark.parametrize("mode", ["plaintext", "compatible", "safe"])
def test_send_pushes_a_mini_program_message_in_each_mode_and_format(fmt: str, mode: str) -> None:
    route = configured(path="/mini", format=fmt, require_encryption=False, **MINI)
    req = sent(route, mode=mode, content="你好", message_id=BIG_MSG_ID)
    assert req.body.lstrip()[:1] == (b"{" if fmt == "json" else b"<")
    assert (b"Encrypt" in req.body) == (mode != "plaintext")
    assert (b"\xe4\xbd\xa0\xe5\xa5\xbd" in req.body or b"\\u4f60" in req.body) == (mode != "safe")
    verified = accepted(build_protocol(route), req, time.time())
    assert verified.message["MsgId"] == BIG_MSG_ID and verified.message["Content"] == "你好"
    assert ("msg_signature" in req.query) == (mode != "plaintext")


def test_send_pushes_a_channels_shop_order_in_safe_json() -> None:
    route = configured(path="/shop", channels=True, **MINI)
    verified = accepted(build_protocol(route), sent(route, message_id="3705115058471208928"), time.time())
    assert verified.message["Event"] == "channels_ec_order_pay"
    assert verified.message["order_info.order_id"] == "3705115058471208928"
    plain = sent(route, mode="plaintext")  # the sender lets you try; the shop's route refuses it
    assert rejected(build_protocol(route), plain, time.time()).reason == "plaintext_not_allowed"


def test_send_retries_carry_the_same_message_under_a_fresh_signature() -> None:
    route = configured(path="/mini", **MINI)
    opts = sender.SendOptions(kind="event", event="user_enter_tempsession")
    protocol = build_protocol(route)
    first, second = (
        accepted(protocol, inbound(traffic.Outbound(r.method, r.path_query, (), r.body)), time.time())
        for r in (sender.build(route, opts), sender.build(route, opts))
    )
    assert first.authenticated == second.authenticated  # same CreateTime: one notification, deduplicated
    assert first.replay_key != second.replay_key


def test_send_pushes_a_component_verify_ticket_and_an_authorized_notice() -> None:
    route = configured(path="/open/auth", kind="authorization", **OPEN)
    protocol = build_protocol(route)
    ticket = accepted(protocol, sent(route, message_id="42"), time.time()).message
    assert (
        ticket["InfoType"] == "component_verify_ticket" and ticket["ComponentVerifyTicket"] == "ticket@@@42"
    )
    notice = accepted(protocol, sent(route, kind="event", appid=AUTHORIZER), time.time()).message
    assert notice["InfoType"] == "authorized" and notice["AuthorizerAppid"] == AUTHORIZER
    with pytest.raises(ValueError, match="authorization route"):
        sender.build(configured(path="/mini", **MINI), sender.SendOptions(kind="ticket"))


def test_send_delivers_to_appid_a_release_test_account_by_default() -> None:
    bound = configured(
        path="/open/{appid}/callback", kind="messages", authorizers={AUTHORIZER: AUTHORIZER_GH}, **OPEN
    )
    req = sent(bound, content="TESTCOMPONENT_MSG_TYPE_TEXT")
    assert req.path == f"/open/{sender.RELEASE_TEST_APPID}/callback"
    verified = accepted(build_protocol(bound), req, time.time())
    assert verified.tenant_verified and verified.message["Content"] == "TESTCOMPONENT_MSG_TYPE_TEXT"
    # --appid: addressed to the original id the route binds it to, so the binding holds
    verified = accepted(build_protocol(bound), sent(bound, appid=AUTHORIZER, kind="event"), time.time())
    assert (verified.tenant, verified.message["ToUserName"]) == (AUTHORIZER, AUTHORIZER_GH)
    with pytest.raises(ValueError, match="not an appid"):
        sender.build(bound, sender.SendOptions(appid="gh_0123456789ab"))


@pytest.mark.parametrize(
    ("fields", "mode"),
    [
        ({"path": "/mini", "require_encryption": False, **MINI}, "plaintext"),
        ({"path": "/mini", **MINI}, "safe"),
    ],
)
def test_send_tamper_is_refused_in_every_mode(fields: dict[str, Any], mode: str) -> None:
    route = configured(**fields)
    forged = sent(route, mode=mode, tamper=True)
    assert rejected(build_protocol(route), forged, time.time()).reason in (
        "bad_signature",
        "bad_msg_signature",
    )


def _sealed(route: RouteBase, answer: bytes) -> bytes:
    """The reply wxgate sends for the backend's plaintext ``answer`` to one request ``wxgate send`` made."""
    protocol = build_protocol(route)
    verified = accepted(protocol, sent(route), time.time())
    return protocol.seal(protocol.normalize(200, "", answer, verified), verified).body


def test_send_reads_and_checks_the_replies_of_the_new_senders() -> None:
    mini = configured(path="/mini", **MINI)
    transfer = b'{"ToUserName":"oDemoUser","FromUserName":"gh_demo","CreateTime":1,"MsgType":"transfer_customer_service"}'
    sealed = _sealed(mini, transfer)
    opts = sender.SendOptions()
    ok = sender.accepts(mini, opts)
    assert sender.open_reply(mini, opts, sealed) == "decrypted: " + transfer.decode()
    assert (
        ok(200, sealed)
        and ok(200, b"success")
        and ok(200, b"")
        and ok(200, b'{"ErrCode":0,"ErrMsg":"success"}')
    )
    assert not ok(200, b'{"ErrCode":1,"ErrMsg":"busy"}') and not ok(500, b"success")
    assert not ok(
        200, sealed.replace(b'"MsgSignature":"', b'"MsgSignature":"0')
    )  # a seal that does not check
    assert not ok(200, b"<xml><MsgType>text</MsgType></xml>")  # XML answering a JSON push
    assert "does not open" in (
        sender.open_reply(mini, opts, sealed.replace(b'"MsgSignature":"', b'"MsgSignature":"0')) or ""
    )
    authorization = sender.accepts(configured(path="/open/auth", kind="authorization", **OPEN), opts)
    assert authorization(200, b"success") and not authorization(200, b"") and not authorization(200, b"ok")
    messages = configured(path="/open/{appid}/callback", kind="messages", **OPEN)
    passive = b"<xml><ToUserName>o</ToUserName><FromUserName>gh</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType><Content>x</Content></xml>"
    reply = _sealed(messages, passive)
    assert (
        sender.accepts(messages, opts)(200, reply)
        and sender.open_reply(messages, opts, reply) == "decrypted: " + passive.decode()
    )
    for_the_mini_program = _sealed(configured(path="/mini", format="xml", **MINI), passive)
    assert not sender.accepts(messages, opts)(200, for_the_mini_program)  # sealed for another receiveid
    verify = sender.SendOptions(kind="verify")
    assert (
        sender.accepts(mini, verify)(200, b"8165483926513712")
        and sender.open_reply(mini, verify, b"1") is None
    )
