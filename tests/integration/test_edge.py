"""The edge through a running wxgate and a real backend: other spellings of a route's path, header spellings,
``X-Forwarded-For``, and hooks that raise. Nothing unverified may reach the backend by any of them."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.tools import sender
from tests.integration.conftest import ENV, TOKEN, mp_route
from tests.reliability.hostile import Answer, head, send
from tests.support.procs import Backend, Sidecar, http
from tests.support.redis_servers import free_port

pytestmark = pytest.mark.integration
PATH = "/wechat/callback"

# Spellings that Flask/Werkzeug, Spring/Tomcat, Express, PHP or IIS route to the handler at PATH.
IMPERSONATIONS = [
    "/wechat/callback/",
    "/WECHAT/CALLBACK",
    "/Wechat/Callback",
    "//wechat/callback",
    "/wechat//callback",
    "/wechat/%63allback",
    "/wechat/%2563allback",  # decoded twice
    "/%77echat/callback",
    "/wechat/callback;jsessionid=1",
    "/wechat;x=1/callback",
    "/wechat/./callback",
    "/./wechat/callback",
    "/wechat/x/../callback",
    "/wechat/x/%2e%2e/callback",
    "/wechat%2Fcallback",
    "/wechat%2fcallback",
    "/wechat/callback%2F",
    "/wechat/callback.",
    "/wechat/callback.json",  # Spring suffix patterns
    "/wechat/callback%20",
    "/wechat/callback%00.jpg",
    "/wechat/callback%3Bx",
    "/wechat/callback%23frag",
    "/%EF%BD%97echat/callback",  # full-width w (NFKC)
    "/wechat%5Ccallback",
    "/wechat/callback/x",  # a mounted handler: Express app.use, Go ServeMux subtrees, Spring /**
    "/WeChat/Callback/a/b",
    "/index.php/wechat/callback",  # front controllers (Laravel, Symfony, ThinkPHP, CodeIgniter, Yii)
    "/app.php/wechat/callback",
    "/(S(x))/wechat/callback",  # ASP.NET cookieless sessions
    "/(X(1)S(abc))/wechat/callback",
]
# Paths that are not spellings of PATH: legacy traffic that passes through as it is.
LEGACY = ["/other", "/wechat/callbacks", "/wechat/status;jsessionid=1", "/wechat/callback2", "/wechat"]


@pytest.fixture(scope="module")
def sidecar(tmp_module: Path, backend: Backend) -> Iterator[Sidecar]:
    routes = [
        mp_route(),
        mp_route(name="guarded", path="/guarded", allow_cidrs=["198.51.100.0/24"]),
        {"name": "php", "path": "/pay/notify.php", "protocol": "wechat-mp", "token": "${WX_TOKEN}"},
    ]
    s = Sidecar(tmp_module, {"upstream": backend.url, "routes": routes}, env=ENV, name="edge")
    s.start()
    yield s
    assert s.stop() == 0


def signed(path: str, msg_id: int) -> sender.Request:
    """A correctly signed message (an MP signature covers the query's values, not the path)."""
    return sender.mp_message(path, TOKEN, sender.mp_text("gh_test", "oUser1", "hi", msg_id))


def raw(s: Sidecar, target: str, req: sender.Request, extra: list[tuple[str, str]] = ()) -> Answer:  # type: ignore[assignment]
    query = req.path_query.partition("?")[2]
    wire = head(req.method, f"{target}?{query}", [*req.headers.items(), *extra], req.body)
    return asyncio.run(send(s.port, wire))


@pytest.mark.parametrize("target", IMPERSONATIONS)
def test_another_spelling_of_a_route_path_is_refused_and_never_forwarded(
    sidecar: Sidecar, fresh_backend: Backend, target: str
) -> None:
    before = sidecar.metric("wxgate_verifications_total", route="mp", reason="noncanonical_path")
    answer = raw(
        sidecar, target, signed(PATH, 61_000 + IMPERSONATIONS.index(target)), [("X-Wxgate-Verified", "1")]
    )
    assert answer.status == 400, (target, answer)
    assert fresh_backend.stats()["count"] == 0
    if answer.layer == "wxgate":  # mitmproxy's own parser refuses a few (400) before any addon sees them
        assert (
            sidecar.metric("wxgate_verifications_total", route="mp", reason="noncanonical_path") == before + 1
        )


@pytest.mark.parametrize(
    "target", ["/pay/notify.php/", "/pay/notify.php/x", "/PAY/NOTIFY.PHP", "/pay/notify"]
)
def test_a_scripts_path_info_and_spellings_are_refused(
    sidecar: Sidecar, fresh_backend: Backend, target: str
) -> None:
    answer = raw(sidecar, target, signed("/pay/notify.php", 62_000 + len(target)))
    assert answer.status == 400, (target, answer)
    assert fresh_backend.stats()["count"] == 0


@pytest.mark.parametrize(
    "route_in_query", ["s=/wechat/callback", "/wechat/callback", "r=%2Fwechat%2Fcallback%2F"]
)
def test_a_route_named_in_the_query_of_another_path_is_refused(
    sidecar: Sidecar, fresh_backend: Backend, route_in_query: str
) -> None:
    """ThinkPHP routes /index.php?s=/a/b, CodeIgniter /index.php?/a/b, other front controllers a parameter."""
    req = signed(PATH, 66_000 + len(route_in_query))
    query = req.path_query.partition("?")[2]
    wire = head(req.method, f"/index.php?{route_in_query}&{query}", list(req.headers.items()), req.body)
    assert asyncio.run(send(sidecar.port, wire)).status == 400
    assert fresh_backend.stats()["count"] == 0


def test_routing_override_headers_and_folded_lines_never_reach_the_backend(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    overrides = [("X-Original-URL", PATH), ("X-Rewrite-URL", PATH)]
    assert asyncio.run(send(sidecar.port, head("GET", "/legacy/page", overrides, b""))).status == 200
    (got,) = fresh_backend.requests()
    assert "x-original-url" not in got["headers"] and "x-rewrite-url" not in got["headers"]
    folded = b"GET /legacy/page HTTP/1.1\r\nHost: x\r\nX-Foo: a\r\n X-Wxgate-Verified: 1\r\n\r\n"
    assert (
        asyncio.run(send(sidecar.port, folded)).status == 400
    )  # passed through, it would be a second header
    assert fresh_backend.stats()["count"] == 1


@pytest.mark.parametrize("target", LEGACY)
def test_other_paths_still_pass_through_as_they_are(
    sidecar: Sidecar, fresh_backend: Backend, target: str
) -> None:
    status, _, _ = http("GET", sidecar.url + target)
    assert status == 200
    reqs = fresh_backend.requests()
    assert [r["path"].split("?")[0] for r in reqs] == [target]
    assert reqs[0]["headers"].get("x-wxgate-verified") is None


def test_the_exact_path_is_still_verified_and_forwarded(sidecar: Sidecar, fresh_backend: Backend) -> None:
    answer = raw(sidecar, PATH, signed(PATH, 63_001))
    assert answer.status == 200
    assert fresh_backend.stats()["count"] == 1


def test_wxgate_headers_in_two_spellings_are_all_dropped_on_passthrough(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    spoof = [("X-Wxgate-J", "1"), ("x-wxgate-j", "2"), ("X-Wxgate-Verified", "1"), ("x_wxgate_route", "mp")]
    wire = head("GET", "/legacy/page", spoof, b"")
    assert asyncio.run(send(sidecar.port, wire)).status == 200
    (got,) = fresh_backend.requests()
    assert not [h for h in got["headers"] if "wxgate" in h.lower()], got["headers"]


def test_wxgate_headers_in_two_spellings_do_not_skip_the_routes_checks(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    """A valid signature from a source outside the route's allow_cidrs: refused, whatever headers come along."""
    answer = raw(sidecar, "/guarded", signed("/guarded", 64_001), [("X-Wxgate-J", "1"), ("x-wxgate-j", "2")])
    assert answer.status == 403
    assert fresh_backend.stats()["count"] == 0
    assert sidecar.metric("wxgate_verifications_total", route="guarded", reason="source_not_allowed") >= 1


def test_a_clients_forwarded_headers_are_replaced_by_the_peer(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    extra = [
        ("X-Forwarded-For", "198.51.100.7"),
        ("X-Real-IP", "198.51.100.7"),
        ("Forwarded", "for=198.51.100.7"),
    ]
    assert raw(sidecar, PATH, signed(PATH, 65_001), extra).status == 200  # routed
    wire = head("GET", "/legacy/xff", extra, b"")
    assert asyncio.run(send(sidecar.port, wire)).status == 200  # passed through
    for got in fresh_backend.requests():
        headers = {k.lower(): v for k, v in got["headers"].items()}
        assert headers["x-forwarded-for"] == "127.0.0.1", headers
        assert "x-real-ip" not in headers and "forwarded" not in headers


def test_behind_a_trusted_proxy_the_peer_is_appended(
    tmp_module: Path, backend: Backend, fresh_backend: Backend
) -> None:
    cfg = {"upstream": backend.url, "routes": [mp_route()], "trusted_proxies": ["127.0.0.0/8"]}
    s = Sidecar(tmp_module, cfg, env=ENV, name="edge-trusted")
    s.start()
    try:
        wire = head(
            "GET", "/legacy/xff", [("X-Forwarded-For", "198.51.100.7"), ("X-Real-IP", "198.51.100.7")], b""
        )
        assert asyncio.run(send(s.port, wire)).status == 200
    finally:
        assert s.stop() == 0
    (got,) = fresh_backend.requests()
    headers = {k.lower(): v for k, v in got["headers"].items()}
    assert headers["x-forwarded-for"] == "198.51.100.7, 127.0.0.1"
    assert headers["x-real-ip"] == "198.51.100.7"


# -- hooks that raise, in a wxgate running in this process ---------------------------------------------------

FLOW_HOOKS = ("requestheaders", "request", "response")


async def test_an_exception_in_any_hook_fails_the_request_closed(
    tmp_path: Path, fresh_backend: Backend
) -> None:
    """Each hook of each addon of the chain raises in turn while signed messages and passthrough requests
    arrive: before the answer, the request ends in a 5xx and the backend gets nothing; the proxy keeps
    serving, and the access log says ``internal_error``."""
    with warnings.catch_warnings():
        # proxy.app imports mitmproxy.master, which imports every default addon; proxyauth's ldap3 uses a
        # deprecated pyasn1 name on import.
        warnings.simplefilter("ignore", DeprecationWarning)
        from proxy.app import Sidecar as App
        from proxy.app import build_runtime
    from proxy.config import parse_config

    port, admin = free_port(), free_port()
    raw_cfg = {
        "listen": f"127.0.0.1:{port}",
        "admin": f"127.0.0.1:{admin}",
        "store": f"sqlite:///{tmp_path}/state.db",
        "upstream": fresh_backend.url,
        "routes": [mp_route()],
        "drain_timeout": "2s",  # a faulted metrics hook leaves its request counted in flight
    }
    app = App(build_runtime(parse_config(raw_cfg, ENV)))
    serving = asyncio.create_task(app.run())
    try:
        await _until_ready(f"http://127.0.0.1:{admin}/readyz")
        assert app.master is not None
        addons = [a for a in app.chain if any(callable(getattr(a, h, None)) for h in FLOW_HOOKS)]
        assert len(addons) >= 6
        msg_id, tried = 70_000, 0
        for addon in addons:
            for hook in FLOW_HOOKS:
                if not callable(getattr(addon, hook, None)):
                    continue
                tried += 1
                msg_id += 1
                setattr(addon, hook, _raises)
                app.master.addons._handlers.clear()  # the dispatch caches handlers per event
                try:
                    before = fresh_backend.stats()["count"]
                    answer = await _post(port, signed(PATH, msg_id))
                    passthrough = await send(port, head("POST", "/legacy", [], b"x"))
                finally:
                    delattr(addon, hook)
                    app.master.addons._handlers.clear()
                where = f"{type(addon).__name__}.{hook}"
                assert answer.status >= 500, (where, answer)
                assert passthrough.status >= 500, (where, passthrough)
                if hook != "response":  # before the backend call: it never happens
                    assert fresh_backend.stats()["count"] == before, where
                # and the proxy still serves a genuine request
                msg_id += 1
                assert (await _post(port, signed(PATH, msg_id))).status == 200, where
                assert app.in_flight() >= 0, (
                    where
                )  # a request a faulted hook never counted in is not counted out
        assert tried >= 8
    finally:
        await app.drain()
        if app.master is None:  # failed while starting
            serving.cancel()
        await asyncio.wait_for(asyncio.gather(serving, return_exceptions=True), 15)
        gc.unfreeze()


def _raises(*args: object) -> None:
    raise RuntimeError("injected fault")


async def _post(port: int, req: sender.Request) -> Answer:
    return await send(port, head(req.method, req.path_query, list(req.headers.items()), req.body))


async def _until_ready(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if (await asyncio.to_thread(http, "GET", url, b"", None, 1.0))[0] == 200:
                return
        await asyncio.sleep(0.05)
    raise TimeoutError("wxgate not ready")


def test_a_captured_message_with_another_openid_is_refused(sidecar: Sidecar, fresh_backend: Backend) -> None:
    """The query's openid is covered by no signature. Sent first with another user's openid, a captured
    message reached the backend as verified for that user, and the genuine one was then refused as a forgery."""
    genuine = signed(PATH, 67_001)
    path, _, query = genuine.path_query.partition("?")
    assert "openid=oUser1" in query
    forged = sender.Request(
        genuine.method,
        f"{path}?{query.replace('openid=oUser1', 'openid=oVICTIM')}",
        genuine.headers,
        genuine.body,
    )
    before = sidecar.metric("wxgate_verifications_total", route="mp", reason="openid_mismatch")
    status, _, _ = http(forged.method, sidecar.url + forged.path_query, forged.body, forged.headers)
    assert status == 403
    assert sidecar.metric("wxgate_verifications_total", route="mp", reason="openid_mismatch") == before + 1
    assert fresh_backend.stats()["count"] == 0
    status, _, _ = http(genuine.method, sidecar.url + genuine.path_query, genuine.body, genuine.headers)
    assert status == 200 and fresh_backend.stats()["count"] == 1
