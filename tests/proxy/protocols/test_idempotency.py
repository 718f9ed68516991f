"""Dedup keys never merge two distinct notifications, and every retry of one keeps its key.

Each recipe is driven through the protocol's own ``verify`` with sender traffic, as WeChat sends it: a same-second
burst of distinct notifications of one kind (PROTOCOLS.md §1.5, §2, §3.4, §4.6) must give as many keys as
notifications, and a retry (same message, fresh timestamp, nonce, signature, and for encrypted messages a fresh
envelope) the same key as the first delivery.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import pytest

from proxy.protocols import idempotency, xmlmsg
from proxy.protocols.base import Protocol, Verified
from proxy.protocols.hmac_sig import HmacSignature
from proxy.protocols.wechat_mp import WechatMp
from proxy.protocols.wechat_pay_v2 import WechatPayV2
from proxy.protocols.wecom import Wecom
from proxy.tools import traffic
from tests.proxy.protocols import test_wechat_pay_v3 as v3t
from tests.proxy.protocols.helpers import accepted

NOW = v3t.NOW
TOKEN, AES = "spamtest", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APP, CORP, MCH, PAY_KEY = (
    "wx2c2769f8efd9abc2",
    "ww1436e0e65a779aee",
    "1900000109",
    "192006250b4c09247ec02edce69f6a2d",
)
SECOND = NOW - 3  # every event of a burst was created in this one second


def event(fields: dict[str, str | int], nested: str = "") -> bytes:
    """An event from user ``oUser`` at ``SECOND``; ``nested`` is raw XML appended inside ``<xml>``."""
    head = {"ToUserName": "gh_test", "FromUserName": "oUser", "CreateTime": SECOND, "MsgType": "event"}
    return xmlmsg.build({**head, **fields})[: -len("</xml>")] + nested.encode() + b"</xml>"


def contact(change: str, **ids: str) -> bytes:
    return event({"FromUserName": "sys", "Event": "change_contact", "ChangeType": change, **ids})


WECOM_BURST = [
    contact("create_user", UserID="zhangsan", Name="张三"),
    contact("create_user", UserID="lisi", Name="李四"),
    contact("update_user", UserID="zhangsan", NewUserID="zhangsan2"),
    contact("delete_user", UserID="wangwu"),
    contact("create_party", Id="2", Name="研发部", ParentId="1"),
    contact("update_party", Id="3", Name="销售部"),
    contact("update_tag", TagId="1", AddUserItems="zhangsan,lisi"),
    contact("update_tag", TagId="2", AddUserItems="zhangsan,lisi"),
    *(
        event(
            {
                "FromUserName": "sys",
                "Event": "change_external_contact",
                "ChangeType": "add_external_contact",
                "UserID": "zhangsan",
                "ExternalUserID": external,
                "WelcomeCode": "WELCOMECODE",
            }
        )
        for external in ("woAJ2GCAAAXtWyujaWJHDDGi0mACAAA", "woAJ2GCAAAXtWyujaWJHDDGi0mACBBB")
    ),
    *(
        event(
            {"FromUserName": "sys", "Event": "change_external_chat", "ChatId": chat, "ChangeType": "create"}
        )
        for chat in ("wrOgQhDgAAMYQiS5ol9G7gK9JVAAAA", "wrOgQhDgAAMYQiS5ol9G7gK9JVBBBB")
    ),
]


def sent(*lists: tuple[str, str]) -> bytes:
    items = "".join(
        f"<List><TemplateId><![CDATA[{t}]]></TemplateId><MsgID>{m}</MsgID><ErrorCode>0</ErrorCode>"
        "<ErrorStatus><![CDATA[success]]></ErrorStatus></List>"
        for t, m in lists
    )
    return event(
        {"Event": "subscribe_msg_sent_event"}, f"<SubscribeMsgSentEvent>{items}</SubscribeMsgSentEvent>"
    )


def popup(*lists: tuple[str, str]) -> bytes:
    items = "".join(
        f"<List><TemplateId><![CDATA[{t}]]></TemplateId><SubscribeStatusString><![CDATA[{s}]]>"
        "</SubscribeStatusString><PopupScene>2</PopupScene></List>"
        for t, s in lists
    )
    return event(
        {"Event": "subscribe_msg_popup_event"}, f"<SubscribeMsgPopupEvent>{items}</SubscribeMsgPopupEvent>"
    )


def card(kind: str, code: str) -> bytes:
    return event(
        {"Event": kind, "CardId": "pFS7Fjg8kV1IdDz01r4SQwMkuCKc", "UserCardCode": code, "OuterStr": "12b"}
    )


MP_BURST = [
    card("user_get_card", "12312312"),
    card("user_get_card", "12312313"),
    card("user_del_card", "12312312"),
    card("user_consume_card", "12312314"),
    sent(("VRR0UEO9VJOLs0MHlU0OilqX6MVFDwH3_3gz3Oc0NIc", "1700827132819554304")),
    sent(("VRR0UEO9VJOLs0MHlU0OilqX6MVFDwH3_3gz3Oc0NIc", "1700827132819554305")),
    sent(
        ("VRR0UEO9VJOLs0MHlU0OilqX6MVFDwH3_3gz3Oc0NIc", "1700827132819554306"), ("T2", "1700827132819554307")
    ),
    sent(
        ("VRR0UEO9VJOLs0MHlU0OilqX6MVFDwH3_3gz3Oc0NIc", "1700827132819554306"), ("T2", "1700827132819554308")
    ),
    popup(("T1", "accept"), ("T2", "reject")),
    popup(("T1", "accept"), ("T2", "accept")),  # differs from the previous one only in its second <List>
    event({"Event": "CLICK", "EventKey": "MENU_A"}),
    event({"Event": "CLICK", "EventKey": "MENU_B"}),
    event({"Event": "wxa_media_check", "trace_id": "967e945cd8a3e458f3c74dcb886068e9"}),  # WxJava#2705
    event({"Event": "wxa_media_check", "trace_id": "967e945cd8a3e458f3c74dcb886068ea"}),
]


def mp_plain() -> WechatMp:
    return WechatMp([("current", TOKEN)])


def mp_safe() -> WechatMp:
    return WechatMp([("current", TOKEN)], aes_keys=[("current", AES)], app_id=APP)


def wecom() -> Wecom:
    return Wecom([("current", TOKEN)], [("current", AES)], CORP)


def mp_delivery(protocol: WechatMp, body: bytes, attempt: int) -> Verified:
    """Delivery ``attempt`` of ``body``: its own timestamp, nonce and signature (and envelope when encrypted)."""
    aes = AES if protocol.aes_keys else None
    out = traffic.mp_message(
        "/mp", TOKEN, body, str(NOW + attempt), f"nonce{attempt}", encoding_aes_key=aes, app_id=APP
    )
    return accepted(protocol, out, NOW)


def wecom_delivery(protocol: Wecom, body: bytes, attempt: int) -> Verified:
    out = traffic.wecom_message(
        "/wecom", TOKEN, AES, CORP, body, str(NOW + attempt), f"nonce{attempt}", agent_id="1000002"
    )
    return accepted(protocol, out, NOW)


def assert_burst_keys(
    protocol: Protocol, burst: list[bytes], deliver: Callable[[bytes, int], Verified]
) -> None:
    first = [protocol.dedup_key(deliver(body, 1)) for body in burst]
    assert None not in first
    assert len(set(first)) == len(burst), "two distinct notifications share a dedup key"
    assert [protocol.dedup_key(deliver(body, 2)) for body in burst] == first, "a retry changed its key"


@pytest.mark.parametrize("protocol", [mp_plain(), mp_safe()], ids=["plaintext", "safe"])
def test_mp_same_second_events_get_distinct_keys_and_retries_keep_them(protocol: WechatMp) -> None:
    assert_burst_keys(protocol, MP_BURST, lambda body, n: mp_delivery(protocol, body, n))


def test_mp_keys_by_documented_ids() -> None:
    keys = [mp_plain().dedup_key(mp_delivery(mp_plain(), body, 1)) for body in MP_BURST[4:6]]
    assert keys == [
        "gh_test|subscribe_msg_sent_event|1700827132819554304",
        "gh_test|subscribe_msg_sent_event|1700827132819554305",
    ]
    mass = event({"Event": "MASSSENDJOBFINISH", "MsgID": "1000001625", "Status": "send success"})
    assert mp_plain().dedup_key(mp_delivery(mp_plain(), mass, 1)) == "gh_test|MASSSENDJOBFINISH|1000001625"
    text = xmlmsg.build({"ToUserName": "gh_test", "FromUserName": "o", "CreateTime": 1, "MsgType": "text",
                         "Content": "hi", "MsgId": 6054768590064713728})  # fmt: skip
    assert mp_plain().dedup_key(mp_delivery(mp_plain(), text, 1)) == "gh_test|msg|6054768590064713728"


def test_mp_events_without_an_id_are_keyed_by_the_digest_of_the_decrypted_plaintext() -> None:
    body = card("user_get_card", "12312312")
    safe = mp_delivery(mp_safe(), body, 1)
    assert safe.authenticated == body  # the plaintext, not the envelope around it
    assert mp_safe().dedup_key(safe) == "digest|" + hashlib.sha256(body).hexdigest()
    assert mp_plain().dedup_key(mp_delivery(mp_plain(), body, 1)) == mp_safe().dedup_key(safe)


def test_wecom_same_second_contact_changes_get_distinct_keys_and_retries_keep_them() -> None:
    protocol = wecom()
    assert_burst_keys(protocol, WECOM_BURST, lambda body, n: wecom_delivery(protocol, body, n))
    assert (protocol.dedup_key(wecom_delivery(protocol, WECOM_BURST[0], 1)) or "").startswith(
        "agent:|digest|"
    )


def test_wecom_robot_messages_keep_their_msgid() -> None:
    protocol = Wecom([("current", TOKEN)], [("current", AES)], "")
    message = json.dumps(
        {"msgid": "m1", "aibotid": "bot1", "msgtype": "text", "text": {"content": "hi"}}
    ).encode()
    keys = {
        protocol.dedup_key(
            accepted(
                protocol, traffic.wecom_message("/r", TOKEN, AES, "", message, str(NOW), n, robot=True), NOW
            )
        )
        for n in ("a", "b")
    }
    assert keys == {"robot|bot1|m1"}


# -- WeChat Pay v2 ---------------------------------------------------------------------------------------------


def v2() -> WechatPayV2:
    return WechatPayV2([("current", PAY_KEY)], MCH)


def paid(trade: str, nonce: str, **extra: str) -> dict[str, str]:
    fields = {
        "return_code": "SUCCESS",
        "appid": "wxd930ea5d5a258f4f",
        "mch_id": MCH,
        "nonce_str": nonce,
        "result_code": "SUCCESS",
        "openid": "oUpF8uMEb4qRXf22hE3X68TekukE",
        "trade_type": "JSAPI",
        "total_fee": "1",
        "transaction_id": f"42000000{trade}",
        "out_trade_no": f"T{trade}",
        "time_end": "20240101120000",
        **extra,
    }
    return {k: v for k, v in fields.items() if v}


def refund_fields(refund: str) -> dict[str, str]:
    return {
        "out_refund_no": f"R{refund}",
        "out_trade_no": "T1",
        "refund_id": f"5030010318{refund}",
        "refund_status": "SUCCESS",
        "refund_fee": "1",
        "transaction_id": "420000001",
    }


def test_pay_v2_bursts_get_distinct_keys_and_retries_keep_them() -> None:
    def deliver(which: bytes, attempt: int) -> Verified:
        kind, ident = which.decode().split(":")
        nonce = f"nonce{attempt}"  # a re-sent notice may carry a fresh nonce_str, and so a fresh sign
        if kind == "refund":
            out = traffic.pay_v2_refund_notify(
                "/v2", PAY_KEY, "wxd930ea5d5a258f4f", MCH, refund_fields(ident), nonce
            )
        elif kind == "nostate":  # no result_code: keyed by the digest, never by "pay|…|…|"
            out = traffic.pay_v2_notify("/v2", PAY_KEY, paid("1", nonce, result_code="", attach=ident))
        else:
            out = traffic.pay_v2_notify("/v2", PAY_KEY, paid(ident, nonce))
        return accepted(v2(), out, NOW)

    burst = [b"pay:1", b"pay:2", b"refund:1", b"refund:2", b"nostate:a", b"nostate:b"]
    assert_burst_keys(v2(), burst, deliver)
    assert v2().dedup_key(deliver(b"pay:1", 1)) == f"pay|{MCH}|420000001|SUCCESS"
    assert (v2().dedup_key(deliver(b"nostate:a", 1)) or "").startswith("digest|")


# -- WeChat Pay v3 ---------------------------------------------------------------------------------------------


def share(order: str, account: str) -> dict[str, object]:
    """A profit-sharing notice: up to 50 orders per transaction_id, one notice per receiver, no trade_state."""
    return {
        "mchid": MCH,
        "transaction_id": "4200000000000000000000000001",
        "order_id": f"30000000000000000000000000{order}",
        "out_order_no": f"P2024{order}",
        "receiver": {"type": "MERCHANT_ID", "account": account, "amount": 100, "description": "分给商户"},
        "success_time": "2024-01-01T12:00:00+08:00",
    }


def test_pay_v3_profit_sharing_burst_gets_distinct_keys_and_retries_keep_them() -> None:
    protocol = v3t.v3()
    notices = {
        b"1a": share("01", "1900000201"),
        b"1b": share("01", "1900000202"),
        b"2a": share("02", "1900000201"),
        b"3a": share("03", "1900000201"),
    }

    def deliver(which: bytes, attempt: int) -> Verified:
        # every retry: a fresh resource nonce (so another ciphertext), timestamp, nonce, signature and event id
        out = v3t.notice(
            notices[which],
            ts=NOW - attempt,
            event_type="PROFITSHARING.SUCCESS",
            notification_id=f"EV-{which.decode()}-{attempt}",
            resource_nonce=f"resnonce{attempt:04d}",
        )
        return accepted(protocol, out, NOW)

    assert_burst_keys(protocol, list(notices), deliver)
    plaintext = json.dumps(notices[b"1a"], ensure_ascii=False, separators=(",", ":")).encode()
    digest = hashlib.sha256(plaintext).hexdigest()
    assert protocol.dedup_key(deliver(b"1a", 1)) == f"digest|PROFITSHARING.SUCCESS|{digest}"


def test_pay_v3_business_keys_need_their_state() -> None:
    protocol = v3t.v3()
    paid_v3 = accepted(protocol, v3t.notice(), NOW)
    assert protocol.dedup_key(paid_v3) == "trade|1217752501201407033233368018|SUCCESS"
    refund = accepted(
        protocol, v3t.notice({**v3t.REFUND, "refund_status": ""}, event_type="REFUND.SUCCESS"), NOW
    )
    assert (protocol.dedup_key(refund) or "").startswith("digest|REFUND.SUCCESS|")


# -- route-level fields and the generic digest -----------------------------------------------------------------


def test_fields_key_needs_every_field_and_joins_unambiguously() -> None:
    assert idempotency.fields_key({"a": "x|y", "b": "z"}, ["a", "b"]) != idempotency.fields_key(
        {"a": "x", "b": "y|z"}, ["a", "b"]
    )
    assert idempotency.fields_key({"a": "x"}, ["a", "b"]) is None
    assert idempotency.fields_key({"a": "x", "b": ""}, ["a", "b"]) is None
    assert idempotency.fields_key({"a": "x", "b": "1"}, ["a", "b"]) == 'fields|[["a","x"],["b","1"]]'


def test_hmac_fields_are_joined_unambiguously() -> None:
    protocol = HmacSignature([("current", "s")], dedup_fields=["a", "b"])
    split = [{"a": "x|b=y", "b": "z"}, {"a": "x", "b": "y|b=z"}]
    keys = {protocol.dedup_key(Verified(message={**m, "nonce": "n"})) for m in split}
    assert len(keys) == 2


def test_digest_prefers_the_authenticated_bytes_and_is_canonical_otherwise() -> None:
    assert idempotency.digest({"b": "2", "a": "1"}) == idempotency.digest({"a": "1", "b": "2"})
    assert idempotency.digest({"a": "1"}, b"<xml/>") == hashlib.sha256(b"<xml/>").hexdigest()
    assert idempotency.digest({"a": "1", "n": "x"}, exclude=("n",)) == idempotency.digest({"a": "1"})
    assert idempotency.digest({"a": "\ud800"}) != idempotency.digest(
        {"a": ""}
    )  # lone surrogates do not raise


# -- lookup aliases (wxgate lookup) ----------------------------------------------------------------------------
PAY_FIELDS = WechatPayV2.lookup_fields


def test_a_message_is_filed_under_each_id_group_it_carries() -> None:
    msg = {"FromUserName": "oUser", "CreateTime": "1700000000", "MsgId": "123"}
    assert idempotency.lookup_aliases(msg, WechatMp.lookup_fields) == (
        idempotency.lookup_alias([("MsgId", "123")]),
        idempotency.lookup_alias([("FromUserName", "oUser"), ("CreateTime", "1700000000")]),
    )
    notice = {"transaction_id": "4200", "out_trade_no": "T1", "result_code": "SUCCESS"}
    assert len(idempotency.lookup_aliases(notice, PAY_FIELDS)) == 2  # no refund ids: no refund aliases
    assert idempotency.lookup_aliases({"CreateTime": "1700000000"}, WechatMp.lookup_fields) == ()


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (
            [("FromUserName", 'a"|CreateTime="1'), ("CreateTime", "2")],
            [("FromUserName", "a"), ("CreateTime", '1"|2')],
        ),
        ([("transaction_id", "1")], [("out_trade_no", "1")]),
    ],
)
def test_aliases_of_different_ids_differ(one: list[tuple[str, str]], other: list[tuple[str, str]]) -> None:
    assert idempotency.lookup_alias(one) != idempotency.lookup_alias(other)
