"""``wxgate send``: a sender simulator for smoke tests and demos, for every protocol wxgate verifies.

It signs (and encrypts) requests the way each sender does, from the route's own configuration, and delivers
them the way WeChat does: each attempt waits at most ``timeout`` (5 s) and a notification that got no valid
answer is re-sent ``retries`` (3) more times with the same message id but a fresh signature. Every attempt is
printed with its status, latency and body. The wire formats come from :mod:`proxy.tools.traffic`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.config import (
    HmacRoute,
    RouteBase,
    StandardWebhooksRoute,
    WechatMiniProgramRoute,
    WechatMpRoute,
    WechatOpenPlatformRoute,
    WechatPayV2Route,
    WechatPayV3Route,
    WecomRoute,
)
from proxy.protocols import build_protocol, xmlmsg
from proxy.protocols.wechat_open import RELEASE_TEST_ACCOUNTS, WechatOpenPlatform, is_appid
from proxy.protocols.wechat_pay_v2 import return_code
from proxy.tools import sender_replies, traffic, traffic_miniprogram, traffic_open

# An Open Platform delivery's authorizer unless --appid says otherwise: a 全网发布 test account (group 1), which
# every messages route accepts.
RELEASE_TEST_APPID = next(iter(RELEASE_TEST_ACCOUNTS))


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path_query: str  # path plus query string
    headers: dict[str, str]
    body: bytes

    @classmethod
    def of(cls, out: traffic.Outbound) -> Request:
        return cls(out.method, out.target, dict(out.headers), out.body)


@dataclass(frozen=True, slots=True)
class Attempt:
    number: int
    status: int  # 0 when no answer arrived
    seconds: float
    body: bytes
    error: str = ""


@dataclass(frozen=True, slots=True)
class SendOptions:
    kind: str = "message"  # message | event | verify | refund | ticket
    content: str = "hello from wxgate send"
    user: str = "oDemoUser"
    event: str = "subscribe"
    event_key: str = ""
    message_id: str = field(default_factory=lambda: str(secrets.randbelow(10**18)))
    tamper: bool = False
    probe: bool = False
    signing_key: Path | None = (
        None  # Pay v3: the PEM private key whose certificate/public key the route trusts
    )
    serial: str | None = None  # Pay v3: Wechatpay-Serial to send (default: the route's first key)
    mode: traffic_miniprogram.Mode | None = None  # MP / Mini Program: default safe with a key, else plaintext
    appid: str = RELEASE_TEST_APPID  # Open Platform messages: the authorizer in the path ($APPID$)
    # CreateTime of the message: fixed per send, so every retry carries the same message, as WeChat's do
    created: int = field(default_factory=lambda: int(time.time()))


def _nonce() -> str:
    return secrets.token_hex(8)


def _now() -> str:
    return str(int(time.time()))


# -- Official Account: helpers the tests and demos use directly ---------------------------------------------------


def mp_text(to: str, sender: str, content: str, msg_id: int, now: int | None = None) -> dict[str, str | int]:
    ts = int(time.time()) if now is None else now
    return {
        "ToUserName": to,
        "FromUserName": sender,
        "CreateTime": ts,
        "MsgType": "text",
        "Content": content,
        "MsgId": msg_id,
    }


def mp_event(to: str, sender: str, event: str, key: str = "", now: int | None = None) -> dict[str, str | int]:
    ts = int(time.time()) if now is None else now
    return {
        "ToUserName": to,
        "FromUserName": sender,
        "CreateTime": ts,
        "MsgType": "event",
        "Event": event,
        "EventKey": key,
    }


def mp_message(
    path: str,
    token: str,
    fields: dict[str, str | int],
    now: int | None = None,
    nonce: str | None = None,
    openid: str | None = None,
) -> Request:
    """A plaintext-mode POST of ``fields`` as WeChat XML, signed now (or at ``now``); the query's ``openid`` is
    the message's ``FromUserName`` unless given, as WeChat sends it."""
    ts = str(int(time.time()) if now is None else now)
    if openid is None:
        openid = str(fields.get("FromUserName", "oUser"))
    out = traffic.mp_message(path, token, xmlmsg.build(fields), ts, nonce or _nonce(), openid=openid)
    return Request.of(out)


def mp_verify_url(path: str, token: str, now: int | None = None, echostr: str | None = None) -> Request:
    """The GET WeChat sends when the server URL is saved."""
    ts = str(int(time.time()) if now is None else now)
    echo = echostr or str(secrets.randbelow(10**19))
    return Request.of(traffic.mp_url_check(path, token, echo, ts, _nonce()))


# -- every protocol, from a configured route -------------------------------------------------------------------


def build(route: RouteBase, opts: SendOptions) -> Request:
    """One signed request for ``route`` (fresh timestamp and nonce; same message id every call)."""
    out = _build(route, opts)
    if not opts.tamper:
        return Request.of(out)
    # An Official Account's (or Mini Program's) plaintext-mode signature covers token, timestamp and nonce, not
    # the body; its safe and compatible modes add msg_signature, which does.
    plaintext = (
        isinstance(route, WechatMpRoute | WechatMiniProgramRoute) and "msg_signature=" not in out.target
    )
    return Request.of(traffic.tamper(out, body_signed=not plaintext))


def _wechat_xml(opts: SendOptions, to: str) -> bytes:
    if opts.kind == "event":
        return xmlmsg.build(mp_event(to, opts.user, opts.event, opts.event_key, opts.created))
    return xmlmsg.build(mp_text(to, opts.user, opts.content, int(opts.message_id), opts.created))


def _build(route: RouteBase, opts: SendOptions) -> traffic.Outbound:
    builder = _SENDERS.get(type(route))
    if builder is None:
        raise ValueError(f"no sender for route {route.name!r}")
    if opts.kind == "ticket" and not (
        isinstance(route, WechatOpenPlatformRoute) and route.kind == "authorization"
    ):
        raise ValueError("ticket: only an Open Platform authorization route receives component_verify_ticket")
    if opts.kind == "verify" and isinstance(route, WechatMpRoute | WechatMiniProgramRoute):
        # the Official Account's URL verification, a Mini Program's too (§A1.2)
        return traffic.mp_url_check(route.path, route.token.reveal(), _echostr(), _now(), _nonce())
    return builder(route, opts)


def _echostr() -> str:
    return str(secrets.randbelow(10**19))


def _mode(route: WechatMpRoute | WechatMiniProgramRoute, opts: SendOptions) -> traffic_miniprogram.Mode:
    """The encryption mode to push in: ``--mode``, else safe when the route has a key, else plaintext."""
    mode = opts.mode or ("safe" if route.encoding_aes_key else "plaintext")
    if mode != "plaintext" and route.encoding_aes_key is None:
        raise ValueError(f"--mode {mode} encrypts: the route needs encoding_aes_key and app_id")
    return mode


def _wechat_mp(route: WechatMpRoute, opts: SendOptions) -> traffic.Outbound:
    mode = _mode(route, opts)
    aes = route.encoding_aes_key.reveal() if route.encoding_aes_key and mode != "plaintext" else None
    return traffic.mp_message(
        route.path,
        route.token.reveal(),
        _wechat_xml(opts, "gh_demo"),
        _now(),
        _nonce(),
        openid=opts.user,
        encoding_aes_key=aes,
        app_id=route.app_id or "",
        compatible=mode == "compatible",
    )


def _mini_program_message(opts: SendOptions, channels: bool) -> dict[str, Any]:
    """A customer-service text message (``MsgId`` a 64-bit number), an ``--event``, or a shop's order event."""
    doc: dict[str, Any] = {"ToUserName": "gh_demo", "FromUserName": opts.user, "CreateTime": opts.created}
    if opts.kind == "event":
        doc.update(MsgType="event", Event=opts.event)
    elif channels:  # a shop receives events only: a paid order
        order = {"order_id": int(opts.message_id), "pay_time": opts.created}
        doc.update(MsgType="event", Event="channels_ec_order_pay", order_info=order)
    else:
        doc.update(MsgType="text", Content=opts.content, MsgId=int(opts.message_id))
    return doc


def _wechat_miniprogram(route: WechatMiniProgramRoute, opts: SendOptions) -> traffic.Outbound:
    mode = _mode(route, opts)
    doc = _mini_program_message(opts, route.channels)
    if route.format == "json":
        message = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    else:
        message = xmlmsg.build(doc)
    return traffic_miniprogram.push(
        route.path,
        route.token.reveal(),
        message,
        _now(),
        _nonce(),
        fmt=route.format,
        mode=mode,
        encoding_aes_key=route.encoding_aes_key.reveal() if route.encoding_aes_key else None,
        app_id=route.app_id or "",
        openid=None if mode == "plaintext" else opts.user,  # the doc's plaintext push has none
    )


def _original_id(route: WechatOpenPlatformRoute, appid: str) -> str:
    """The authorizer's original id (``ToUserName``) as the route binds it (``authorizers``, its file, the 全网发布
    test accounts), else one made up from the appid (a route without ``authorizers`` takes any)."""
    protocol = build_protocol(route)
    bound = protocol.authorizers if isinstance(protocol, WechatOpenPlatform) else {}
    return bound.get(appid, "gh_" + appid[2:14])


def _wechat_open_platform(route: WechatOpenPlatformRoute, opts: SendOptions) -> traffic.Outbound:
    """Authorization URL: a ticket push (``event``: an ``authorized`` notice for ``--appid``). Message URL: a
    message or event for ``--appid`` at the path with its ``{appid}`` filled in."""
    token, key, component = route.token.reveal(), route.encoding_aes_key.reveal(), route.component_app_id
    if not is_appid(opts.appid):
        raise ValueError(f"--appid {opts.appid!r} is not an appid (wx and 16 lower-case hex digits)")
    path = route.path if route.kind == "authorization" else traffic_open.fill_appid(route.path, opts.appid)
    if opts.kind == "verify":
        return traffic.mp_url_check(path, token, _echostr(), _now(), _nonce())
    common = (token, key, component)
    if route.kind == "authorization" and opts.kind == "event":
        info_type = opts.event if opts.event in ("updateauthorized", "unauthorized") else "authorized"
        code = f"queryauthcode@@@{opts.message_id}"
        return traffic_open.authorized_event(
            path, *common, opts.appid, code, opts.created, _now(), _nonce(), info_type=info_type
        )
    if route.kind == "authorization":
        ticket = f"ticket@@@{opts.message_id}"
        return traffic_open.ticket_push(path, *common, ticket, opts.created, _now(), _nonce())
    message = _wechat_xml(opts, _original_id(route, opts.appid))
    return traffic_open.message_delivery(route.path, opts.appid, *common, message, _now(), _nonce())


def _wecom(route: WecomRoute, opts: SendOptions) -> traffic.Outbound:
    token, aes = route.token.reveal(), route.encoding_aes_key.reveal()
    if opts.kind == "verify":
        echo = str(secrets.randbelow(10**19))
        return traffic.wecom_url_check(route.path, token, aes, route.receive_id, echo, _now(), _nonce())
    return traffic.wecom_message(
        route.path,
        token,
        aes,
        route.receive_id,
        _wechat_xml(opts, route.receive_id),
        _now(),
        _nonce(),
        agent_id="1000002",
    )


def _wechat_pay_v2(route: WechatPayV2Route, opts: SendOptions) -> traffic.Outbound:
    return _pay_v2(
        route.path, route.api_key.reveal(), route.mch_id, route.app_id or "wxd930ea5d5a258f4f", opts
    )


def _hmac(route: HmacRoute, opts: SendOptions) -> traffic.Outbound:
    params = {"event": opts.event, "id": opts.message_id, "content": opts.content}
    return traffic.hmac_request(
        route.path,
        route.secret.reveal(),
        params,
        _now(),
        _nonce(),
        sign_param=route.sign_param,
        sign_header=route.sign_header,
        timestamp_param=route.timestamp_param,
        nonce_param=route.nonce_param,
    )


def _standard_webhooks(route: StandardWebhooksRoute, opts: SendOptions) -> traffic.Outbound:
    body = json.dumps({"type": opts.event, "data": {"id": opts.message_id, "content": opts.content}}).encode()
    return traffic.standard_webhook(route.path, route.secret.reveal(), f"msg_{opts.message_id}", _now(), body)


def _pay_v2(path: str, api_key: str, mch_id: str, app_id: str, opts: SendOptions) -> traffic.Outbound:
    if opts.kind == "refund":
        refund = {
            "refund_id": f"5030{opts.message_id}",
            "out_refund_no": f"R{opts.message_id}",
            "refund_status": "SUCCESS",
            "refund_fee": "1",
            "total_fee": "1",
            "transaction_id": f"4200{opts.message_id}",
            "out_trade_no": f"T{opts.message_id}",
        }
        return traffic.pay_v2_refund_notify(path, api_key, app_id, mch_id, refund, _nonce())
    fields = {
        "return_code": "SUCCESS",
        "appid": app_id,
        "mch_id": mch_id,
        "nonce_str": _nonce(),
        "result_code": "SUCCESS",
        "openid": opts.user,
        "trade_type": "JSAPI",
        "bank_type": "OTHERS",
        "total_fee": "1",
        "cash_fee": "1",
        "transaction_id": f"4200{opts.message_id}",
        "out_trade_no": f"T{opts.message_id}",
        "time_end": time.strftime("%Y%m%d%H%M%S"),
    }
    return traffic.pay_v2_notify(path, api_key, fields, sign_type="HMAC-SHA256")


def _pay_v3(route: WechatPayV3Route, opts: SendOptions) -> traffic.Outbound:
    if opts.signing_key is None:
        raise ValueError(
            "Pay v3 notices are signed with WeChat Pay's private key: pass --signing-key PEM (a test key whose "
            "certificate or public key this route lists) to simulate them"
        )
    key = serialization.load_pem_private_key(opts.signing_key.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{opts.signing_key} is not an RSA private key")
    serial = opts.serial or (route.public_keys[0].id if route.public_keys else "")
    if not serial:
        raise ValueError("pass --serial (the certificate serial this key belongs to)")
    plaintext = {
        "mchid": route.mch_id,
        "appid": route.app_id or "wxd930ea5d5a258f4f",
        "out_trade_no": f"T{opts.message_id}",
        "transaction_id": f"4200{opts.message_id}",
        "trade_state": "SUCCESS",
        "amount": {"total": 1, "currency": "CNY"},
    }
    return traffic.pay_v3_notify(
        route.path,
        key,
        serial,
        route.apiv3_key.reveal(),
        plaintext,
        _now(),
        _nonce(),
        notification_id=f"EV-{opts.message_id}",
        probe=opts.probe,
    )


_SENDERS: dict[type[RouteBase], Callable[[Any, SendOptions], traffic.Outbound]] = {
    WechatMpRoute: _wechat_mp,
    WecomRoute: _wecom,
    WechatPayV2Route: _wechat_pay_v2,
    WechatPayV3Route: _pay_v3,
    HmacRoute: _hmac,
    StandardWebhooksRoute: _standard_webhooks,
    WechatMiniProgramRoute: _wechat_miniprogram,
    WechatOpenPlatformRoute: _wechat_open_platform,
}


def accepted(status: int, body: bytes) -> bool:
    """What ends WeChat's retries: a 200 (MP/WeCom), a 2xx (Pay v3, webhooks), SUCCESS XML (Pay v2)."""
    if not 200 <= status < 300:
        return False
    code = return_code(body)
    return code is None or code == "SUCCESS"


def accepts(route: RouteBase, opts: SendOptions) -> Callable[[int, bytes], bool]:
    """What ends the retries of ``route``'s sender: its own rule (:mod:`.sender_replies`), else :func:`accepted`
    (always for URL verification, answered with the echo)."""

    def check(status: int, body: bytes) -> bool:
        verdict = None if opts.kind == "verify" else sender_replies.accepted(route, status, body)
        return accepted(status, body) if verdict is None else verdict

    return check


async def deliver(
    base_url: str,
    build_request: Callable[[], Request],
    retries: int = 3,
    timeout: float = 5.0,
    gap: float = 0.0,
    is_accepted: Callable[[int, bytes], bool] = accepted,
    on_attempt: Callable[[Attempt], None] | None = None,
) -> list[Attempt]:
    """Deliver like WeChat: up to ``1 + retries`` attempts, each bounded by ``timeout``.

    ``build_request`` is called per attempt, so a retry gets a fresh timestamp, nonce and signature while the
    message itself (its id) stays the same.
    """
    attempts: list[Attempt] = []
    async with aiohttp.ClientSession() as session:
        for n in range(1, retries + 2):
            req = build_request()
            started = time.perf_counter()
            try:
                async with asyncio.timeout(timeout):
                    async with session.request(
                        req.method, base_url + req.path_query, headers=req.headers, data=req.body
                    ) as resp:
                        body = await resp.read()
                a = Attempt(n, resp.status, time.perf_counter() - started, body)
            except TimeoutError:
                a = Attempt(n, 0, time.perf_counter() - started, b"", "no answer within timeout")
            except aiohttp.ClientError as e:
                a = Attempt(n, 0, time.perf_counter() - started, b"", type(e).__name__)
            attempts.append(a)
            if on_attempt is not None:
                on_attempt(a)
            if a.status and is_accepted(a.status, a.body):
                break
            await asyncio.sleep(gap)
    return attempts


def open_reply(route: RouteBase, opts: SendOptions, body: bytes) -> str | None:
    """What an encrypted reply says, for the attempt's line (``None`` when the reply was not encrypted, the route
    has no reader or the request was URL verification); a reply that does not open says why."""
    if opts.kind == "verify":
        return None
    try:
        plain = sender_replies.read(route, body)
    except ValueError as e:
        return f"reply does not open: {e}"
    if plain is None or plain == body:
        return None
    return "decrypted: " + plain.decode("utf-8", "replace")
