"""Ways in, found by attacking the request path, each proved through the running proxy in front of the demo backend:
a reply contract lost on redelivery, an unauthenticated envelope field forwarded as verified, replay protection
sidestepped by re-spelling a signature, and an ``openid`` a backend reads under another spelling."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.protocols import xmlmsg
from proxy.tools import traffic_miniprogram as mini
from proxy.tools import traffic_open
from proxy.tools.traffic import Outbound, mp_message
from tests.support.procs import Backend, Sidecar, http, send_outbound, wait_until

pytestmark = pytest.mark.integration

TOKEN, KEY = "adversary-token", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APPID, GH, OPENID = "wxba5fad812f8e6fb9", "gh_97417a04a28d", "o9AgO5Kd5ggOC-bXrbNODIiE3bGY"
MINI: dict[str, Any] = {
    "protocol": "wechat-miniprogram",
    "token": "${TOKEN}",
    "app_id": APPID,
    "encoding_aes_key": "${KEY}",
    "format": "json",
}
MP: dict[str, Any] = {"protocol": "wechat-mp", "token": "${TOKEN}"}
COMPONENT = "wx134c8103faa5a59e"
OPEN: dict[str, Any] = {
    "protocol": "wechat-open-platform",
    "component_app_id": COMPONENT,
    "token": "${TOKEN}",
    "encoding_aes_key": "${KEY}",
}
XPAY_ACK = b'{"ErrCode":0,"ErrMsg":"success"}'


@pytest.fixture(scope="module")
def sidecar(tmp_module: Path, backend: Backend) -> Iterator[Sidecar]:
    routes = [
        {
            **MINI,
            "name": "mini",
            "path": "/mini",
            "on_backend_failure": "ack",
            "outbox": {"backoff_base": "0.1s", "backoff_max": "0.3s"},
        },
        {**MP, "name": "mp-safe", "path": "/mp/safe", "app_id": APPID, "encoding_aes_key": "${KEY}"},
        {**MP, "name": "mp-nodedup", "path": "/mp/nodedup", "dedup": {"enabled": False}},
        {**MP, "name": "mp-plain", "path": "/mp/plain"},
        {**OPEN, "name": "open-auth", "path": "/open/auth", "kind": "authorization"},
        {**OPEN, "name": "open-msgs", "path": "/open/{appid}/callback", "kind": "messages"},
    ]
    s = Sidecar(tmp_module, {"upstream": backend.url, "routes": routes}, env={"TOKEN": TOKEN, "KEY": KEY})
    s.start()
    yield s
    s.stop()


def send(s: Sidecar, out: Outbound) -> tuple[int, bytes]:
    return send_outbound(s.url, out)


def nonce() -> str:
    return f"n{time.perf_counter_ns()}"


def mini_push(fields: dict[str, Any], mode: mini.Mode = "safe") -> Outbound:
    doc = json.dumps(fields).encode()
    return mini.push(
        "/mini",
        TOKEN,
        doc,
        str(int(time.time())),
        nonce(),
        mode=mode,
        encoding_aes_key=KEY,
        app_id=APPID,
        openid=OPENID,
    )


def text(content: str, **extra: Any) -> dict[str, Any]:
    return {
        "ToUserName": GH,
        "FromUserName": OPENID,
        "CreateTime": int(time.time()),
        "MsgType": "text",
        "Content": content,
        "MsgId": time.perf_counter_ns(),
        **extra,
    }


# -- an acknowledged virtual-payment notification keeps its reply contract through the outbox ---------------------


def test_xpay_retry_after_an_outbox_redelivery_is_answered_errcode_0(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    """The backend fails the first delivery (acknowledged, queued), then takes the redelivery answering
    ``success``. WeChat's next xpay retry must get ``{"ErrCode":0,…}`` again, not the cached ``success``, which
    is no acknowledgement to the virtual-payment sender: it would keep retrying for 24 h."""
    fresh_backend.set_mode("fail")
    deliver = {
        "ToUserName": GH,
        "FromUserName": OPENID,
        "CreateTime": int(time.time()),
        "MsgType": "event",
        "Event": "xpay_goods_deliver_notify",
        "OpenId": OPENID,
        "OutTradeNo": f"order-{time.perf_counter_ns()}",
        "Env": 0,
    }
    out = mini_push(deliver)
    assert send(sidecar, out) == (200, XPAY_ACK)
    fresh_backend.set_mode("success")
    wait_until(lambda: any(r["mode"] == "success" for r in fresh_backend.requests()), 10, "redelivery")
    retry = mini_push(deliver)  # WeChat's retry, signed anew
    assert send(sidecar, retry) == (200, XPAY_ACK)
    assert [r["mode"] for r in fresh_backend.requests()] == ["fail", "success"]


# -- a safe-mode envelope's ToUserName is not authenticated ---------------------------------------------------


def test_mp_safe_mode_envelope_to_user_name_reaches_the_backend_only_as_authenticated(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    """``msg_signature`` covers ``Encrypt`` alone: a ``ToUserName`` edited in the envelope (a backend serving
    several accounts picks the account by it) must not reach the backend as verified."""
    xml = xmlmsg.build(
        {
            "ToUserName": GH,
            "FromUserName": OPENID,
            "CreateTime": int(time.time()),
            "MsgType": "text",
            "Content": "hi",
            "MsgId": time.perf_counter_ns(),
        }
    )
    out = mp_message(
        "/mp/safe", TOKEN, xml, str(int(time.time())), nonce(), encoding_aes_key=KEY, app_id=APPID
    )
    edited = out._replace(body=out.body.replace(GH.encode(), b"gh_000000000000", 1))
    status, _ = send(sidecar, edited)
    assert status == 200
    (got,) = fresh_backend.requests()
    assert xmlmsg.parse(got["body"].encode())["ToUserName"] == GH


# -- replay protection does not depend on how the signature is spelled ------------------------------------------


@pytest.mark.parametrize("spelling", ["%20", "%09", "%0B"])
def test_a_replay_with_the_signature_respelled_is_refused(
    sidecar: Sidecar, fresh_backend: Backend, spelling: str
) -> None:
    """Signatures are compared without surrounding white space, so the replay cache must key them the same way:
    else each spelling (``sig%20``, ``sig%20%20``, …) of one captured request reaches the backend again."""
    xml = xmlmsg.build({"ToUserName": GH, "FromUserName": OPENID, "CreateTime": 1, "MsgType": "text"})
    out = mp_message("/mp/nodedup", TOKEN, xml, str(int(time.time())), nonce())
    assert send(sidecar, out)[0] == 200
    path, _, query = out.target.partition("?")
    respelled = query.replace("&timestamp=", f"{spelling}&timestamp=", 1)
    assert send(sidecar, out._replace(target=f"{path}?{respelled}"))[0] == 403
    assert len(fresh_backend.requests()) == 1


def test_a_captured_signature_respelled_does_not_carry_a_forged_plaintext_body(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    """In plaintext mode ``signature`` covers no body: a captured request's signed values with another body are
    refused as a forgery. Re-spelling the signature (``%20``) must not make them new to the replay cache."""
    xml = xmlmsg.build(
        {"ToUserName": GH, "FromUserName": OPENID, "CreateTime": 1, "MsgType": "text", "MsgId": 1}
    )
    out = mp_message("/mp/plain", TOKEN, xml, str(int(time.time())), nonce())
    assert send(sidecar, out)[0] == 200
    path, _, query = out.target.partition("?")
    forged = xml.replace(b"<MsgId>1</MsgId>", b"<MsgId>2</MsgId>").replace(b"text", b"event")
    respelled = query.replace("&timestamp=", "%20&timestamp=", 1)
    assert send(sidecar, out._replace(target=f"{path}?{respelled}", body=forged))[0] == 403
    assert len(fresh_backend.requests()) == 1


# -- the openid a backend reads is the one wxgate checked --------------------------------------------------------


@pytest.mark.parametrize("extra", ["+openid=oOTHER", "%20openid=oOTHER", "OPENID=oOTHER"])
def test_an_openid_under_another_spelling_is_refused(
    sidecar: Sidecar, fresh_backend: Backend, extra: str
) -> None:
    """PHP reads ``+openid``/``%20openid`` as ``openid`` (leading blanks dropped; the last one wins), ASP.NET
    reads names case-insensitively: a safe-mode push for one user, with the other user's openid added under such
    a spelling, must not reach the backend."""
    out = mini_push(text("hi"))
    assert send(sidecar, out._replace(target=f"{out.target}&{extra}"))[0] in (400, 403)
    assert fresh_backend.requests() == []


# -- a push is accepted only at the platform URL it was sent to -----------------------------------------------------


def test_a_message_push_replayed_to_the_authorization_url_is_refused(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    """Both platform URLs share the component token and key, and the outer ``AppId`` is not signed: a message
    captured on the ``$APPID$`` URL, wrapped as the authorization URL's body, must not reach the authorization
    handler as a verified event."""
    message = traffic_open.mp_text(GH, OPENID, "hi", time.perf_counter_ns(), int(time.time()))
    out = traffic_open.message_delivery(
        "/open/{appid}/callback", APPID, TOKEN, KEY, COMPONENT, message, str(int(time.time())), nonce()
    )
    _, _, query = out.target.partition("?")
    encrypted = xmlmsg.parse(out.body)["Encrypt"]
    moved = out._replace(
        target="/open/auth?" + "&".join(p for p in query.split("&") if not p.startswith("openid=")),
        body=xmlmsg.build({"AppId": COMPONENT, "Encrypt": encrypted}),
    )
    assert send(sidecar, moved)[0] == 403
    assert fresh_backend.requests() == []


def test_an_authorization_event_replayed_to_the_message_url_is_refused(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    """The reverse: a ticket push moved under ``/open/<any appid>/callback`` would reach the message handler as a
    verified push for that authorizer (no ``authorizers`` binding to catch it)."""
    ticket = traffic_open.ticket_push(
        "/open/auth", TOKEN, KEY, COMPONENT, "ticket@@@x", int(time.time()), str(int(time.time())), nonce()
    )
    _, _, query = ticket.target.partition("?")
    encrypted = xmlmsg.parse(ticket.body)["Encrypt"]
    moved = ticket._replace(
        target=f"/open/{APPID}/callback?{query}", body=xmlmsg.build({"ToUserName": GH, "Encrypt": encrypted})
    )
    assert send(sidecar, moved)[0] == 403
    assert fresh_backend.requests() == []


# -- two notifications never share a dedup key ----------------------------------------------------------------


def test_two_tickets_pushed_in_one_second_both_reach_the_backend(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    """A ticket push is keyed by its push (``CreateTime``), never by the ticket alone, which repeats across pushes;
    but two pushes of different tickets in one second (``api_start_push_ticket`` called twice) are two
    notifications: the newer ticket dropped as a duplicate leaves the backend with a stale one (61006)."""
    created = int(time.time())
    for value in ("ticket@@@first", "ticket@@@second"):
        push = traffic_open.ticket_push(
            "/open/auth", TOKEN, KEY, COMPONENT, value, created, str(int(time.time())), nonce()
        )
        assert send(sidecar, push) == (200, b"success")
    assert len(fresh_backend.requests()) == 2


# -- a genuine sender is not blocked by what WeChat sends for someone else -------------------------------------


def test_pushes_wechat_makes_for_another_account_do_not_block_its_address(
    tmp_path: Path, fresh_backend: Backend
) -> None:
    cfg = {
        "upstream": fresh_backend.url,
        "trusted_proxies": ["127.0.0.1/32"],
        "rejection_budget": {"failures": 3, "per": "60s", "block": "60s"},
        "routes": [{**MP, "name": "mp", "path": "/mp", "allow_cidrs": ["198.51.100.0/24"]}],
    }
    s = Sidecar(tmp_path, cfg, env={"TOKEN": TOKEN, "KEY": KEY})
    s.start()
    try:
        wechat = {"X-Forwarded-For": "198.51.100.7"}
        xml = xmlmsg.build({"ToUserName": GH, "FromUserName": OPENID, "CreateTime": 1, "MsgType": "text"})
        for token in ("another-accounts-token", "another-accounts-token", "another-accounts-token", TOKEN):
            out = mp_message(
                "/mp",
                token,
                xml.replace(b"<CreateTime>1", f"<CreateTime>{nonce()[1:]}".encode()),
                str(int(time.time())),
                nonce(),
            )
            status = http("POST", s.url + out.target, out.body, {**dict(out.headers), **wechat})[0]
        assert status == 200  # our own account's push, from the same WeChat address
    finally:
        s.stop()
