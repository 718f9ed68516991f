"""Generic HMAC webhooks: what is signed, where the signature comes from, window, replay and dedup keys."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.protocols.base import Inbound, Reply, Verified
from proxy.protocols.hmac_sig import HmacSignature, signature, string_to_sign
from proxy.tools import traffic
from tests.proxy.protocols.helpers import accepted, inbound, rejected, requests, verify_or_reject

NOW, SECRET = 1700000000, "s3cret"
PARAMS = {"order_id": "A1", "amount": "12.50", "note": "中文 & spaces"}


def hm(**kw: object) -> HmacSignature:
    args: dict[str, object] = {"secrets": [("current", SECRET)]}
    args.update(kw)
    return HmacSignature(**args)  # type: ignore[arg-type]


def send(ts: int = NOW, nonce: str = "n1", secret: str = SECRET, **kw: object) -> traffic.Outbound:
    return traffic.hmac_request("/h", secret, PARAMS, str(ts), nonce, **kw)  # type: ignore[arg-type]


def test_string_to_sign_and_known_value() -> None:
    assert string_to_sign({"b": "2", "a": "1", "c": ""}) == "a=1&b=2&c="
    # printf 'a=1&b=2' | openssl dgst -sha256 -hmac key
    assert (
        signature("key", {"b": "2", "a": "1"})
        == "b3c18626e7ac81395c1d37966c7ee2258a6967a1b3fdefb4fa339bb19dc73b0e"
    )


@pytest.mark.parametrize("body", ["form", "json", "query"])
def test_every_body_form_verifies(body: str) -> None:
    verified = accepted(hm(), send(body=body), NOW)
    assert verified.message["order_id"] == "A1" and verified.message["note"] == "中文 & spaces"
    assert "sign" not in verified.message
    assert verified.replay_key == "hmac:n1" and verified.replay_ttl == 600


def test_signature_from_a_header() -> None:
    protocol = hm(sign_header="X-Signature")
    assert accepted(protocol, send(sign_header="x-signature"), NOW).key_id == "current"
    assert rejected(protocol, send(), NOW).reason == "missing_param"


def test_json_numbers_are_signed_as_written() -> None:
    body = b'{"amount": 12.50, "paid": true, "memo": null}'
    params = {"amount": "12.50", "paid": "true", "memo": "null", "timestamp": str(NOW), "nonce": "n"}
    query = {"timestamp": str(NOW), "nonce": "n", "sign": signature(SECRET, params)}
    req = Inbound("POST", "/h", query, {"content-type": "application/json"}, body)
    assert accepted(hm(), req, NOW).message["amount"] == "12.50"


def test_negatives() -> None:
    assert rejected(hm(), traffic.tamper(send()), NOW).reason == "bad_signature"
    assert rejected(hm(), send(secret="other"), NOW).reason == "bad_signature"
    assert rejected(hm(), send(ts=NOW - 301), NOW).reason == "stale_timestamp"
    assert rejected(hm(), send(ts=NOW + 301), NOW).reason == "future_timestamp"
    req = inbound(send(body="json"))
    nested = Inbound("POST", "/h", req.query, req.headers, json.dumps({"a": {"b": 1}}).encode())
    assert rejected(hm(), nested, NOW).reason == "unsigned_body"
    xml = Inbound("POST", "/h", req.query, {"content-type": "text/xml"}, b"<xml/>")
    assert rejected(hm(), xml, NOW).reason == "unsigned_body"
    dup = Inbound("POST", "/h", {**req.query, "order_id": "B2"}, req.headers, req.body)
    assert rejected(hm(), dup, NOW).reason == "duplicate_param"
    form = Inbound("POST", "/h", req.query, {"content-type": "application/x-www-form-urlencoded"}, b"a=1&a=2")
    assert rejected(hm(), form, NOW).reason == "duplicate_param"
    broken = Inbound(
        "POST", "/h", req.query, {"content-type": "application/x-www-form-urlencoded"}, b"\xff=1"
    )
    assert rejected(hm(), broken, NOW).reason == "malformed_body"
    for missing in ("timestamp", "nonce", "sign"):
        q = {k: x for k, x in inbound(send(body="query")).query.items() if k != missing}
        e = rejected(hm(), Inbound("POST", "/h", q, {}, b""), NOW)
        assert (e.reason, e.status) == ("missing_param", 401)


def test_rotation() -> None:
    assert accepted(hm(secrets=[("current", "new"), ("previous", SECRET)]), send(), NOW).key_id == "previous"


def test_custom_parameter_names() -> None:
    protocol = hm(sign_param="signature", timestamp_param="ts", nonce_param="rnd")
    out = send(sign_param="signature", timestamp_param="ts", nonce_param="rnd")
    assert accepted(protocol, out, NOW).replay_key == "hmac:n1"


def test_dedup_keys() -> None:
    verified = accepted(hm(), send(), NOW)
    assert hm().dedup_key(verified) == "nonce=n1"
    fields = hm(dedup_fields=["order_id", "amount"]).dedup_key(verified)
    assert fields == 'fields|[["order_id","A1"],["amount","12.50"]]'
    assert hm(dedup_fields=["order_id", "missing"]).dedup_key(verified) == "nonce=n1"  # all or nothing


def test_replies_pass_the_backend_through() -> None:
    protocol = hm()
    for status, body in ((200, b'{"anything":1}'), (201, b"created"), (204, b"")):
        assert protocol.normalize(status, "x/y", body, Verified()) == Reply(status, body, "x/y", "ack")
    assert protocol.success_reply().body == b'{"code":"SUCCESS"}'
    assert protocol.failure_reply("bad_signature", 401).status == 401
    assert json.loads(protocol.failure_reply("stale_timestamp", 401).body) == {
        "code": "FAIL",
        "message": "unauthorized",
    }
    assert protocol.backend_failure_reply().status == 502


@given(
    params=st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=20), max_size=5),
    body=st.sampled_from(["form", "json", "query"]),
)
def test_round_trip(params: dict[str, str], body: str) -> None:
    params = {k: x for k, x in params.items() if k not in ("timestamp", "nonce", "sign")}
    out = traffic.hmac_request("/h", SECRET, params, str(NOW), "n", body=body)
    assert dict(accepted(hm(), out, NOW).message) == {**params, "timestamp": str(NOW), "nonce": "n"}


@settings(max_examples=300, deadline=None)
@given(req=requests, now=st.integers(0, 2**33))
def test_verify_raises_only_rejected(req: Inbound, now: int) -> None:
    verify_or_reject(hm(), req, now)
    verify_or_reject(hm(sign_header="x-signature"), req, now)


def test_names_and_values_are_percent_encoded_so_no_value_reads_as_a_boundary() -> None:
    # one parameter whose value holds "&b=2", and the two parameters it used to be indistinguishable from
    assert string_to_sign({"a": "1&b=2"}) == "a=1%26b%3D2"
    assert string_to_sign({"a": "1", "b": "2"}) == "a=1&b=2"
    assert signature(SECRET, {"a": "1&b=2"}) != signature(SECRET, {"a": "1", "b": "2"})
    assert signature(SECRET, {"a=1&b": "2"}) != signature(SECRET, {"a": "1", "b": "2"})
    # RFC 3986 unreserved characters stay, everything else is UTF-8 percent-encoded in upper-case hex
    assert (
        string_to_sign({"x=y": "a~b.c_d-e", "note": "中 & x"}) == "note=%E4%B8%AD%20%26%20x&x%3Dy=a~b.c_d-e"
    )
    # printf 'note=%%E4%%B8%%AD%%20%%26%%20x&x%%3Dy=a~b.c_d-e' | openssl dgst -sha256 -hmac key
    assert (
        signature("key", {"x=y": "a~b.c_d-e", "note": "中 & x"})
        == "00f3df302e324b1964c442564c829fa673fc6ebc26106f0dd74553630c01a65d"
    )


def test_a_signature_for_one_parameter_set_does_not_verify_another() -> None:
    # signed for {"order": "1&state=paid"}: the same string once signed {"order": "1", "state": "paid"}
    signed = traffic.hmac_request("/h", SECRET, {"order": "1&state=paid"}, str(NOW), "n9")
    assert accepted(hm(), signed, NOW).message["order"] == "1&state=paid"
    sig = dict(p.split("=", 1) for p in signed.target.split("?", 1)[1].split("&"))["sign"]
    split = Inbound(
        "POST",
        "/h",
        {"timestamp": str(NOW), "nonce": "n9", "sign": sig},
        {"content-type": "application/x-www-form-urlencoded"},
        b"order=1&state=paid",
    )
    assert rejected(hm(), split, NOW).reason == "bad_signature"
