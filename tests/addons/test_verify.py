from __future__ import annotations

import time

import pytest

from addons.verify import Verify, inbound_of
from proxy.pipeline.exchange import query_items
from proxy.stores.base import StoreUnavailable
from proxy.tools.sender import mp_verify_url
from tests.addons.conftest import TOKEN, Nonces, flow_of, mp_flow, routed, table


async def test_valid_message_is_verified() -> None:
    f = mp_flow()
    ex = routed(f, table())
    await Verify(Nonces().remember).request(f)
    assert f.response is None
    assert ex.outcome.verdict == "verified"
    assert ex.verified is not None and ex.verified.message["MsgId"] == "1"


async def test_url_verification_is_answered_directly() -> None:
    f = flow_of(mp_verify_url("/wx", TOKEN, echostr="123456789"))
    ex = routed(f, table())
    await Verify(Nonces().remember).request(f)
    assert f.response is not None and (f.response.status_code, f.response.content) == (200, b"123456789")
    assert ex.outcome.verdict == "direct"


async def _no_store_call(key: str, ttl: float) -> bool:
    raise AssertionError("with dedup on, the replay check is made with the dedup claim")


async def test_with_dedup_on_the_replay_check_is_left_to_the_claim() -> None:
    first, again, forged = mp_flow(content="real"), mp_flow(content="real"), mp_flow(content="forged")
    again.request = first.request.copy()
    forged.request.query = first.request.query  # the captured signed values, a new body
    exs = [routed(f, table()) for f in (first, again, forged)]
    for f in (first, again, forged):
        await Verify(_no_store_call).request(f)
    assert [f.response for f in (first, again, forged)] == [None, None, None]
    replays = [ex.replay for ex in exs]
    assert all(r is not None for r in replays) and all(ex.outcome.verdict == "verified" for ex in exs)
    a, b, c = replays
    assert a == b  # an exact repeat: the same entry
    assert a is not None and c is not None and (a.signed, a.ttl) == (c.signed, c.ttl) and a.body != c.body
    assert a.signed.startswith("nonce:mp:") and "real" not in a.body  # hashes, never the values


async def test_exact_repeat_is_refused_when_dedup_is_off() -> None:
    nonces = Nonces()
    first, again = mp_flow(), mp_flow()
    again.request = first.request.copy()
    routed(first, table(dedup={"enabled": False}))
    ex = routed(again, table(dedup={"enabled": False}))
    await Verify(nonces.remember).request(first)
    await Verify(nonces.remember).request(again)
    assert again.response is not None and again.response.status_code == 403
    assert ex.outcome.reason == "replayed_nonce"


@pytest.mark.parametrize(("offset", "reason"), [(-400, "stale_timestamp"), (400, "future_timestamp")])
async def test_timestamp_window(offset: int, reason: str) -> None:
    f = mp_flow(now=int(time.time()) + offset)
    ex = routed(f, table())
    await Verify(Nonces().remember).request(f)
    assert f.response is not None and f.response.status_code == 403
    assert ex.outcome.reason == reason


async def test_malformed_xml_is_a_400() -> None:
    f = mp_flow()
    f.request.content = b"<xml><oops"
    ex = routed(f, table())
    await Verify(Nonces().remember).request(f)
    assert f.response is not None and f.response.status_code == 400
    assert ex.outcome.reason == "malformed_xml"


async def _down(key: str, ttl: float) -> bool:
    raise StoreUnavailable("redis at 127.0.0.1:1 refused the connection")


async def test_store_down_fail_open_accepts_and_says_so() -> None:
    f = mp_flow()
    ex = routed(f, table(dedup={"enabled": False}))
    await Verify(_down).request(f)
    assert f.response is None
    assert (ex.outcome.verdict, ex.outcome.dedup) == ("verified", "store_error")


async def test_store_down_fail_closed_asks_for_a_retry() -> None:
    f = mp_flow()
    ex = routed(f, table(dedup={"enabled": False, "store_down": "fail_closed"}))
    await Verify(_down).request(f)
    assert f.response is not None and f.response.status_code == 502
    assert ex.outcome.reason == "store_unavailable"


async def test_unexpected_errors_fail_closed() -> None:
    async def broken(key: str, ttl: float) -> bool:
        raise RuntimeError("bug")

    f = mp_flow()
    ex = routed(f, table(dedup={"enabled": False}))
    await Verify(broken).request(f)
    assert f.response is not None and f.response.status_code == 500
    assert ex.outcome.reason == "verify_error"


@pytest.mark.parametrize(
    "target",
    [
        "/wx?signature=abc&timestamp=1&nonce=n&openid=o",
        "/wx?a=1&a=2&b=&c=%E4%BD%A0%20x+y&d",
        "/wx?bad=%ff%fe&x=1#frag",
        "/wx",
    ],
)
def test_inbound_reads_query_and_headers_as_mitmproxy_does(target: str) -> None:
    f = flow_of(mp_verify_url("/wx", TOKEN))
    f.request.path = target
    f.request.headers.clear()
    f.request.headers.add("Content-Type", "text/xml")
    f.request.headers.add("X-Dup", "1")
    f.request.headers.add("x-dup", "2")
    f.request.headers.fields += ((b"X-Raw", b"\xe4\xbd\xa0\xff"),)

    inbound = inbound_of(f.request)

    assert query_items(f.request.path) == list(f.request.query.items(multi=True))  # what forward sends on

    expected_query: dict[str, str] = {}
    for k, v in f.request.query.items(multi=True):
        expected_query.setdefault(k, v)
    assert dict(inbound.query) == expected_query
    assert dict(inbound.headers) == {k.lower(): v for k, v in f.request.headers.items()}
    assert inbound.headers["x-dup"] == "1, 2"
    assert inbound.path == "/wx"
