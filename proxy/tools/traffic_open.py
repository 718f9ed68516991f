"""Open Platform third-party platform traffic: the pushes WeChat sends to a platform's two URLs, and its replies.

PROTOCOLS-MINI-OPEN.md §A2. Every push is safe mode: ``signature``, ``timestamp``, ``nonce``,
``encrypt_type=aes`` and ``msg_signature`` in the query, and the §1.3 envelope made with the platform's token and
EncodingAESKey around the event, with the component appid as receiveid. The authorization URL gets
``<xml><AppId/><Encrypt/></xml>``; the message URL gets ``<xml><ToUserName/><Encrypt/></xml>`` at the console path
with ``$APPID$`` (or a route template's ``{appid}``) replaced by the authorizer's appid, and ``openid`` set to the
sender as WeChat does. :func:`decode_reply` opens what the platform answered. Pure given its inputs (randomness
through ``random_bytes``); the pushes are :func:`proxy.tools.traffic.mp_message`'s safe mode with the component appid.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from proxy.protocols import wxcrypt, xmlmsg
from proxy.protocols.base import Rejected
from proxy.tools import traffic
from proxy.tools.traffic import Outbound, RandomBytes

Fields = Mapping[str, str | int]


def fill_appid(path: str, appid: str) -> str:
    """The console URL's ``$APPID$`` (or a route template's ``{appid}``) replaced by ``appid``."""
    return path.replace("$APPID$", appid).replace("{appid}", appid)


def _with_app_id(out: Outbound, component_app_id: str) -> Outbound:
    """An Official Account style safe-mode push with the authorization URL's body: ``AppId`` for ``ToUserName``."""
    encrypted = xmlmsg.parse(out.body)["Encrypt"]
    return out._replace(body=xmlmsg.build({"AppId": component_app_id, "Encrypt": encrypted}))


# -- 授权事件接收URL ----------------------------------------------------------------------------------------------


def authorization_event(
    path: str,
    token: str,
    encoding_aes_key: str,
    component_app_id: str,
    info_type: str,
    fields: Fields,
    create_time: int,
    timestamp: str,
    nonce: str,
    random_bytes: RandomBytes = os.urandom,
) -> Outbound:
    """An event of ``info_type`` with ``fields`` (``AppId`` and ``CreateTime`` added first, as WeChat writes them)."""
    event: dict[str, str | int] = {
        "AppId": component_app_id,
        "CreateTime": create_time,
        "InfoType": info_type,
    }
    event.update(fields)
    out = traffic.mp_message(
        path,
        token,
        xmlmsg.build(event),
        timestamp,
        nonce,
        encoding_aes_key=encoding_aes_key,
        app_id=component_app_id,
        random_bytes=random_bytes,
    )
    return _with_app_id(out, component_app_id)


def ticket_push(
    path: str,
    token: str,
    encoding_aes_key: str,
    component_app_id: str,
    ticket: str,
    create_time: int,
    timestamp: str,
    nonce: str,
    random_bytes: RandomBytes = os.urandom,
) -> Outbound:
    """The ``component_verify_ticket`` push WeChat sends every 10 minutes."""
    fields: dict[str, str | int] = {"ComponentVerifyTicket": ticket}
    return authorization_event(
        path,
        token,
        encoding_aes_key,
        component_app_id,
        "component_verify_ticket",
        fields,
        create_time,
        timestamp,
        nonce,
        random_bytes,
    )


def authorized_event(
    path: str,
    token: str,
    encoding_aes_key: str,
    component_app_id: str,
    authorizer_appid: str,
    authorization_code: str,
    create_time: int,
    timestamp: str,
    nonce: str,
    *,
    info_type: str = "authorized",
    random_bytes: RandomBytes = os.urandom,
) -> Outbound:
    """An ``authorized`` (or ``updateauthorized``) notice: an account granted the platform access."""
    fields: dict[str, str | int] = {
        "AuthorizerAppid": authorizer_appid,
        "AuthorizationCode": authorization_code,
        "AuthorizationCodeExpiredTime": create_time + 3600,
        "PreAuthCode": "preauthcode@@@" + authorization_code[-8:],
    }
    return authorization_event(
        path,
        token,
        encoding_aes_key,
        component_app_id,
        info_type,
        fields,
        create_time,
        timestamp,
        nonce,
        random_bytes,
    )


# -- 消息与事件接收URL ($APPID$) ------------------------------------------------------------------------------------


def mp_text(original_id: str, openid: str, content: str, msg_id: int, create_time: int) -> bytes:
    """A text message a user sent an authorizing official account (or a mini program's customer service)."""
    fields: dict[str, str | int] = {
        "ToUserName": original_id,
        "FromUserName": openid,
        "CreateTime": create_time,
        "MsgType": "text",
        "Content": content,
        "MsgId": msg_id,
    }
    return xmlmsg.build(fields)


def mini_program_event(
    original_id: str, openid: str, event: str, create_time: int, extra: Fields | None = None
) -> bytes:
    """A mini-program-style event (``debug_demo`` of V-C1, ``wxa_media_check`` with its ``trace_id``, …)."""
    fields: dict[str, str | int] = {
        "ToUserName": original_id,
        "FromUserName": openid,
        "CreateTime": create_time,
        "MsgType": "event",
        "Event": event,
    }
    fields.update(extra or {})
    return xmlmsg.build(fields)


def message_delivery(
    path: str,
    appid: str,
    token: str,
    encoding_aes_key: str,
    component_app_id: str,
    message: bytes,
    timestamp: str,
    nonce: str,
    random_bytes: RandomBytes = os.urandom,
) -> Outbound:
    """``message`` (XML) for authorizer ``appid`` delivered to the message URL ``path`` (with ``$APPID$``)."""
    return traffic.mp_message(
        fill_appid(path, appid),
        token,
        message,
        timestamp,
        nonce,
        openid=xmlmsg.parse(message).get("FromUserName"),
        encoding_aes_key=encoding_aes_key,
        app_id=component_app_id,
        random_bytes=random_bytes,
    )


def decode_reply(body: bytes, token: str, encoding_aes_key: str, component_app_id: str) -> bytes:
    """The plaintext of a platform's answer: ``success`` or an empty body as they are, an encrypted passive reply
    opened after checking its ``MsgSignature`` and that it was sealed for ``component_app_id``. ValueError if not."""
    if body.strip() in (b"", b"success"):
        return body
    try:
        env = xmlmsg.parse(body)
        given = env.get("MsgSignature", "")
        parts = (env.get("TimeStamp", ""), env.get("Nonce", ""), env.get("Encrypt", ""))
        wxcrypt.match_token([("current", token)], given, parts, "bad_msg_signature")
        keys = [wxcrypt.AesKey.decode("current", encoding_aes_key)]
        return wxcrypt.decrypt(keys, parts[2], (component_app_id,), "wrong_app_id").message
    except Rejected as e:
        raise ValueError(f"not an encrypted reply for {component_app_id}: {e.reason}") from None
