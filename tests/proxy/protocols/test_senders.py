"""Sender helpers: what they produce is what the verifiers accept, and tampering always breaks it."""

from __future__ import annotations

from proxy.protocols import xmlmsg
from proxy.protocols.wechat_pay_v3 import load_certificate
from proxy.tools import traffic
from tests.proxy.protocols.helpers import inbound, rsa_key


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
