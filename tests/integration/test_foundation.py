"""The sidecar in front of a real backend: Official Account plaintext mode end to end."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.tools import sender
from tests.integration.conftest import ENV, TOKEN, mp_route
from tests.support.procs import ROOT, Backend, Sidecar, http
from tests.support.redis_servers import free_port

pytestmark = pytest.mark.integration
PATH = "/wechat/callback"


@pytest.fixture(scope="module")
def sidecar(tmp_module: Path, backend: Backend) -> Iterator[Sidecar]:
    s = Sidecar(tmp_module, {"upstream": backend.url, "routes": [mp_route()]}, env=ENV)
    s.start()
    yield s
    assert s.stop() == 0


def send(s: Sidecar, req: sender.Request) -> tuple[int, bytes, float]:
    started = time.perf_counter()
    status, body, _ = http(req.method, s.url + req.path_query, req.body, req.headers)
    return status, body, time.perf_counter() - started


def text(msg_id: int, content: str = "hi", **kw: int) -> sender.Request:
    return sender.mp_message(PATH, TOKEN, sender.mp_text("gh_test", "oUser1", content, msg_id), **kw)


def test_url_verification_is_answered_without_the_backend(sidecar: Sidecar, fresh_backend: Backend) -> None:
    req = sender.mp_verify_url(PATH, TOKEN, echostr="4375120948345356249")
    status, body, _ = send(sidecar, req)
    assert (status, body) == (200, b"4375120948345356249")
    assert fresh_backend.stats()["count"] == 0


def test_valid_message_is_forwarded_once_and_passive_reply_returned_verbatim(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    status, body, _ = send(sidecar, text(1001, "ping"))
    assert status == 200
    reqs = fresh_backend.requests()
    assert len(reqs) == 1
    assert "<Content><![CDATA[ping]]></Content>" in reqs[0]["body"]
    assert reqs[0]["headers"]["x-wxgate-verified"] == "1"
    assert reqs[0]["headers"]["x-wxgate-protocol"] == "wechat-mp"
    assert b"<Content><![CDATA[echo: ping]]></Content>" in body
    assert body.startswith(b"<xml><ToUserName><![CDATA[oUser1]]></ToUserName>")


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda q: q.replace("signature=", "signature=0"), "bad_signature"),
        (lambda q: q.split("&nonce=")[0], "missing_param"),
    ],
)
def test_bad_requests_are_refused_and_never_forwarded(
    sidecar: Sidecar, fresh_backend: Backend, mutate: object, reason: str
) -> None:
    req = text(2001)
    path, _, query = req.path_query.partition("?")
    bad = sender.Request(req.method, f"{path}?{mutate(query)}", req.headers, req.body)  # type: ignore[operator]
    before = sidecar.metric("wxgate_verifications_total", route="mp", reason=reason)
    status, body, _ = send(sidecar, bad)
    assert (status, body) == (403, b"")
    assert fresh_backend.stats()["count"] == 0
    assert sidecar.metric("wxgate_verifications_total", route="mp", reason=reason) == before + 1


@pytest.mark.parametrize(("offset", "reason"), [(-301, "stale_timestamp"), (301, "future_timestamp")])
def test_timestamps_outside_the_window_are_refused(
    sidecar: Sidecar, fresh_backend: Backend, offset: int, reason: str
) -> None:
    status, _, _ = send(sidecar, text(3001, now=int(time.time()) + offset))
    assert status == 403
    assert fresh_backend.stats()["count"] == 0
    assert sidecar.metric("wxgate_verifications_total", route="mp", reason=reason) >= 1


def test_exact_repeat_is_answered_from_dedup_and_forgery_is_refused(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    req = text(4001, "original")
    status, first_reply, _ = send(sidecar, req)
    assert status == 200
    assert send(sidecar, req)[:2] == (200, first_reply)  # the same signed request again: a retry
    forged = sender.Request(
        req.method, req.path_query, req.headers, req.body.replace(b"original", b"forged!!")
    )
    status, body, _ = send(sidecar, forged)  # captured signed values, another body
    assert (status, body) == (403, b"")
    assert fresh_backend.stats()["count"] == 1


@pytest.mark.parametrize(
    ("mode", "normalized"),
    [("json", "json"), ("html500", None), ("status201", "status_201"), ("ok", "not_xml")],
)
def test_backend_answers_that_break_the_contract_become_success(
    sidecar: Sidecar, fresh_backend: Backend, mode: str, normalized: str | None
) -> None:
    fresh_backend.set_mode(mode)
    status, body, _ = send(sidecar, text(5000 + len(mode)))
    assert (status, body) == (200, b"success")
    assert fresh_backend.stats()["count"] == 1
    if normalized:
        assert sidecar.metric("wxgate_replies_normalized_total", route="mp", reason=normalized) >= 1


def test_slow_backend_gets_success_before_the_deadline(sidecar: Sidecar, fresh_backend: Backend) -> None:
    fresh_backend.set_mode("slow:10")
    status, body, seconds = send(sidecar, text(6001))
    assert (status, body) == (200, b"success")
    assert 4.0 < seconds < 4.6
    assert sidecar.metric("wxgate_deadline_fired_total", route="mp", policy="ack") >= 1


def test_oversized_body_is_refused(sidecar: Sidecar, fresh_backend: Backend) -> None:
    req = text(7001, "x" * (300 * 1024))
    status, _, _ = send(sidecar, req)
    assert status == 413
    assert fresh_backend.stats()["count"] == 0


XXE = b"""<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xml><ToUserName>gh</ToUserName><FromUserName>u</FromUserName><CreateTime>1</CreateTime>
<MsgType>text</MsgType><Content>&xxe;</Content><MsgId>1</MsgId></xml>"""
LAUGHS = b"""<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">
<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><xml><Content>&lol3;</Content></xml>"""


@pytest.mark.parametrize("payload", [XXE, LAUGHS, b"<xml><unclosed></xml>", b"not xml at all"])
def test_hostile_and_malformed_xml_is_refused(
    sidecar: Sidecar, fresh_backend: Backend, payload: bytes
) -> None:
    req = text(8001)
    status, _, _ = send(sidecar, sender.Request("POST", req.path_query, req.headers, payload))
    assert status == 400
    assert fresh_backend.stats()["count"] == 0


def test_spoofed_wxgate_headers_are_stripped(sidecar: Sidecar, fresh_backend: Backend) -> None:
    req = text(9001)
    spoofed = sender.Request(
        req.method,
        req.path_query,
        {**req.headers, "X-Wxgate-Verified": "forged", "X-Wxgate-Dedup-Key": "forged"},
        req.body,
    )
    assert send(sidecar, spoofed)[0] == 200
    headers = fresh_backend.requests()[0]["headers"]
    assert headers["x-wxgate-verified"] == "1"
    assert headers.get("x-wxgate-dedup-key") != "forged"


def test_unknown_path_passes_through(sidecar: Sidecar, fresh_backend: Backend) -> None:
    status, _, _ = http("POST", sidecar.url + "/other/path", b"hello")
    assert status == 200
    assert fresh_backend.requests()[0]["path"] == "/other/path"


def test_backend_down_still_gets_success_in_time(tmp_path: Path) -> None:
    s = Sidecar(tmp_path, {"upstream": f"http://127.0.0.1:{free_port()}", "routes": [mp_route()]}, env=ENV)
    s.start()
    try:
        status, body, seconds = send(s, text(10001))
        assert (status, body) == (200, b"success")
        assert seconds < 4.6
        assert s.metric("wxgate_upstream_requests_total", route="mp", result="refused") == 1
    finally:
        assert s.stop() == 0


def test_deny_mode_refuses_unknown_paths(tmp_path: Path, backend: Backend) -> None:
    s = Sidecar(tmp_path, {"upstream": backend.url, "unmatched": "deny", "routes": [mp_route()]}, env=ENV)
    s.start()
    try:
        http("POST", backend.url + "/_demo/reset")
        status, _, _ = http("POST", s.url + "/admin/secret", b"x")
        assert status == 404
        assert backend.stats()["count"] == 0
    finally:
        s.stop()


def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path, backend: Backend) -> None:
    backend.set_mode("slow:1.5")
    s = Sidecar(tmp_path, {"upstream": backend.url, "routes": [mp_route()]}, env=ENV)
    s.start()
    results: list[tuple[int, bytes, float]] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(send(s, text(11000 + i)))) for i in range(5)
    ]
    for t in threads:
        t.start()
    time.sleep(0.5)
    s.signal(signal.SIGTERM)
    for t in threads:
        t.join(10)
    try:
        assert s.wait(10) == 0
    finally:
        backend.set_mode("passive")
    assert len(results) == 5
    assert all(status == 200 and b"echo: hi" in body for status, body, _ in results)


def test_wxgate_send_shows_a_verified_delivery(sidecar: Sidecar, fresh_backend: Backend) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy.cli",
            "-c",
            str(sidecar.config_path),
            "send",
            "--content",
            "from the cli",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"WX_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "attempt 1: status 200" in out.stdout
    assert "echo: from the cli" in out.stdout
    assert fresh_backend.stats()["count"] == 1


def test_check_names_the_bad_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "routes:\n  - name: mp\n    path: /cb\n    protocol: wechat-mp\n    token: ${T}\n"
        "    deadline: soon\n    tokne: x\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "-c", str(cfg), "check"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"T": "x", "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
    )
    assert out.returncode == 2
    assert "routes[0].deadline: expected a duration" in out.stderr
    assert "routes[0].tokne: unknown key" in out.stderr
