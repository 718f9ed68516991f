"""An Open Platform third-party platform through the running proxy: the authorization URL and the ``$APPID$``
message URL (a route path template), with and without the ``authorizers`` binding."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.protocols import wxcrypt, xmlmsg
from proxy.tools import traffic, traffic_open
from proxy.tools.sender import Request
from proxy.tools.traffic import Outbound
from tests.support.canned_backend import CannedBackend
from tests.support.procs import Sidecar, http

pytestmark = pytest.mark.integration

TOKEN, KEY = "open-platform-token", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
COMPONENT = "wx134c8103faa5a59e"
APPID, GH = "wxba5fad812f8e6fb9", "gh_97417a04a28d"
OTHER, OTHER_GH = "wx0123456789abcdef", "gh_0123456789ab"
RELEASE_APPID, RELEASE_GH = "wx570bc396a51b8ff8", "gh_3c884a361561"  # 全网发布 test account, group 1
ROUTE: dict[str, Any] = {
    "protocol": "wechat-open-platform",
    "component_app_id": COMPONENT,
    "token": "${TOKEN}",
    "encoding_aes_key": "${KEY}",
}


def authorizers_file(tmp: Path) -> Path:
    return tmp / "authorizers.yaml"


@pytest.fixture(scope="module")
def canned() -> Iterator[CannedBackend]:
    with CannedBackend() as b:
        yield b


@pytest.fixture(scope="module")
def sidecar(tmp_module: Path, canned: CannedBackend) -> Iterator[Sidecar]:
    routes = [
        {**ROUTE, "name": "auth", "path": "/open/auth", "kind": "authorization"},
        {**ROUTE, "name": "msgs", "path": "/open/{appid}/callback", "kind": "messages"},
        {
            **ROUTE,
            "name": "bound",
            "path": "/bound/{appid}/callback",
            "kind": "messages",
            "authorizers": {APPID: GH, OTHER: OTHER_GH},
            "decrypt_for_backend": True,
        },
        {
            **ROUTE,
            "name": "filed",
            "path": "/filed/{appid}/callback",
            "kind": "messages",
            "authorizers_file": str(authorizers_file(tmp_module)),
        },
    ]
    authorizers_file(tmp_module).write_text(f"{APPID}: {GH}\n")
    s = Sidecar(tmp_module, {"upstream": canned.url, "routes": routes}, env={"TOKEN": TOKEN, "KEY": KEY})
    s.start()
    yield s
    s.stop()


@pytest.fixture
def backend(canned: CannedBackend) -> CannedBackend:
    canned.reset()
    return canned


def send(s: Sidecar, out: Outbound) -> tuple[int, bytes]:
    r = Request.of(out)
    status, body, _ = http(r.method, s.url + r.path_query, r.body, r.headers)
    return status, body


def nonce() -> str:
    return f"n{time.perf_counter_ns()}"


def message(path: str, appid: str, to: str, content: str = "hi", msg_id: int | None = None) -> Outbound:
    now = int(time.time())
    msg_id = msg_id if msg_id is not None else time.perf_counter_ns()
    text = traffic_open.mp_text(to, "oUser1", content, msg_id, now)
    return traffic_open.message_delivery(path, appid, TOKEN, KEY, COMPONENT, text, str(now), nonce())


def test_a_ticket_push_is_answered_exactly_success_and_forwarded_once(
    sidecar: Sidecar, backend: CannedBackend
) -> None:
    backend.answer(
        200, "text/plain", b"ok"
    )  # anything but success loses tickets (the first documented cause)
    now = int(time.time())
    push = traffic_open.ticket_push("/open/auth", TOKEN, KEY, COMPONENT, "ticket@@@x", now, str(now), nonce())
    assert send(sidecar, push) == (200, b"success")
    assert send(sidecar, push) == (200, b"success")  # WeChat's retry: replayed, not forwarded again
    (got,) = backend.received
    assert got.path == "/open/auth" and got.headers["x-wxgate-protocol"] == "wechat-open-platform"
    assert "x-wxgate-authorizer-appid" not in got.headers


@pytest.mark.parametrize("path", ["/open/auth", f"/open/{APPID}/callback", f"/bound/{APPID}/callback"])
def test_url_verification_is_answered_on_both_urls_and_unsigned_refused(
    sidecar: Sidecar, backend: CannedBackend, path: str
) -> None:
    now = str(int(time.time()))
    signed = traffic.mp_url_check(path, TOKEN, "8165483926513712", now, nonce())
    assert send(sidecar, signed) == (200, b"8165483926513712")
    forged = traffic.mp_url_check(path, "not-the-token", "8165483926513712", now, nonce())
    unsigned = signed._replace(target=path + "?echostr=8165483926513712&timestamp=" + now)
    for refused in (forged, unsigned):
        status, body = send(sidecar, refused)
        assert status == 403 and b"8165483926513712" not in body
    assert backend.received == []  # the proxy answers URL verification by itself


def test_an_appid_path_reaches_the_backend_marked_unverified_without_authorizers(
    sidecar: Sidecar, backend: CannedBackend
) -> None:
    status, _ = send(sidecar, message("/open/$APPID$/callback", APPID, GH))
    assert status == 200
    (got,) = backend.received
    assert got.path == f"/open/{APPID}/callback"
    assert got.headers["x-wxgate-authorizer-appid"] == APPID
    assert got.headers["x-wxgate-authorizer-verified"] == "false"
    # nothing binds the path here: the same push for GH passes under another appid too, still unverified
    assert send(sidecar, message("/open/$APPID$/callback", OTHER, GH))[0] == 200
    assert backend.received[-1].headers["x-wxgate-authorizer-appid"] == OTHER


def test_a_backends_encrypted_passive_reply_passes_unchanged(
    sidecar: Sidecar, backend: CannedBackend
) -> None:
    # the 全网发布 text step, answered by a backend that encrypts by itself with the component key
    reply = xmlmsg.build(
        {
            "ToUserName": "oUser1",
            "FromUserName": RELEASE_GH,
            "CreateTime": 1,
            "MsgType": "text",
            "Content": "TESTCOMPONENT_MSG_TYPE_TEXT_callback",
        }
    )
    aes = wxcrypt.AesKey.decode("current", KEY).key
    sealed = wxcrypt.envelope(TOKEN, aes, reply, COMPONENT, "1713424427", "415670741", b"r" * 16).to_xml()
    backend.answer(200, "application/xml", sealed)
    out = message("/open/$APPID$/callback", RELEASE_APPID, RELEASE_GH, "TESTCOMPONENT_MSG_TYPE_TEXT")
    status, body = send(sidecar, out)
    assert (status, body) == (200, sealed)
    assert traffic_open.decode_reply(body, TOKEN, KEY, COMPONENT) == reply


def test_a_bound_appid_is_verified_and_gets_a_sealed_reply(sidecar: Sidecar, backend: CannedBackend) -> None:
    plain = xmlmsg.build(
        {"ToUserName": "oUser1", "FromUserName": GH, "CreateTime": 1, "MsgType": "text", "Content": "hello"}
    )
    backend.answer(200, "application/xml", plain)
    status, body = send(sidecar, message("/bound/$APPID$/callback", APPID, GH, "ping"))
    assert status == 200 and traffic_open.decode_reply(body, TOKEN, KEY, COMPONENT) == plain
    (got,) = backend.received
    assert got.headers["x-wxgate-authorizer-appid"] == APPID
    assert got.headers["x-wxgate-authorizer-verified"] == "true"
    assert b"<Content><![CDATA[ping]]></Content>" in got.body  # decrypt_for_backend: the plaintext message


def test_a_push_replayed_under_another_appid_is_refused_when_bound(
    sidecar: Sidecar, backend: CannedBackend
) -> None:
    captured = message("/bound/$APPID$/callback", APPID, GH)
    for appid, reason in ((OTHER, "authorizer_mismatch"), ("wx00000000000000ff", "unknown_authorizer")):
        replayed = captured._replace(target=captured.target.replace(APPID, appid, 1))
        assert send(sidecar, replayed)[0] == 403
        assert sidecar.metric("wxgate_verifications_total", route="bound", reason=reason) >= 1
    assert backend.received == []
    assert send(sidecar, captured)[0] == 200  # the original still goes through, once
    assert len(backend.received) == 1


def test_the_release_test_accounts_are_accepted_on_a_bound_route(
    sidecar: Sidecar, backend: CannedBackend
) -> None:
    status, _ = send(sidecar, message("/bound/$APPID$/callback", RELEASE_APPID, RELEASE_GH))
    assert status == 200
    assert backend.received[-1].headers["x-wxgate-authorizer-verified"] == "true"


@pytest.mark.parametrize(
    "path",
    [
        f"/open/{APPID.upper()}/callback",
        f"/open/%77{APPID[1:]}/callback",
        f"/OPEN/{APPID}/callback",
        f"/open/{APPID}/callback/",
        "/open/not-an-appid/callback",
    ],
)
def test_other_spellings_of_the_template_are_refused_never_passed_through(
    sidecar: Sidecar, backend: CannedBackend, path: str
) -> None:
    out = message("/open/$APPID$/callback", APPID, GH)
    status, _ = send(sidecar, out._replace(target=path + "?" + out.target.split("?", 1)[1]))
    assert status == 400 and backend.received == []


def test_the_tenant_is_in_the_log_line_and_never_a_metric_label(
    sidecar: Sidecar, backend: CannedBackend
) -> None:
    assert send(sidecar, message("/bound/$APPID$/callback", OTHER, OTHER_GH))[0] == 200
    lines = [
        line for line in sidecar.log_lines() if line.get("msg") == "request" and line.get("route") == "bound"
    ]
    assert any(line.get("tenant") == OTHER and line.get("tenant_verified") == "true" for line in lines)
    metrics = http("GET", sidecar.admin_url + "/metrics")[1].decode()
    assert "wechat-open-platform" in metrics and OTHER not in metrics and APPID not in metrics


def test_the_authorizers_file_is_read_again_on_reload(
    tmp_module: Path, sidecar: Sidecar, backend: CannedBackend
) -> None:
    assert send(sidecar, message("/filed/$APPID$/callback", APPID, GH))[0] == 200
    authorizers_file(tmp_module).write_text(f'{{"{OTHER}": "{OTHER_GH}"}}')  # JSON is YAML too
    try:
        sidecar.reload()
        assert send(sidecar, message("/filed/$APPID$/callback", APPID, GH))[0] == 403  # no longer listed
        assert send(sidecar, message("/filed/$APPID$/callback", OTHER, OTHER_GH))[0] == 200
        assert [r.headers["x-wxgate-authorizer-appid"] for r in backend.received] == [APPID, OTHER]
    finally:
        authorizers_file(tmp_module).write_text(f"{APPID}: {GH}\n")
        sidecar.reload()
