"""Every sender protocol through the running proxy, in front of the plaintext demo backend."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.config import RouteBase, parse_config
from proxy.protocols import wxcrypt, xmlmsg
from proxy.tools import sender, sender_replies, traffic
from proxy.tools.sender import Request, mp_text
from tests.integration.conftest import pay_v3_route
from tests.support.procs import ROOT, WXGATE, Backend, Sidecar, http

pytestmark = pytest.mark.integration

TOKEN, OLD_TOKEN = "proto-token", "old-token"
AES = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APP_ID = "wx2c2769f8efd9abc2"
CORP = "ww1436e0e65a779aee"
PAY_KEY = "192006250b4c09247ec02edce69f6a2d"
V3_KEY = "0123456789abcdef0123456789abcdef"
MCH = "1900000109"
HMAC_SECRET = "hmac-secret"
WH_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ENV = {
    "TOKEN": TOKEN,
    "OLD": OLD_TOKEN,
    "AES": AES,
    "PAY": PAY_KEY,
    "V3": V3_KEY,
    "HM": HMAC_SECRET,
    "WH": WH_SECRET,
}
MINI = {"protocol": "wechat-miniprogram", "token": "${TOKEN}", "app_id": APP_ID, "encoding_aes_key": "${AES}"}
COMPONENT = "wx134c8103faa5a59e"
OPEN = {
    "protocol": "wechat-open-platform",
    "component_app_id": COMPONENT,
    "token": "${TOKEN}",
    "encoding_aes_key": "${AES}",
}
SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"


def now() -> str:
    return str(int(time.time()))


def nonce() -> str:
    return f"n{time.perf_counter_ns()}"


@pytest.fixture(scope="module")
def sidecar(tmp_module: Path, backend: Backend) -> Iterator[Sidecar]:
    cert = tmp_module / "platform.pem"
    cert.write_bytes(traffic.platform_certificate(SIGNING_KEY, int(SERIAL, 16), time.time()))
    routes: list[dict[str, Any]] = [
        {
            "name": "mp-safe",
            "path": "/mp/safe",
            "protocol": "wechat-mp",
            "token": "${TOKEN}",
            "previous_token": "${OLD}",
            "app_id": APP_ID,
            "encoding_aes_key": "${AES}",
            "decrypt_for_backend": True,
        },
        {
            "name": "mp-compat",
            "path": "/mp/compat",
            "protocol": "wechat-mp",
            "token": "${TOKEN}",
            "app_id": APP_ID,
            "encoding_aes_key": "${AES}",
        },
        {
            "name": "wecom",
            "path": "/wecom",
            "protocol": "wecom",
            "token": "${TOKEN}",
            "encoding_aes_key": "${AES}",
            "receive_id": CORP,
            "decrypt_for_backend": True,
        },
        {
            "name": "wecom-raw",
            "path": "/wecom/raw",
            "protocol": "wecom",
            "token": "${TOKEN}",
            "encoding_aes_key": "${AES}",
            "receive_id": CORP,
        },
        {
            "name": "pay2",
            "path": "/pay/v2",
            "protocol": "wechat-pay-v2",
            "api_key": "${PAY}",
            "mch_id": MCH,
            "decrypt_for_backend": True,
        },
        pay_v3_route(cert, MCH, api_key="${PAY}"),
        {"name": "hooks", "path": "/hooks/hmac", "protocol": "hmac", "secret": "${HM}"},
        {"name": "stdhooks", "path": "/hooks/std", "protocol": "standard-webhooks", "secret": "${WH}"},
        {**MINI, "name": "mini", "path": "/mini", "decrypt_for_backend": True},
        {**OPEN, "name": "open-auth", "path": "/open/auth", "kind": "authorization"},
        {
            **OPEN,
            "name": "open-msgs",
            "path": "/open/{appid}/callback",
            "kind": "messages",
            "decrypt_for_backend": True,
        },
    ]
    s = Sidecar(tmp_module, {"upstream": backend.url, "routes": routes}, env=ENV, name="protocols")
    s.start()
    yield s
    s.stop()


def send(s: Sidecar, out: traffic.Outbound) -> tuple[int, bytes, dict[str, str]]:
    r = Request.of(out)
    return http(r.method, s.url + r.path_query, r.body, r.headers)


def only_request(b: Backend) -> dict[str, Any]:
    reqs = b.requests()
    assert len(reqs) == 1, reqs
    return reqs[0]


def open_reply(body: bytes, receive_id: str, token: str = TOKEN) -> bytes:
    fields = xmlmsg.parse(body)
    assert set(fields) == {"Encrypt", "MsgSignature", "TimeStamp", "Nonce"}
    assert (
        wxcrypt.sha1_signature(token, fields["TimeStamp"], fields["Nonce"], fields["Encrypt"])
        == fields["MsgSignature"]
    )
    return wxcrypt.decrypt([wxcrypt.AesKey.decode("k", AES)], fields["Encrypt"], [receive_id]).message


def test_mp_safe_mode_serves_a_plaintext_backend(sidecar: Sidecar, fresh_backend: Backend) -> None:
    xml = xmlmsg.build(mp_text("gh_x", "oSafe", "secret hello", 9001))
    status, body, _ = send(
        sidecar,
        traffic.mp_message("/mp/safe", TOKEN, xml, now(), nonce(), encoding_aes_key=AES, app_id=APP_ID),
    )
    assert status == 200
    got = only_request(fresh_backend)
    assert "<Content><![CDATA[secret hello]]></Content>" in got["body"] and "Encrypt" not in got["body"]
    assert "encrypt_type" not in got["query"] and "msg_signature" not in got["query"]
    assert "signature" in got["query"]  # a legacy backend that checks `signature` keeps working
    assert b"echo: secret hello" in open_reply(body, APP_ID)
    assert b"secret hello" not in body


def test_mp_safe_mode_accepts_the_previous_token_and_says_so(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    xml = xmlmsg.build(mp_text("gh_x", "oSafe", "rotating", 9002))
    status, body, _ = send(
        sidecar,
        traffic.mp_message("/mp/safe", OLD_TOKEN, xml, now(), nonce(), encoding_aes_key=AES, app_id=APP_ID),
    )
    assert status == 200
    assert b"echo: rotating" in open_reply(body, APP_ID, token=OLD_TOKEN)  # answered with the key WeChat used
    assert sidecar.metric("wxgate_verifications_total", route="mp-safe", key="previous") >= 1


def test_mp_compatible_mode_trusts_only_the_ciphertext(sidecar: Sidecar, fresh_backend: Backend) -> None:
    xml = xmlmsg.build(mp_text("gh_x", "oCompat", "the real text", 9003))
    out = traffic.mp_message(
        "/mp/compat", TOKEN, xml, now(), nonce(), encoding_aes_key=AES, app_id=APP_ID, compatible=True
    )
    forged = out._replace(body=out.body.replace(b"the real text", b"forged text!!"))
    status, body, _ = send(sidecar, forged)
    assert status == 200
    got = only_request(fresh_backend)["body"]
    # The unauthenticated plaintext beside <Encrypt> never reaches the backend: it gets the decrypted fields.
    assert "the real text" in got and "forged" not in got and "<Encrypt>" in got
    assert b"echo: the real text" in open_reply(body, APP_ID)


def test_mp_safe_mode_refuses_a_wrong_app_id(sidecar: Sidecar, fresh_backend: Backend) -> None:
    xml = xmlmsg.build(mp_text("gh_x", "oSafe", "x", 9004))
    status, _, _ = send(
        sidecar,
        traffic.mp_message(
            "/mp/safe", TOKEN, xml, now(), nonce(), encoding_aes_key=AES, app_id="wx0000000000000000"
        ),
    )
    assert status == 403
    assert fresh_backend.stats()["count"] == 0
    assert sidecar.metric("wxgate_verifications_total", route="mp-safe", reason="wrong_app_id") == 1


def test_wecom_url_verification_and_message(sidecar: Sidecar, fresh_backend: Backend) -> None:
    status, body, _ = send(
        sidecar, traffic.wecom_url_check("/wecom", TOKEN, AES, CORP, "1288432023552776189", now(), nonce())
    )
    assert (status, body) == (200, b"1288432023552776189")
    xml = xmlmsg.build(mp_text(CORP, "zhangsan", "你好", 4242))
    status, body, _ = send(
        sidecar, traffic.wecom_message("/wecom", TOKEN, AES, CORP, xml, now(), nonce(), agent_id="218")
    )
    assert status == 200
    assert "<Content><![CDATA[你好]]></Content>" in only_request(fresh_backend)["body"]
    assert "echo: 你好".encode() in open_reply(body, CORP)


def test_wecom_fields_beside_encrypt_never_reach_a_backend_that_decrypts_itself(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    """msg_signature covers Encrypt alone. A captured message with forged plaintext fields beside it and another
    AgentID, sent before the genuine one, reached the backend marked verified and took the genuine one's place."""
    inner = xmlmsg.build({**mp_text(CORP, "zhangsan", "genuine", 4343), "AgentID": "218"})
    genuine = traffic.wecom_message("/wecom/raw", TOKEN, AES, CORP, inner, now(), nonce(), agent_id="218")
    forged_body = genuine.body.replace(
        b"<AgentID><![CDATA[218]]></AgentID>",
        b"<AgentID>999</AgentID><FromUserName>attacker</FromUserName><Content>transfer 1000</Content>",
    )
    assert forged_body != genuine.body
    r = Request.of(genuine)
    status, _, _ = http(r.method, sidecar.url + r.path_query, forged_body, r.headers)
    assert status == 200
    got = only_request(fresh_backend)
    assert "attacker" not in got["body"] and "transfer" not in got["body"] and "999" not in got["body"]
    assert "<AgentID><![CDATA[218]]></AgentID>" in got["body"] and "<Encrypt>" in got["body"]
    http("POST", fresh_backend.url + "/_demo/reset")
    unchanged = traffic.wecom_message(
        "/wecom/raw", TOKEN, AES, CORP, inner.replace(b"4343", b"4344"), now(), nonce(), agent_id="218"
    )
    assert send(sidecar, unchanged)[0] == 200
    assert (
        only_request(fresh_backend)["body"] == unchanged.body.decode()
    )  # an untouched envelope goes as sent


def pay_fields(txn: str) -> dict[str, str]:
    return {
        "return_code": "SUCCESS",
        "appid": "wxd930ea5d5a258f4f",
        "mch_id": MCH,
        "nonce_str": nonce(),
        "result_code": "SUCCESS",
        "openid": "oPay",
        "total_fee": "1",
        "transaction_id": txn,
        "out_trade_no": "T" + txn,
        "time_end": "20261126170000",
    }


SUCCESS_XML = (
    b"<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>"
)


def test_pay_v2_notify_sign_types_and_contract(sidecar: Sidecar, fresh_backend: Backend) -> None:
    for sign_type, txn in ((None, "4200001"), ("HMAC-SHA256", "4200002")):
        status, body, _ = send(sidecar, traffic.pay_v2_notify("/pay/v2", PAY_KEY, pay_fields(txn), sign_type))
        assert (status, body) == (200, SUCCESS_XML)  # the demo backend's passive XML is not Pay's contract
    assert fresh_backend.stats()["count"] == 2
    assert sidecar.metric("wxgate_replies_normalized_total", route="pay2") == 2
    tampered = traffic.tamper(traffic.pay_v2_notify("/pay/v2", PAY_KEY, pay_fields("4200003")))
    status, body, _ = send(sidecar, tampered)
    assert status == 200 and b"FAIL" in body
    assert fresh_backend.stats()["count"] == 2


def test_pay_v2_refund_is_decrypted_for_the_backend(sidecar: Sidecar, fresh_backend: Backend) -> None:
    refund = {
        "refund_id": "50300103182020010413419046597",
        "out_refund_no": "1234",
        "refund_status": "SUCCESS",
        "transaction_id": "4200000483202001042069747825",
        "out_trade_no": "X1",
        "refund_fee": "1",
    }
    status, body, _ = send(
        sidecar, traffic.pay_v2_refund_notify("/pay/v2", PAY_KEY, "wx4f4bc4dec97d474b", MCH, refund, nonce())
    )
    assert (status, body) == (200, SUCCESS_XML)
    got = only_request(fresh_backend)["body"]
    assert "50300103182020010413419046597" in got and "req_info" not in got


def v3(txn: str, probe: bool = False) -> traffic.Outbound:
    plaintext = {
        "mchid": MCH,
        "appid": "wxd930ea5d5a258f4f",
        "transaction_id": txn,
        "out_trade_no": "T" + txn,
        "trade_state": "SUCCESS",
    }
    return traffic.pay_v3_notify(
        "/pay/v3",
        SIGNING_KEY,
        SERIAL,
        V3_KEY,
        plaintext,
        now(),
        nonce(),
        notification_id=f"EV-{txn}",
        probe=probe,
    )


def test_pay_v3_notice_probe_and_v2_at_v3(sidecar: Sidecar, fresh_backend: Backend) -> None:
    status, body, _ = send(sidecar, v3("4200100"))
    assert status in (200, 204) and body == b""  # the backend's passive XML is replaced by an empty 2xx
    assert json.loads(only_request(fresh_backend)["body"])["id"] == "EV-4200100"
    status, body, _ = send(sidecar, v3("4200101", probe=True))
    assert status == 401 and json.loads(body)["code"] == "FAIL"
    assert fresh_backend.stats()["count"] == 1  # the probe never reached the backend
    assert sidecar.metric("wxgate_verifications_total", route="pay3", reason="signature_probe") == 1
    status, body, _ = send(sidecar, traffic.pay_v2_notify("/pay/v3", PAY_KEY, pay_fields("4200102")))
    assert (status, body) == (200, SUCCESS_XML)  # a v2 notice at a v3 URL, answered in v2's format
    assert fresh_backend.stats()["count"] == 2


def test_generic_hmac_and_standard_webhooks(sidecar: Sidecar, fresh_backend: Backend) -> None:
    fresh_backend.set_mode("json")
    ok = traffic.hmac_request("/hooks/hmac", HMAC_SECRET, {"order": "77", "state": "paid"}, now(), nonce())
    status, body, _ = send(sidecar, ok)
    assert status == 200 and body == b'{"errcode":0,"errmsg":"ok"}'  # generic: 2xx passes through unchanged
    assert (
        send(
            sidecar,
            traffic.tamper(traffic.hmac_request("/hooks/hmac", HMAC_SECRET, {"order": "78"}, now(), nonce())),
        )[0]
        == 401
    )
    hook = traffic.standard_webhook(
        "/hooks/std", WH_SECRET, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", now(), b'{"type":"invoice.paid"}'
    )
    assert send(sidecar, hook)[0] == 200
    assert send(sidecar, traffic.tamper(hook))[0] == 401
    assert fresh_backend.stats()["count"] == 2


# -- wxgate send and the demo backend: Mini Program, Open Platform ----------------------------------------------------


def wxgate_send(s: Sidecar, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [*WXGATE, "-c", str(s.config_path), "send", "--retries", "0", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=30, env={**os.environ, **ENV}, cwd=ROOT
    )


def send_as_wxgate_send(s: Sidecar, name: str, options: sender.SendOptions) -> tuple[RouteBase, int, bytes]:
    """One attempt of ``wxgate send --route name`` made in this process; the reply must be one send accepts."""
    (route,) = [r for r in parse_config(s.config, ENV).routes if r.name == name]
    r = sender.build(route, options)
    status, body, _ = http(r.method, s.url + r.path_query, r.body, r.headers)
    assert sender.accepts(route, options)(status, body), (status, body)
    return route, status, body


def test_wxgate_send_pushes_a_safe_mode_json_mini_program_message(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    fresh_backend.set_mode("transfer")
    out = wxgate_send(sidecar, "--route", "mini", "--msg-id", "9007199254740993", "--content", "在吗")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("attempt 1: status 200") and '"Encrypt":"' in out.stdout
    # the demo hands the user to customer service; wxgate sealed that for the mini program, send opened it
    assert '"MsgType": "transfer_customer_service"' in out.stdout.split("decrypted: ", 1)[1]
    got = only_request(fresh_backend)
    assert got["headers"]["x-wxgate-protocol"] == "wechat-miniprogram"
    assert '"MsgId":9007199254740993' in got["body"] and "在吗" in got["body"]  # plaintext JSON, id exact


def test_wxgate_send_delivers_to_appid_and_the_demo_answers_the_release_test(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    out = wxgate_send(sidecar, "--route", "open-msgs", "--content", "TESTCOMPONENT_MSG_TYPE_TEXT")
    assert out.returncode == 0, out.stdout + out.stderr
    assert (
        "<Content><![CDATA[TESTCOMPONENT_MSG_TYPE_TEXT_callback]]></Content>"
        in out.stdout.split("decrypted: ")[1]
    )
    got = only_request(fresh_backend)
    assert got["path"] == "/open/wx570bc396a51b8ff8/callback"  # the default: a 全网发布 test account
    assert got["headers"]["x-wxgate-authorizer-appid"] == "wx570bc396a51b8ff8"


@pytest.mark.parametrize(
    ("opts", "answer"),
    [
        ({"kind": "event", "event": "LOCATION"}, b"LOCATIONfrom_callback"),
        ({"content": "QUERY_AUTH_CODE:queryauthcode@@@x"}, b""),
    ],
)
def test_the_demo_answers_the_other_release_test_steps(
    sidecar: Sidecar, fresh_backend: Backend, opts: dict[str, Any], answer: bytes
) -> None:
    route, status, body = send_as_wxgate_send(sidecar, "open-msgs", sender.SendOptions(**opts))
    assert status == 200
    plain = sender_replies.read(route, body) or b""
    assert (xmlmsg.parse(plain)["Content"].encode() if plain else plain) == answer


def test_a_ticket_push_from_send_is_answered_success(sidecar: Sidecar, fresh_backend: Backend) -> None:
    _, status, body = send_as_wxgate_send(
        sidecar, "open-auth", sender.SendOptions(kind="ticket", message_id="7")
    )
    assert (status, body) == (200, b"success")
    assert (
        "<ComponentVerifyTicket>" not in only_request(fresh_backend)["body"]
    )  # forwarded sealed (as configured)
