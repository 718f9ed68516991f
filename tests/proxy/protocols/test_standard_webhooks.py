"""Standard Webhooks: the spec's reference vector, signature lists, window, replay and dedup keys, replies."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.protocols.base import Inbound, Reply, Verified
from proxy.protocols.standard_webhooks import StandardWebhooks, decode_secret, sign
from proxy.tools import traffic
from tests.proxy.protocols import vectors as v
from tests.proxy.protocols.helpers import accepted, inbound, rejected, requests, verify_or_reject

NOW = int(v.SW_TS)
OTHER = "whsec_" + base64.b64encode(b"o" * 32).decode()


def sw(*secrets: str) -> StandardWebhooks:
    names = ("current", "previous")
    return StandardWebhooks(list(zip(names, secrets or (v.SW_SECRET,), strict=False)))


def reference(signature: str = v.SW_SIGNATURE, body: bytes = v.SW_BODY) -> Inbound:
    headers = {"webhook-id": v.SW_ID, "webhook-timestamp": v.SW_TS, "webhook-signature": signature}
    return Inbound("POST", "/sw", {}, headers, body)


def test_reference_vector() -> None:
    assert "v1," + sign(decode_secret(v.SW_SECRET), v.SW_ID, v.SW_TS, v.SW_BODY) == v.SW_SIGNATURE
    verified = accepted(sw(), reference(), NOW)
    assert verified.key_id == "current"
    assert sw().dedup_key(verified) == v.SW_ID
    assert verified.replay_key == f"sw:{v.SW_ID}:{v.SW_TS}" and verified.replay_ttl == 600
    assert accepted(sw(v.SW_SECRET.removeprefix("whsec_")), reference(), NOW)  # prefix optional


def test_any_v1_entry_of_the_list_may_match() -> None:
    listed = f"v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,xyz {v.SW_SIGNATURE} v1,!!"
    assert accepted(sw(), reference(listed), NOW)
    assert rejected(sw(), reference(v.SW_SIGNATURE.replace("v1,", "v2,")), NOW).reason == "bad_signature"


def test_negatives() -> None:
    assert rejected(sw(), reference(body=v.SW_BODY + b" "), NOW).reason == "bad_signature"
    assert (
        rejected(sw(), reference("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="), NOW).reason
        == "bad_signature"
    )
    assert rejected(sw(OTHER), reference(), NOW).reason == "bad_signature"
    assert rejected(sw(), reference(), NOW + 301).reason == "stale_timestamp"
    assert rejected(sw(), reference(), NOW - 301).reason == "future_timestamp"
    assert rejected(
        sw(), traffic.tamper(traffic.standard_webhook("/sw", v.SW_SECRET, "m", v.SW_TS, b"{}")), NOW
    ).reason == ("bad_signature")
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        req = reference()
        headers = {k: x for k, x in req.headers.items() if k != name}
        e = rejected(sw(), Inbound("POST", "/sw", {}, headers, req.body), NOW)
        assert (e.reason, e.status, e.detail) == ("missing_header", 401, name)
    bad_ts = Inbound("POST", "/sw", {}, {**reference().headers, "webhook-timestamp": "hello"}, v.SW_BODY)
    assert rejected(sw(), bad_ts, NOW).reason == "bad_signature"


def test_rotation() -> None:
    assert accepted(sw(OTHER, v.SW_SECRET), reference(), NOW).key_id == "previous"


@pytest.mark.parametrize("secret", ["whsec_!!!", "whsec_", ""])
def test_bad_secrets(secret: str) -> None:
    with pytest.raises(ValueError) as e:
        StandardWebhooks([("current", secret)])
    assert "!!!" not in str(e.value)


def test_replies() -> None:
    protocol = sw()
    assert protocol.normalize(202, "application/json", b'{"a":1}', Verified()) == Reply(
        202, b'{"a":1}', "application/json", "ack"
    )
    assert protocol.success_reply().status == 200
    assert protocol.failure_reply("bad_signature", 401).status == 401
    assert protocol.backend_failure_reply().status == 502


@given(
    body=st.binary(max_size=300),
    msg_id=st.text(min_size=1, max_size=30).filter(lambda s: s.strip() == s and "\x00" not in s),
)
def test_round_trip(body: bytes, msg_id: str) -> None:
    out = traffic.standard_webhook("/sw", OTHER, msg_id, str(NOW), body)
    req = inbound(out)
    assert accepted(sw(OTHER), req, NOW).message["webhook-id"] == msg_id


@settings(max_examples=300, deadline=None)
@given(req=requests, now=st.integers(0, 2**33))
def test_verify_raises_only_rejected(req: Inbound, now: int) -> None:
    verify_or_reject(sw(), req, now)
