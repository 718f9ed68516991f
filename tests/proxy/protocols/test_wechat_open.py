"""Open Platform third-party platform (PROTOCOLS-MINI-OPEN.md §A2): both URLs, the `$APPID$` binding, replies."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.protocols import wxcrypt, xmlmsg
from proxy.protocols.base import Inbound, Reply, Verified
from proxy.protocols.wechat_mp import SUCCESS, signature
from proxy.protocols.wechat_open import RELEASE_TEST_ACCOUNTS, WechatOpenPlatform, is_appid
from proxy.tools import traffic_open as op
from proxy.tools.traffic import Outbound
from tests.proxy.protocols.helpers import accepted, inbound, rejected, requests, verify_or_reject

# §A5 shared inputs.
TOKEN, KEY = "AAAAA", "A" * 43
COMPONENT, MINI_APP = "wx134c8103faa5a59e", "wxba5fad812f8e6fb9"
# V-C1: the official worked example, pushed to /wxba5fad812f8e6fb9/revice.
VC1_TS, VC1_NONCE, VC1_OPENID = "1715943329", "1590219412", "o9AgO5Kd5ggOC-bXrbNODIiE3bGY"
VC1_SIGNATURE = "cc0c594499c1634947d5b502f158ee518947db27"
VC1_MSG_SIGNATURE = "6c12a4205838198b8fa631b3220723bb07f1015c"
VC1_ENCRYPT = (
    "D7yzvUNAL930rd28wf21s4hvXhz0L6Uit/p2Di6C5DHyYGpEgdBRnKjBec34JwoQXicwaZC7fOVihW80F4VtsdvE//1vr7oAbqjDv8KenVp+"
    "ajKYpJnyQ4zMRhIC+a31fCVOMC03FfzV/QuC94kBP55a+Za3sJgvAn+ZbsNqZI5DkyuzkhQN8OBqCzFhizGmy0xpM0MEA4agpvE+RuNO1rhH"
    "TtuJB5yltw1FiYzecSXJ+y/D2r81VkRn2eYjh2ltsoyfbDR7Is6ookXIFxTfyeNyeHxMeT4KN5WpCDmSbTcUYrbBUlkGLJ9n/rU8YOywma6G"
    "7aTb7KZKOqCxgfoUlYEZPk4FUL/TK7ShriFDMVCLyjQJ15Ob++agDWtcxhfUfe6HIoIpRW8mKNBQiY/Jd1svvuskA1wLef1RTtzKfMpagSCX"
    "/laZINmdnX4zrF6kIaR9P4xQrWXbsTFHTYe0Mg=="
)
VC1_TO = "gh_97417a04a28d"
# V-C2: the deterministic component reply.
VC2_RANDOM, VC2_TS, VC2_NONCE = b"999951349e8ee746", "1713424427", "415670741"
VC2_MSG = b"<xml><demo_resp>[CDATA[good luck]]</demo_resp></xml>"
VC2_ENCRYPT = (
    "hE8R6mGXHkJJjU72KxzKUd1GEkKJaEZq7vRL8XgK3o+00k8JGq6+pZJUIlTSyhsX+bxIBQ72g3GyvDdIZcr6+3HAZbSvPT9t/o11MI7d6WEL"
    "wqrGd7jMnV0zv3Zc9Nq7"
)
VC2_MSG_SIGNATURE = "03e0812039325c2712ef5f0f980fd14c70d6e307"

NOW = 1715943329
AUTH_PATH, MSG_PATH = "/open/auth", "/open/$APPID$/callback"
A_APPID, A_GH = "wx0123456789abcdef", "gh_aaaaaaaaaaaa"
B_APPID, B_GH = "wxfedcba9876543210", "gh_bbbbbbbbbbbb"
RELEASE_MP, RELEASE_MINI = "wx570bc396a51b8ff8", "wxd101a85aa106f53e"
XXE = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><Encrypt>&e;</Encrypt></xml>'
LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><xml><Encrypt>&c;</Encrypt></xml>'
)
HOSTILE = [
    XXE,
    LAUGHS,
    b"<xml><Encrypt>abc</Encrypt>",
    b"<xml><AppId>x</AppId></xm>",
    b"\xff\xfe<xml/>",
    b"{}",
]


def routed(out: Outbound) -> Inbound:
    """The request as the routing layer hands it over for the template ``/open/{appid}/callback``."""
    req = inbound(out)
    parts = req.path.split("/")
    return dataclasses.replace(req, path_params={"appid": parts[2]} if len(parts) == 4 else {})


def messages(**kw: object) -> WechatOpenPlatform:
    args: dict[str, object] = {"kind": "messages"}
    args.update(kw)
    return WechatOpenPlatform(COMPONENT, [("current", TOKEN)], [("current", KEY)], **args)  # type: ignore[arg-type]


def authorization(**kw: object) -> WechatOpenPlatform:
    args: dict[str, object] = {"kind": "authorization"}
    args.update(kw)
    return WechatOpenPlatform(COMPONENT, [("current", TOKEN)], [("current", KEY)], **args)  # type: ignore[arg-type]


def ticket(
    ticket_value: str = "ticket@@@abc", create_time: int = NOW, nonce: str = "n1", ts: int = NOW
) -> Inbound:
    return inbound(
        op.ticket_push(AUTH_PATH, TOKEN, KEY, COMPONENT, ticket_value, create_time, str(ts), nonce)
    )


def delivery(appid: str, message: bytes, nonce: str = "n1", path: str = MSG_PATH) -> Inbound:
    return routed(op.message_delivery(path, appid, TOKEN, KEY, COMPONENT, message, str(NOW), nonce))


def text(gh: str, content: str = "hi", msg_id: int = 42, openid: str = "o_user") -> bytes:
    return op.mp_text(gh, openid, content, msg_id, NOW)


def sealed_push(
    plain: bytes, outer: dict[str, str | int], receive_id: str = COMPONENT, appid: str | None = None
) -> Inbound:
    """A push of any plaintext (even one no sender would make), correctly signed and sealed for ``receive_id``."""
    key = wxcrypt.AesKey.decode("current", KEY).key
    env = wxcrypt.envelope(TOKEN, key, plain, receive_id, str(NOW), "n", b"r" * 16)
    query = {"timestamp": str(NOW), "nonce": "n", "encrypt_type": "aes", "msg_signature": env.signature}
    body = xmlmsg.build({**outer, "Encrypt": env.encrypt})
    return Inbound("POST", "/cb", query, {}, body, {"appid": appid} if appid else {})


def counter_bytes() -> object:
    count = itertools.count()
    return lambda n: bytes([next(count) % 256]) * n


# -- the official vectors --------------------------------------------------------------------------------------


def vc1(appid: str = MINI_APP, **query: str) -> Inbound:
    q = {
        "signature": VC1_SIGNATURE,
        "timestamp": VC1_TS,
        "nonce": VC1_NONCE,
        "openid": VC1_OPENID,
        "encrypt_type": "aes",
        "msg_signature": VC1_MSG_SIGNATURE,
    }
    q.update(query)
    body = xmlmsg.build({"ToUserName": VC1_TO, "Encrypt": VC1_ENCRYPT})
    return Inbound("POST", f"/{appid}/revice", q, {"content-type": "text/xml"}, body, {"appid": appid})


def test_vc1_component_message_opens_with_the_component_appid() -> None:
    verified = accepted(messages(), vc1(), NOW)
    assert verified.message["ToUserName"] == VC1_TO
    assert verified.message["FromUserName"] == VC1_OPENID
    assert (verified.message["Event"], verified.message["debug_str"]) == ("debug_demo", "hello world")
    assert len(verified.authenticated) == 292  # msg_len of the vector
    assert (verified.tenant, verified.tenant_verified) == (MINI_APP, False)
    assert verified.backend_body is None  # the envelope as sent holds nothing unauthenticated
    bound = accepted(messages(authorizers={MINI_APP: VC1_TO}), vc1(), NOW)
    assert (bound.tenant, bound.tenant_verified) == (MINI_APP, True)
    # The trailing appid is the component's, not the authorizer's (the doc's prose says otherwise).
    as_authorizer = WechatOpenPlatform(MINI_APP, [("current", TOKEN)], [("current", KEY)], kind="messages")
    assert rejected(as_authorizer, vc1(), NOW).reason == "wrong_app_id"


def test_vc1_signatures() -> None:
    assert signature(TOKEN, VC1_TS, VC1_NONCE) == VC1_SIGNATURE
    assert signature(TOKEN, VC1_TS, VC1_NONCE, VC1_ENCRYPT) == VC1_MSG_SIGNATURE
    assert rejected(messages(), vc1(msg_signature=VC1_SIGNATURE), NOW).reason == "bad_msg_signature"
    assert rejected(messages(), vc1(signature=VC1_MSG_SIGNATURE), NOW).reason == "bad_signature"


def test_vc2_component_reply_is_sealed_byte_for_byte() -> None:
    platform = messages(random_bytes=lambda n: VC2_RANDOM[:n])
    verified = Verified(seal_context=wxcrypt.ReplyContext("current", "current", VC2_TS, VC2_NONCE))
    sealed = platform.seal(Reply(200, VC2_MSG, "text/xml", "passive"), verified)
    fields = xmlmsg.parse(sealed.body)
    assert fields == {
        "Encrypt": VC2_ENCRYPT,
        "MsgSignature": VC2_MSG_SIGNATURE,
        "TimeStamp": VC2_TS,
        "Nonce": VC2_NONCE,
    }
    assert op.decode_reply(sealed.body, TOKEN, KEY, COMPONENT) == VC2_MSG


# -- the authorization URL -------------------------------------------------------------------------------------


def test_ticket_push_is_verified_and_answered_exactly_success() -> None:
    platform = authorization()
    verified = accepted(platform, ticket(), NOW)
    assert verified.message["InfoType"] == "component_verify_ticket"
    assert verified.message["ComponentVerifyTicket"] == "ticket@@@abc"
    assert verified.tenant is None and verified.seal_context is None
    for status, body in [
        (200, b"success"),
        (200, b""),
        (200, b"ok"),
        (200, b'{"ok":1}'),
        (204, b""),
        (200, text("x")),
    ]:
        reply = platform.normalize(status, "text/plain", body, verified)
        assert (reply.status, reply.body, reply.kind) == (200, b"success", "ack")
        assert platform.seal(reply, verified).body == b"success"
        assert (reply.normalized is None) == (status == 200 and body == b"success")
    assert platform.success_reply() == SUCCESS


def test_authorization_body_must_name_the_component() -> None:
    push = op.ticket_push(AUTH_PATH, TOKEN, KEY, COMPONENT, "t", NOW, str(NOW), "n1")
    other = push._replace(body=push.body.replace(COMPONENT.encode(), A_APPID.encode()))
    assert rejected(authorization(), other, NOW).reason == "wrong_app_id"
    missing = push._replace(body=xmlmsg.build({"Encrypt": xmlmsg.parse(push.body)["Encrypt"]}))
    assert rejected(authorization(), missing, NOW).reason == "wrong_app_id"
    # Sealed for another platform (its receiveid), though the body names this one.
    foreign = sealed_push(b"<xml/>", {"AppId": COMPONENT}, receive_id=A_APPID)
    assert rejected(authorization(), foreign, NOW).reason == "wrong_app_id"
    # The decrypted event names another platform.
    event = xmlmsg.build({"AppId": A_APPID, "CreateTime": NOW, "InfoType": "component_verify_ticket"})
    inner = sealed_push(event, {"AppId": COMPONENT})
    assert rejected(authorization(), inner, NOW).reason == "wrong_app_id"


def test_tickets_are_keyed_by_push_never_by_ticket_value() -> None:
    platform = authorization()
    first = platform.dedup_key(accepted(platform, ticket("same", NOW - 600, "n1"), NOW))
    second = platform.dedup_key(accepted(platform, ticket("same", NOW, "n2"), NOW))
    assert first != second  # the ticket repeats across pushes: both reach the backend
    retry = platform.dedup_key(accepted(platform, ticket("same", NOW, "n3", ts=NOW + 5), NOW))
    assert retry == second  # a retry of one push (new nonce, signature and random prefix) shares its key
    assert "same" not in (second or "")


def auth_event(info_type: str, fields: op.Fields, nonce: str, create_time: int = NOW) -> Inbound:
    return inbound(
        op.authorization_event(
            AUTH_PATH, TOKEN, KEY, COMPONENT, info_type, fields, create_time, str(NOW), nonce
        )
    )


def test_authorization_event_keys() -> None:
    platform = authorization()

    def key(info_type: str, fields: op.Fields, nonce: str = "n", create_time: int = NOW) -> str:
        dedup_key = platform.dedup_key(
            accepted(platform, auth_event(info_type, fields, nonce, create_time), NOW)
        )
        assert dedup_key is not None
        return dedup_key

    grant = {"AuthorizerAppid": A_APPID, "AuthorizationCode": "code1", "PreAuthCode": "p"}
    assert key("authorized", grant) == key("authorized", grant, "n2", NOW + 3)
    assert key("authorized", grant) != key("authorized", {**grant, "AuthorizationCode": "code2"})
    assert key("authorized", grant) != key("updateauthorized", grant)
    revoke = {"AuthorizerAppid": A_APPID}
    assert key("unauthorized", revoke) != key("unauthorized", revoke, create_time=NOW + 1)
    assert key("unauthorized", revoke) != key("unauthorized", {"AuthorizerAppid": B_APPID})
    registered: op.Fields = {"appid": A_APPID, "status": 0, "auth_code": "c", "msg": "OK"}
    assert key("notify_third_fasteregister", registered) != key(
        "notify_third_fasteregister", {**registered, "status": 89249}
    )
    # Failed registrations carry no appid: only exact retries share a key.
    failed: op.Fields = {"appid": "", "status": 89250, "msg": "fail"}
    assert key("notify_third_fasteregister", failed).startswith("digest|")
    # Verification notices: task_status and apply_status move on their own, so neither alone identifies one.
    task: op.Fields = {"taskid": "t1", "task_status": 12, "apply_status": 2, "message": ""}
    assert key("notify_3rd_wxa_auth", task) != key("notify_3rd_wxa_auth", {**task, "apply_status": 4})
    assert key("notify_3rd_wxa_auth", task) == key("notify_3rd_wxa_auth", task, "n9")
    assert key("notify_icpfiling_verify_result", {"task_id": "t", "verify_result": 1}).startswith("digest|")


# -- the message URL and its $APPID$ ---------------------------------------------------------------------------


def test_a_push_replayed_under_another_appid_is_refused_when_bound() -> None:
    bound = messages(authorizers={A_APPID: A_GH, B_APPID: B_GH})
    for_a = op.message_delivery(MSG_PATH, A_APPID, TOKEN, KEY, COMPONENT, text(A_GH), str(NOW), "n1")
    verified = accepted(bound, routed(for_a), NOW)
    assert (verified.tenant, verified.tenant_verified) == (A_APPID, True)
    replayed = for_a._replace(target=for_a.target.replace(A_APPID, B_APPID, 1))
    assert rejected(bound, routed(replayed), NOW).reason == "authorizer_mismatch"
    # Unbound, the same replay is accepted but its tenant is marked unverified.
    loose = accepted(messages(), routed(replayed), NOW)
    assert (loose.tenant, loose.tenant_verified) == (B_APPID, False)


def test_unlisted_and_malformed_appids() -> None:
    bound = messages(authorizers={A_APPID: A_GH})
    unknown = delivery(B_APPID, text(B_GH))
    assert rejected(bound, unknown, NOW).reason == "unknown_authorizer"
    for segment in [
        "$APPID$",
        "WX0123456789ABCDEF",
        "wx0123",
        "wx0123456789abcdeg",
        "wx0123456789abcdef0",
        "",
    ]:
        req = dataclasses.replace(delivery(A_APPID, text(A_GH)), path_params={"appid": segment})
        for platform in (bound, messages()):
            e = rejected(platform, req, NOW)
            assert (e.reason, e.status) == ("bad_appid", 404)
    no_param = dataclasses.replace(delivery(A_APPID, text(A_GH)), path_params={})
    assert rejected(messages(), no_param, NOW).reason == "bad_appid"
    assert is_appid(A_APPID) and is_appid(COMPONENT) and not is_appid("wx" + "0" * 15)


@pytest.mark.parametrize("appid", sorted(RELEASE_TEST_ACCOUNTS))
def test_release_test_accounts_are_always_accepted_and_bound(appid: str) -> None:
    gh = RELEASE_TEST_ACCOUNTS[appid]
    step2 = text(gh, "TESTCOMPONENT_MSG_TYPE_TEXT")
    for platform in (messages(), messages(authorizers={A_APPID: A_GH})):
        verified = accepted(platform, delivery(appid, step2), NOW)
        assert (verified.tenant, verified.tenant_verified) == (appid, True)
        assert rejected(platform, delivery(appid, text(A_GH)), NOW).reason == "authorizer_mismatch"


def test_official_account_and_mini_program_messages() -> None:
    platform = messages(decrypt_for_backend=True)
    mp = accepted(platform, delivery(RELEASE_MP, text(RELEASE_TEST_ACCOUNTS[RELEASE_MP])), NOW)
    assert mp.message["MsgType"] == "text"
    media = op.mini_program_event(
        RELEASE_TEST_ACCOUNTS[RELEASE_MINI],
        "o_user",
        "wxa_media_check",
        NOW,
        {"trace_id": "t1", "result": "x"},
    )
    mini = accepted(platform, delivery(RELEASE_MINI, media), NOW)
    assert mini.backend_body == media and mini.drop_query == ("encrypt_type", "msg_signature")
    # Same sender, second and event but another trace_id: a distinct event, a distinct key.
    other = media.replace(b"t1", b"t2")
    other_key = platform.dedup_key(accepted(platform, delivery(RELEASE_MINI, other, "n2"), NOW))
    assert platform.dedup_key(mini) != other_key
    assert platform.dedup_key(mp) == f"{RELEASE_TEST_ACCOUNTS[RELEASE_MP]}|msg|42"
    retry = accepted(platform, delivery(RELEASE_MINI, media, "n3"), NOW)
    assert platform.dedup_key(retry) == platform.dedup_key(mini)


def test_openid_must_name_the_sender() -> None:
    out = op.message_delivery(MSG_PATH, A_APPID, TOKEN, KEY, COMPONENT, text(A_GH), str(NOW), "n1")
    forged = out._replace(target=out.target.replace("openid=o_user", "openid=oVICTIM"))
    assert rejected(messages(), routed(forged), NOW).reason == "openid_mismatch"


def test_an_edited_envelope_reaches_the_backend_rebuilt_from_the_ciphertext() -> None:
    out = op.message_delivery(MSG_PATH, A_APPID, TOKEN, KEY, COMPONENT, text(A_GH), str(NOW), "n1")
    fields = xmlmsg.parse(out.body)
    edited = out._replace(
        body=xmlmsg.build({"ToUserName": B_GH, "Content": "forged", "Encrypt": fields["Encrypt"]})
    )
    verified = accepted(messages(), routed(edited), NOW)
    assert verified.backend_body == xmlmsg.build({"ToUserName": A_GH, "Encrypt": fields["Encrypt"]})


# -- replies on the message URL --------------------------------------------------------------------------------


def passive_text(
    to: str = "o_user", frm: str = A_GH, content: str = "TESTCOMPONENT_MSG_TYPE_TEXT_callback"
) -> bytes:
    fields: dict[str, str | int] = {
        "ToUserName": to,
        "FromUserName": frm,
        "CreateTime": NOW,
        "MsgType": "text",
        "Content": content,
    }
    return xmlmsg.build(fields)


def test_a_plaintext_passive_reply_is_sealed_with_the_component_key_and_appid() -> None:
    platform = messages(random_bytes=counter_bytes())
    verified = accepted(platform, delivery(A_APPID, text(A_GH), "n7"), NOW)
    reply = platform.normalize(200, "text/xml", passive_text(), verified)
    sealed = platform.seal(reply, verified)
    assert sealed.kind == "passive" and sealed.body != passive_text()
    fields = xmlmsg.parse(sealed.body)
    assert (fields["TimeStamp"], fields["Nonce"]) == (str(NOW), "n7")
    assert op.decode_reply(sealed.body, TOKEN, KEY, COMPONENT) == passive_text()
    with pytest.raises(ValueError, match="wrong_app_id"):
        op.decode_reply(sealed.body, TOKEN, KEY, A_APPID)


def test_a_backend_encrypted_passive_reply_passes_unchanged() -> None:
    platform = messages()
    verified = accepted(platform, delivery(A_APPID, text(A_GH)), NOW)
    key = wxcrypt.AesKey.decode("current", KEY).key
    own = wxcrypt.envelope(TOKEN, key, passive_text(), COMPONENT, "1715943330", "abc", b"r" * 16).to_xml()
    reply = platform.normalize(200, "application/xml", own, verified)
    assert reply.kind == "passive" and reply.normalized is None
    assert platform.seal(reply, verified).body == own


@pytest.mark.parametrize(
    ("status", "body", "out", "normalized"),
    [
        (200, b"success", b"success", None),
        (200, b"", b"", None),
        (200, b'{"errcode":0}', b"success", "json"),
        (200, b"<html>oops</html>", b"success", "html"),
        (201, b"", b"success", "status_201"),
    ],
)
def test_message_replies_follow_the_official_account_contract(
    status: int, body: bytes, out: bytes, normalized: str | None
) -> None:
    platform = messages()
    verified = accepted(platform, delivery(A_APPID, text(A_GH)), NOW)
    reply = platform.seal(platform.normalize(status, "text/plain", body, verified), verified)
    assert (reply.status, reply.body, reply.normalized) == (200, out, normalized)


# -- refusals --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", HOSTILE)
def test_hostile_bodies_are_refused_400(body: bytes) -> None:
    for platform, req in ((authorization(), ticket()), (messages(), delivery(A_APPID, text(A_GH)))):
        e = rejected(platform, dataclasses.replace(req, body=body), NOW)
        assert e.status == 400, e.reason


def test_hostile_plaintext_inside_a_valid_envelope_is_refused_400() -> None:
    out = sealed_push(LAUGHS, {"ToUserName": A_GH}, appid=A_APPID)
    e = rejected(messages(), out, NOW)
    assert (e.reason, e.status) == ("xml_dtd_forbidden", 400)


def test_plaintext_and_unsigned_pushes_are_refused() -> None:
    req = ticket()
    plain = dataclasses.replace(req, query={k: x for k, x in req.query.items() if k != "encrypt_type"})
    assert rejected(authorization(), plain, NOW).reason == "plaintext_not_allowed"
    odd = dataclasses.replace(req, query={**req.query, "encrypt_type": "des"})
    assert rejected(authorization(), odd, NOW).reason == "bad_encrypt_type"
    for missing in ("msg_signature", "timestamp", "nonce"):
        cut = dataclasses.replace(req, query={k: x for k, x in req.query.items() if k != missing})
        assert rejected(authorization(), cut, NOW).reason == "missing_param"
    # `signature` is optional, but checked when present.
    unsigned = dataclasses.replace(req, query={k: x for k, x in req.query.items() if k != "signature"})
    assert accepted(authorization(), unsigned, NOW)
    assert rejected(authorization(), req, NOW + 301).reason == "stale_timestamp"
    assert (
        rejected(authorization(), dataclasses.replace(req, method="PUT"), NOW).reason == "method_not_allowed"
    )
    empty = dataclasses.replace(req, body=xmlmsg.build({"AppId": COMPONENT}))
    assert rejected(authorization(), empty, NOW).reason == "missing_encrypt"


def test_url_verification_is_answered_like_an_official_account() -> None:
    query = {
        "signature": signature(TOKEN, str(NOW), "n"),
        "timestamp": str(NOW),
        "nonce": "n",
        "echostr": "42",
    }
    get = Inbound("GET", "/open/auth", query, {}, b"")
    for platform, req in (
        (authorization(), get),
        (messages(), dataclasses.replace(get, path_params={"appid": A_APPID})),
    ):
        reply = accepted(platform, req, NOW).direct_reply
        assert reply is not None and reply.body == b"42"
        forged = dataclasses.replace(req, query={**query, "signature": "0" * 40})
        assert rejected(platform, forged, NOW).reason == "bad_signature"


def test_rotation_reports_previous() -> None:
    rotated = WechatOpenPlatform(
        COMPONENT,
        [("current", "new"), ("previous", TOKEN)],
        [("current", "B" * 43), ("previous", KEY)],
        kind="authorization",
    )
    assert accepted(rotated, ticket(), NOW).key_id == "previous"
    assert accepted(authorization(), ticket(), NOW).key_id == "current"


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="component_app_id"):
        WechatOpenPlatform("gh_1", [("current", TOKEN)], [("current", KEY)], kind="messages")
    with pytest.raises(ValueError, match="token"):
        WechatOpenPlatform(COMPONENT, [], [("current", KEY)], kind="messages")
    with pytest.raises(ValueError, match="kind"):
        WechatOpenPlatform(COMPONENT, [("current", TOKEN)], [("current", KEY)], kind="both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="messages"):
        authorization(authorizers={A_APPID: A_GH})
    with pytest.raises(ValueError, match="not an appid"):
        messages(authorizers={"gh_x": A_GH})
    with pytest.raises(ValueError, match="gh_"):
        messages(authorizers={A_APPID: "wx"})
    with pytest.raises(ValueError, match="test account"):
        messages(authorizers={RELEASE_MP: A_GH})
    assert messages(authorizers={RELEASE_MP: RELEASE_TEST_ACCOUNTS[RELEASE_MP]})


# -- round trips and fuzzing -----------------------------------------------------------------------------------

# Text XML can carry (no control characters, surrogates or non-characters).
WORDS = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Cn")), max_size=60)


@settings(max_examples=100, deadline=None)
@given(
    value=WORDS,
    create_time=st.integers(0, 2**31),
    info_type=st.sampled_from(
        ["component_verify_ticket", "authorized", "unauthorized", "notify_3rd_wxa_auth"]
    ),
    for_backend=st.booleans(),
)
def test_authorization_round_trip(value: str, create_time: int, info_type: str, for_backend: bool) -> None:
    platform = authorization(decrypt_for_backend=for_backend)
    fields: dict[str, str | int] = {"AuthorizerAppid": A_APPID, "AuthorizationCode": value, "Note": value}
    req = auth_event(info_type, fields, "n", create_time)
    verified = accepted(platform, req, NOW)
    assert verified.message["Note"] == value
    assert verified.message["CreateTime"] == str(create_time)
    assert verified.backend_body == (verified.authenticated if for_backend else None)
    again = accepted(platform, auth_event(info_type, fields, "n2", create_time), NOW)
    assert platform.dedup_key(again) == platform.dedup_key(verified)


@settings(max_examples=100, deadline=None)
@given(
    content=WORDS,
    msg_id=st.integers(1, 2**63 - 1),
    openid=st.from_regex(r"o[A-Za-z0-9_-]{27}", fullmatch=True),
    appid=st.sampled_from([A_APPID, RELEASE_MP, RELEASE_MINI]),
    reply=WORDS,
)
def test_message_round_trip(content: str, msg_id: int, openid: str, appid: str, reply: str) -> None:
    platform = messages(authorizers={A_APPID: A_GH})
    gh = {A_APPID: A_GH}.get(appid) or RELEASE_TEST_ACCOUNTS[appid]
    verified = accepted(platform, delivery(appid, text(gh, content, msg_id, openid)), NOW)
    assert verified.message["Content"] == content
    assert (verified.tenant, verified.tenant_verified) == (appid, True)
    assert platform.dedup_key(verified) == f"{gh}|msg|{msg_id}"
    answer = passive_text(openid, gh, reply)
    sealed = platform.seal(platform.normalize(200, "text/xml", answer, verified), verified)
    assert op.decode_reply(sealed.body, TOKEN, KEY, COMPONENT) == answer


@settings(max_examples=200, deadline=None)
@given(req=requests, appid=st.sampled_from([A_APPID, "x", RELEASE_MP]), now=st.integers(0, 2**33))
def test_verify_raises_only_rejected(req: Inbound, appid: str, now: int) -> None:
    routed_req = dataclasses.replace(req, path_params={"appid": appid})
    for platform in (authorization(), messages(), messages(authorizers={A_APPID: A_GH})):
        verify_or_reject(platform, routed_req, now)


B64 = st.text(
    st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=% <&"), max_size=400
)


@settings(max_examples=200, deadline=None)
@given(encrypted=B64, appid_field=st.booleans())
def test_correctly_signed_garbage_raises_only_rejected(encrypted: str, appid_field: bool) -> None:
    """Past the signature (the sender holds the token) nothing but Rejected may come out of decryption."""
    query = {
        "timestamp": str(NOW),
        "nonce": "n",
        "encrypt_type": "aes",
        "msg_signature": signature(TOKEN, str(NOW), "n", encrypted),
    }
    outer = {"AppId": COMPONENT} if appid_field else {"ToUserName": A_GH}
    body = xmlmsg.build({**outer, "Encrypt": encrypted})
    req = Inbound("POST", "/cb", query, {}, body, {"appid": A_APPID})
    for platform in (authorization(), messages()):
        verify_or_reject(platform, req, NOW)
