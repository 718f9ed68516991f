"""Nothing lost: the outbox and the deadline policies, with real processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.protocols import xmlmsg
from proxy.tools import sender
from tests.integration.conftest import ENV, TOKEN, mp_route
from tests.support.procs import ROOT, Backend, Sidecar, http, wait_until
from tests.support.redis_servers import RedisServer, free_port

pytestmark = pytest.mark.integration
PATH = "/wechat/callback"
FAST_OUTBOX = {"backoff_base": "0.1s", "backoff_max": "0.5s"}


def text(msg_id: int, content: str = "hi") -> sender.Request:
    return sender.mp_message(PATH, TOKEN, sender.mp_text("gh_test", "oUser", content, msg_id))


def msg_ids(backend: Backend) -> Counter[str]:
    return Counter(xmlmsg.parse(r["body"].encode()).get("MsgId", "") for r in backend.requests())


def _cli(s: Sidecar, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", "-c", str(s.config_path), "outbox", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**ENV, **(s.env or {}), "PATH": "/usr/bin:/bin"},
    )


def _cli_depth(s: Sidecar) -> int:
    # The CLI opens the store beside the running sidecar; under heavy load one call can fail to get the
    # database in time, so a few tries are allowed before the failure (with its stderr) is reported.
    out = _cli(s, "list")
    for _ in range(3):
        if out.returncode == 0 and out.stdout.strip():
            break
        time.sleep(0.2)
        out = _cli(s, "list")
    assert out.returncode == 0 and out.stdout.strip(), out.stderr
    first = out.stdout.splitlines()[0]  # queued=N dead=N oldest_age=…
    return int(first.split()[0].split("=")[1])


async def blast(url: str, ids: range) -> list[tuple[int, bytes, float]]:
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> tuple[int, bytes, float]:
            req = text(i)
            started = time.perf_counter()
            async with session.post(url + req.path_query, data=req.body, headers=req.headers) as r:
                return r.status, await r.read(), time.perf_counter() - started

        return await asyncio.gather(*(one(i) for i in ids))


@pytest.fixture
def down_port() -> int:
    return free_port()


def test_backend_down_every_sender_is_acked_and_everything_arrives_once(
    tmp_path: Path, down_port: int
) -> None:
    s = Sidecar(
        tmp_path,
        {"upstream": f"http://127.0.0.1:{down_port}", "routes": [mp_route(outbox=FAST_OUTBOX)]},
        env=ENV,
    )
    s.start()
    backend = Backend(tmp_path, port=down_port)
    try:
        results = asyncio.run(blast(s.url, range(1, 101)))
        assert all(status == 200 and body == b"success" for status, body, _ in results)
        assert max(seconds for _, _, seconds in results) < 4.6
        assert _cli_depth(s) == 100
        recovered = time.perf_counter()
        backend.start()
        wait_until(lambda: _cli_depth(s) == 0, 30, "outbox drained")
        print(f"drained 100 items {time.perf_counter() - recovered:.2f}s after recovery")
        seen = msg_ids(backend)
        assert len(seen) == 100 and set(seen.values()) == {1}
        assert all(int(r["headers"]["x-wxgate-redelivery"]) >= 1 for r in backend.requests())
    finally:
        s.stop()
        backend.stop()


@pytest.mark.parametrize("kind", ["sqlite", "redis-aof"])
def test_queued_items_survive_kill_9(tmp_path: Path, down_port: int, kind: str) -> None:
    redis = RedisServer(aof=True) if kind == "redis-aof" else None
    cfg: dict[str, Any] = {
        "upstream": f"http://127.0.0.1:{down_port}",
        "routes": [mp_route(outbox=FAST_OUTBOX)],
    }
    if redis is not None:
        cfg["store"] = redis.start().url
    s = Sidecar(tmp_path, cfg, env=ENV)
    s.start()
    backend = Backend(tmp_path, port=down_port)
    try:
        assert all(st == 200 for st, _, _ in asyncio.run(blast(s.url, range(1, 21))))
        s.kill()
        if redis is not None:
            redis.kill()
            redis.restart()
        backend.start()
        s2 = Sidecar(tmp_path, cfg, env=ENV)
        s2.start()
        try:
            wait_until(lambda: len(msg_ids(backend)) == 20, 30, "redelivery after restart")
            assert set(msg_ids(backend).values()) == {1}
        finally:
            s2.stop()
    finally:
        backend.stop()
        if redis is not None:
            redis.cleanup()


def test_exhausted_item_becomes_a_dead_letter_and_replay_delivers_it(
    tmp_path: Path, backend: Backend
) -> None:
    backend.set_mode("fail")
    http("POST", backend.url + "/_demo/reset")
    outbox = {**FAST_OUTBOX, "max_attempts": 3}
    s = Sidecar(tmp_path, {"upstream": backend.url, "routes": [mp_route(outbox=outbox)]}, env=ENV)
    s.start()
    try:
        req = text(4242, "keep me")
        assert http("POST", s.url + req.path_query, req.body, req.headers)[:2] == (200, b"success")
        wait_until(lambda: "dead=1" in _cli(s, "list").stdout, 20, "dead letter")
        attempts = backend.stats()["count"]
        assert attempts == 4  # the first delivery and max_attempts (3) redeliveries
        marks = [r["headers"].get("x-wxgate-redelivery") for r in backend.requests()]
        assert marks == [None, "1", "2", "3"]
        dead = _cli(s, "list", "--dead").stdout.splitlines()[1].split()[0]
        shown = _cli(s, "show", dead).stdout
        assert '"route": "mp"' in shown and "keep me" not in shown  # no message content without --body
        backend.set_mode("passive")
        assert "replaying 1" in _cli(s, "replay", dead).stdout
        wait_until(lambda: backend.stats()["count"] == attempts + 1, 20, "replayed delivery")
        wait_until(lambda: "queued=0 dead=0" in _cli(s, "list").stdout, 10, "empty outbox")
        assert "keep me" in backend.requests()[-1]["body"]
    finally:
        s.stop()
        backend.set_mode("passive")


def test_relay_lets_the_retry_carry_the_real_passive_reply(tmp_path: Path, backend: Backend) -> None:
    backend.set_mode("slow:8")
    http("POST", backend.url + "/_demo/reset")
    s = Sidecar(
        tmp_path, {"upstream": backend.url, "routes": [mp_route(on_backend_failure="relay")]}, env=ENV
    )
    s.start()
    try:
        fields = sender.mp_text("gh_test", "oUser", "take your time", 777)
        attempts = asyncio.run(
            sender.deliver(s.url, lambda: sender.mp_message(PATH, TOKEN, fields), retries=3, timeout=5.0)
        )
        assert all(a.seconds < 5.0 for a in attempts)
        assert attempts[-1].status == 200 and b"echo: take your time" in attempts[-1].body
        assert len(attempts) == 2
        assert backend.stats()["count"] == 1
    finally:
        s.stop()
        backend.set_mode("passive")


def test_two_replicas_drain_one_outbox_without_double_delivery(tmp_path: Path, down_port: int) -> None:
    redis = RedisServer().start()
    cfg = {
        "upstream": f"http://127.0.0.1:{down_port}",
        "store": redis.url,
        "routes": [mp_route(outbox=FAST_OUTBOX)],
    }
    a, b = Sidecar(tmp_path, cfg, env=ENV, name="a"), Sidecar(tmp_path, cfg, env=ENV, name="b")
    a.start()
    b.start()
    backend = Backend(tmp_path, port=down_port)
    try:
        asyncio.run(blast(a.url, range(1, 51)))
        asyncio.run(blast(b.url, range(51, 101)))
        backend.start()
        wait_until(lambda: _cli_depth(a) == 0, 30, "outbox drained")
        seen = msg_ids(backend)
        assert len(seen) == 100 and set(seen.values()) == {1}
    finally:
        a.stop()
        b.stop()
        backend.stop()
        redis.cleanup()
