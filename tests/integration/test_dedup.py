"""Exactly-once delivery through real wxgate processes, a real backend and real Redis."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.protocols import xmlmsg
from proxy.tools import sender
from tests.integration.conftest import ENV, TOKEN, mp_route
from tests.support.procs import Backend, Process, Sidecar, http, wait_until
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.integration
PATH = "/wechat/callback"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server.start()
    finally:
        server.cleanup()


def text(msg_id: int, content: str = "hi") -> sender.Request:
    return sender.mp_message(PATH, TOKEN, sender.mp_text("gh_test", f"oUser{msg_id % 7}", content, msg_id))


async def post(session: aiohttp.ClientSession, base: str, req: sender.Request) -> tuple[int, bytes]:
    async with session.request(req.method, base + req.path_query, data=req.body, headers=req.headers) as r:
        return r.status, await r.read()


def msg_ids(backend: Backend) -> Counter[str]:
    return Counter(xmlmsg.parse(r["body"].encode()).get("MsgId", "") for r in backend.requests())


def test_two_replicas_sharing_redis_deliver_each_message_once(
    tmp_path: Path, fresh_backend: Backend, redis: RedisServer
) -> None:
    cfg = {"upstream": fresh_backend.url, "store": redis.url, "routes": [mp_route()]}
    a = Sidecar(tmp_path, cfg, env=ENV, name="a")
    b = Sidecar(tmp_path, cfg, env=ENV, name="b")
    a.start()
    b.start()

    async def storm() -> dict[int, list[tuple[int, bytes]]]:
        replies: dict[int, list[tuple[int, bytes]]] = {}
        sem = asyncio.Semaphore(48)
        async with aiohttp.ClientSession() as session:

            async def one(msg_id: int, n: int) -> None:
                async with sem:
                    replies.setdefault(msg_id, []).append(
                        await post(session, (a if n % 2 else b).url, text(msg_id, f"m{msg_id}"))
                    )

            await asyncio.gather(*(one(m, n) for m in range(1, 201) for n in range(4)))
        return replies

    try:
        replies = asyncio.run(storm())
        seen = msg_ids(fresh_backend)
        assert len(seen) == 200 and set(seen.values()) == {1}
        for msg_id, answers in replies.items():
            assert len(answers) == 4
            assert {status for status, _ in answers} == {200}
            assert len({body for _, body in answers}) == 1, f"message {msg_id} got different replies"
            assert f"echo: m{msg_id}".encode() in answers[0][1]
        dups = sum(
            s.metric("wxgate_dedup_total", route="mp", result=r)
            for s in (a, b)
            for r in ("duplicate_done", "duplicate_inflight")
        )
        assert dups == 600
    finally:
        a.stop()
        b.stop()


@pytest.fixture
def sidecar(tmp_path: Path, backend: Backend) -> Iterator[Sidecar]:
    s = Sidecar(tmp_path, {"upstream": backend.url, "routes": [mp_route(on_backend_failure="fail")]}, env=ENV)
    s.start()
    yield s
    s.stop()


def test_duplicate_during_a_slow_first_attempt_gets_its_real_reply(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    fresh_backend.set_mode("slow:2")

    async def both() -> list[tuple[int, bytes]]:
        async with aiohttp.ClientSession() as session:
            first = asyncio.create_task(post(session, sidecar.url, text(501, "slow one")))
            await asyncio.sleep(0.5)
            second = await post(session, sidecar.url, text(501, "slow one"))
            return [await first, second]

    started = time.perf_counter()
    (s1, b1), (s2, b2) = asyncio.run(both())
    assert time.perf_counter() - started < 3.0
    assert s1 == s2 == 200 and b1 == b2 and b"echo: slow one" in b1
    assert fresh_backend.stats()["count"] == 1
    assert sidecar.metric("wxgate_dedup_total", route="mp", result="duplicate_inflight") == 1


def test_a_failed_first_attempt_does_not_swallow_the_retry(sidecar: Sidecar, fresh_backend: Backend) -> None:
    fresh_backend.set_mode("html500")
    status, _, _ = http("POST", sidecar.url + text(601).path_query, text(601).body, text(601).headers)
    assert status == 502  # policy fail: WeChat will retry
    fresh_backend.set_mode("passive")
    req = text(601)
    status, body, _ = http("POST", sidecar.url + req.path_query, req.body, req.headers)
    assert status == 200 and b"echo: hi" in body
    assert fresh_backend.stats()["count"] == 2
    assert fresh_backend.requests()[1]["headers"]["x-wxgate-attempt"] == "2"


def test_same_second_events_with_different_keys_are_not_merged(
    sidecar: Sidecar, fresh_backend: Backend
) -> None:
    now = int(time.time())
    events = [("subscribe", ""), ("CLICK", "MENU_A"), ("CLICK", "MENU_B"), ("SCAN", "42")]
    for event, key in events:
        req = sender.mp_message(PATH, TOKEN, sender.mp_event("gh_test", "oSameUser", event, key, now=now))
        assert http("POST", sidecar.url + req.path_query, req.body, req.headers)[0] == 200
    again = sender.mp_message(
        PATH, TOKEN, sender.mp_event("gh_test", "oSameUser", "CLICK", "MENU_A", now=now)
    )
    assert http("POST", sidecar.url + again.path_query, again.body, again.headers)[0] == 200
    assert fresh_backend.stats()["count"] == 4


def test_sqlite_store_recognises_a_delivery_after_restart(tmp_path: Path, fresh_backend: Backend) -> None:
    cfg: dict[str, Any] = {"upstream": fresh_backend.url, "routes": [mp_route()]}
    s = Sidecar(tmp_path, cfg, env=ENV)
    s.start()
    status, first, _ = http("POST", s.url + text(701).path_query, text(701).body, text(701).headers)
    assert status == 200 and s.stop() == 0
    s2 = Sidecar(tmp_path, cfg, env=ENV)  # same state file (named after the sidecar, not the port)
    s2.start()
    try:
        req = text(701)
        status, second, _ = http("POST", s2.url + req.path_query, req.body, req.headers)
        assert (status, second) == (200, first)
        assert fresh_backend.stats()["count"] == 1
    finally:
        s2.stop()


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
def test_redis_outage_follows_the_policy_and_recovers(
    tmp_path: Path, fresh_backend: Backend, redis: RedisServer, policy: str
) -> None:
    s = Sidecar(
        tmp_path,
        {
            "upstream": fresh_backend.url,
            "store": redis.url,
            "routes": [mp_route(dedup={"store_down": policy})],
        },
        env=ENV,
    )
    s.start()
    try:
        req = text(801)
        assert http("POST", s.url + req.path_query, req.body, req.headers)[0] == 200
        redis.kill()
        started = time.perf_counter()
        down = text(802)
        status, body, _ = http("POST", s.url + down.path_query, down.body, down.headers)
        assert time.perf_counter() - started < 4.6
        if policy == "fail_open":
            assert status == 200 and b"echo: hi" in body
        else:
            assert status == 502
        assert http("GET", s.admin_url + "/readyz")[0] == 503
        redis.restart()
        deadline = time.monotonic() + 10
        while http("GET", s.admin_url + "/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        again = text(803)
        assert http("POST", s.url + again.path_query, again.body, again.headers)[0] == 200
        dup = text(803)
        assert http("POST", s.url + dup.path_query, dup.body, dup.headers)[0] == 200
        expected = {"fail_open": {"801", "802", "803"}, "fail_closed": {"801", "803"}}[policy]
        assert set(msg_ids(fresh_backend)) == expected
        assert set(msg_ids(fresh_backend).values()) == {1}
        assert s.metric("wxgate_dedup_total", route="mp", result="store_error") >= 1
    finally:
        s.stop()


def test_a_replica_started_while_redis_is_down_serves_by_its_policy_and_catches_up(
    tmp_path: Path, fresh_backend: Backend
) -> None:
    """Restarted during a Redis outage, wxgate does not exit (a crash loop): it listens, says why it is not
    ready, answers by the route's store_down policy, and deduplicates again once Redis is there."""
    redis = RedisServer()  # its port is chosen, nothing listens on it yet
    s = Sidecar(
        tmp_path,
        {
            "upstream": fresh_backend.url,
            "store": redis.url,
            "routes": [mp_route(dedup={"store_down": "fail_open"})],
        },
        env=ENV,
    )
    Process.start(s)  # not ready by design: Sidecar.start would wait for /readyz
    try:

        def healthy() -> bool:
            assert s.proc is not None and s.proc.poll() is None, s.logs()[-2000:]  # it must not exit
            return http("GET", s.admin_url + "/healthz", timeout=1)[0] == 200

        wait_until(healthy, 15, "wxgate /healthz")
        status, body, _ = http("GET", s.admin_url + "/readyz")
        assert status == 503 and b"store unreachable" in body
        down = text(901)
        status, body, _ = http("POST", s.url + down.path_query, down.body, down.headers)
        assert status == 200 and b"echo: hi" in body  # fail_open: forwarded without deduplication
        assert "serving anyway" in s.logs()

        redis.start()
        deadline = time.monotonic() + 10
        while http("GET", s.admin_url + "/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert http("GET", s.admin_url + "/readyz")[0] == 200
        for _ in range(2):
            again = text(902)
            assert http("POST", s.url + again.path_query, again.body, again.headers)[0] == 200
        assert msg_ids(fresh_backend) == Counter({"901": 1, "902": 1})  # the retry answered from Redis
    finally:
        s.stop()
        redis.cleanup()
