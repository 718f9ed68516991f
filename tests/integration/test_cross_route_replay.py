"""A request captured at one route is not fresh at another route with the same secret, through the running proxy.

Found by attacking the request path: the replay cache was kept per route, and no signature covers the URL (a
plaintext Official Account ``signature`` not even the body). Two Official Accounts configured with one Token,
or one in-house sender posting to two endpoints with one secret, let a captured request be replayed once at
each other route, and a captured MP query carry a forged message there. Routes sharing a secret now share a
replay scope; a request is accepted at the route it was first seen at only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.protocols import xmlmsg
from proxy.tools import traffic
from tests.support.procs import Backend, Sidecar, send_outbound

pytestmark = pytest.mark.integration

TOKEN, OTHER_TOKEN, SECRET = "shared-token", "other-token", "shared-hmac-secret-0123456789"
SW_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # 32 bytes; "…ZWZ=" decodes to the same bytes
SW_KEY_RESPELLED = SW_KEY[:-2] + "Z="


@pytest.fixture(scope="module")
def sidecar(tmp_module: Path, backend: Backend) -> Iterator[Sidecar]:
    mp = {"protocol": "wechat-mp", "token": "${TOKEN}"}
    routes = [
        {**mp, "name": "account1", "path": "/wechat/account1"},
        {**mp, "name": "account2", "path": "/wechat/account2"},
        {**mp, "name": "account3", "path": "/wechat/account3", "token": "${OTHER}"},
        {"name": "orders", "path": "/hook/orders", "protocol": "hmac", "secret": "${HM}"},
        {"name": "refunds", "path": "/hook/refunds", "protocol": "hmac", "secret": "${HM}"},
        # one Standard Webhooks key written three ways: prefixed, bare, bare with other (ignored) padding bits
        {"name": "sw-a", "path": "/sw/a", "protocol": "standard-webhooks", "secret": "${SWA}"},
        {"name": "sw-b", "path": "/sw/b", "protocol": "standard-webhooks", "secret": "${SWB}"},
        {"name": "sw-c", "path": "/sw/c", "protocol": "standard-webhooks", "secret": "${SWC}"},
    ]
    env = {"TOKEN": TOKEN, "OTHER": OTHER_TOKEN, "HM": SECRET}
    env |= {"SWA": f"whsec_{SW_KEY}", "SWB": SW_KEY, "SWC": SW_KEY_RESPELLED}
    s = Sidecar(tmp_module, {"upstream": backend.url, "routes": routes}, env=env, name="scopes")
    s.start()
    yield s
    s.stop()


def message(content: str, msg_id: int) -> bytes:
    return xmlmsg.build(
        {
            "ToUserName": "gh_one",
            "FromUserName": "oUser",
            "CreateTime": int(time.time()),
            "MsgType": "text",
            "Content": content,
            "MsgId": msg_id,
        }
    )


def moved(out: traffic.Outbound, path: str, body: bytes | None = None) -> traffic.Outbound:
    query = out.target.partition("?")[2]
    return out._replace(target=f"{path}?{query}", body=out.body if body is None else body)


def delivered(backend: Backend) -> list[tuple[str, str]]:
    return [(r["path"], r["body"]) for r in backend.requests()]


def test_an_hmac_request_replayed_at_another_route_with_its_secret_is_refused(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    out = traffic.hmac_request(
        "/hook/orders", SECRET, {"order": "A1", "amount": "100"}, str(int(time.time())), f"n{time.time_ns()}"
    )
    assert send_outbound(sidecar.url, out)[0] == 200
    assert send_outbound(sidecar.url, moved(out, "/hook/refunds"))[0] in (401, 403)
    assert [path for path, _ in delivered(fresh_backend)] == ["/hook/orders"]
    assert sidecar.metric("wxgate_verifications_total", route="refunds", reason="replayed_nonce") == 1


def test_a_captured_mp_query_carries_no_forged_message_to_another_account(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    out = traffic.mp_message(
        "/wechat/account1", TOKEN, message("hi", 1001), str(int(time.time())), f"n{time.time_ns()}"
    )
    assert send_outbound(sidecar.url, out)[0] == 200
    forged = message("FORGED", 1002)
    assert send_outbound(sidecar.url, moved(out, "/wechat/account2", forged))[0] == 403
    assert send_outbound(sidecar.url, moved(out, "/wechat/account2"))[0] == 403  # nor the captured one itself
    assert [path for path, _ in delivered(fresh_backend)] == ["/wechat/account1"]
    # the sender's own retry, at the route it was sent to, is still answered (from the dedup record)
    assert send_outbound(sidecar.url, out)[0] == 200
    assert len(delivered(fresh_backend)) == 1


def test_routes_with_their_own_secrets_keep_their_own_replay_caches(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    """The same timestamp and nonce, each request signed with its route's own token, at both accounts: two
    senders, two messages, both delivered."""
    ts, nonce = str(int(time.time())), f"n{time.time_ns()}"
    first = traffic.mp_message("/wechat/account1", TOKEN, message("one", 2001), ts, nonce)
    third = traffic.mp_message("/wechat/account3", OTHER_TOKEN, message("three", 2003), ts, nonce)
    assert send_outbound(sidecar.url, first)[0] == 200
    assert send_outbound(sidecar.url, third)[0] == 200
    assert [path for path, _ in delivered(fresh_backend)] == ["/wechat/account1", "/wechat/account3"]


@pytest.mark.parametrize("other", ["/sw/b", "/sw/c"])
def test_a_webhook_replayed_at_a_route_holding_its_key_in_another_spelling_is_refused(
    sidecar: Sidecar, fresh_backend: Backend, other: str
) -> None:
    """Routes are grouped by the key signatures are checked with, not by how the secret is written."""
    body = b'{"type":"order.paid","data":{"order":"A1"}}'
    out = traffic.standard_webhook(
        "/sw/a", f"whsec_{SW_KEY}", f"msg_{time.time_ns()}", str(int(time.time())), body
    )
    assert send_outbound(sidecar.url, out)[0] == 200
    assert send_outbound(sidecar.url, out._replace(target=other))[0] in (401, 403)
    assert [path for path, _ in delivered(fresh_backend)] == ["/sw/a"]
