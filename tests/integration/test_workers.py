"""``workers: 2`` through real processes: one supervisor, two workers on one port, a real Redis and backend.

The tests share one supervisor and run in file order; the last one drains it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from proxy.protocols import xmlmsg
from proxy.tools import sender
from tests.integration.conftest import ENV, TOKEN, mp_route, pay_v3_route
from tests.support.procs import ROOT, WXGATE, Backend, Process, Sidecar, http, wait_until
from tests.support.redis_servers import RedisServer, free_port

pytestmark = pytest.mark.integration
PATH = "/wechat/callback"
OUTBOX_PATH = "/wechat/outbox"


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server.start()
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def down_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def sup(tmp_module: Path, backend: Backend, redis: RedisServer, down_port: int) -> Iterator[Sidecar]:
    outbox_route = mp_route(
        name="late",
        path=OUTBOX_PATH,
        upstream=f"http://127.0.0.1:{down_port}",
        outbox={"backoff_base": "0.1s", "backoff_max": "0.3s"},
    )
    cfg = {"upstream": backend.url, "store": redis.url, "workers": 2, "routes": [mp_route(), outbox_route]}
    s = Sidecar(tmp_module, cfg, env=ENV, name="workers")
    s.start(wait=30)
    yield s
    s.stop(20)


def workers_of(s: Sidecar) -> list[int]:
    """PIDs of this supervisor's own children: its workers."""
    assert s.proc is not None
    children = Path(f"/proc/{s.proc.pid}/task/{s.proc.pid}/children").read_text().split()
    return sorted(int(pid) for pid in children)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def per_worker(s: Sidecar, name: str, **labels: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(http("GET", s.admin_url + "/metrics")[1].decode()):
        for sample in fam.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                worker = sample.labels["worker"]
                out[worker] = out.get(worker, 0.0) + sample.value
    return out


def text(msg_id: int, path: str = PATH, content: str = "hi") -> sender.Request:
    return sender.mp_message(path, TOKEN, sender.mp_text("gh_test", "oUser", content, msg_id))


async def each_on_its_own_connection(base: str, reqs: list[sender.Request]) -> list[tuple[int, bytes]]:
    """Concurrent requests, each on a new connection, so the kernel picks a worker for each."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:

        async def one(req: sender.Request) -> tuple[int, bytes]:
            async with session.request(
                req.method, base + req.path_query, data=req.body, headers=req.headers
            ) as r:
                return r.status, await r.read()

        return await asyncio.gather(*(one(r) for r in reqs))


def msg_ids(backend: Backend) -> Counter[str]:
    return Counter(xmlmsg.parse(r["body"].encode()).get("MsgId", "") for r in backend.requests())


def test_connections_spread_over_both_workers(sup: Sidecar, fresh_backend: Backend) -> None:
    assert len(workers_of(sup)) == 2
    replies = asyncio.run(each_on_its_own_connection(sup.url, [text(i) for i in range(1000, 1040)]))
    assert {status for status, _ in replies} == {200}
    served = per_worker(sup, "wxgate_requests_total", route="mp", code="200")
    assert sum(served.values()) == 40
    assert set(served) == {"0", "1"} and min(served.values()) > 0, served
    access = [line for line in sup.log_lines() if line["logger"] == "wxgate.access"]
    assert len(access) == 40 and {line["worker"] for line in access} == {0, 1}


def test_one_notification_sent_concurrently_reaches_the_backend_once(
    sup: Sidecar, fresh_backend: Backend
) -> None:
    before = per_worker(sup, "wxgate_dedup_total", route="mp")
    replies = asyncio.run(each_on_its_own_connection(sup.url, [text(2000, content="once")] * 12))
    assert {status for status, _ in replies} == {200}
    assert len({body for _, body in replies}) == 1  # every retry gets the one real reply
    assert b"echo: once" in replies[0][1]
    assert msg_ids(fresh_backend) == Counter({"2000": 1})
    after = per_worker(sup, "wxgate_dedup_total", route="mp")
    handled = {w: after[w] - before.get(w, 0) for w in after}
    assert sum(handled.values()) == 12 and min(handled.values()) > 0, handled  # both workers saw copies


def test_sighup_reloads_every_worker(sup: Sidecar, fresh_backend: Backend) -> None:
    sup.config = {**sup.config, "unmatched": "deny"}
    sup.config_path.write_text(yaml.safe_dump(sup.config))
    sup.signal(signal.SIGHUP)
    wait_until(
        lambda: per_worker(sup, "wxgate_config_reloads_total", result="success") == {"0": 1.0, "1": 1.0},
        10,
        "both workers reloaded",
    )
    probe = sender.Request("GET", "/elsewhere", {}, b"")
    replies = asyncio.run(each_on_its_own_connection(sup.url, [probe] * 20))
    assert {status for status, _ in replies} == {404}
    assert fresh_backend.requests() == []
    denied = per_worker(sup, "wxgate_requests_total", route="unmatched", code="404")
    assert set(denied) == {"0", "1"} and min(denied.values()) > 0, denied


def test_outbox_is_drained_once_by_one_worker(
    sup: Sidecar, tmp_module: Path, down_port: int, fresh_backend: Backend
) -> None:
    ids = range(3000, 3010)
    replies = asyncio.run(each_on_its_own_connection(sup.url, [text(i, OUTBOX_PATH) for i in ids]))
    assert replies == [(200, b"success")] * 10  # acknowledged: the backend is down, the outbox holds them
    late = Backend(tmp_module, port=down_port)
    late.start()
    try:
        wait_until(lambda: len(msg_ids(late)) == 10, 20, "outbox redelivered")
        assert msg_ids(late) == Counter({str(i): 1 for i in ids})
        delivered = per_worker(sup, "wxgate_outbox_redeliveries_total", route="late", result="delivered")
        assert delivered.get("0") == 10 and delivered.get("1", 0) == 0, delivered
    finally:
        late.stop()


def test_a_stuck_worker_fails_healthz(sup: Sidecar) -> None:
    stuck = workers_of(sup)[1]
    answers: list[tuple[int, bytes, dict[str, str]]] = []

    def healthz(status: int) -> bool:
        answers.append(http("GET", sup.admin_url + "/healthz", timeout=5))
        return answers[-1][0] == status

    os.kill(stuck, signal.SIGSTOP)  # its event loop stops as a blocking hook would stop it
    try:
        wait_until(lambda: healthz(503), 15, "healthz failing")
        assert answers[-1][1].startswith(b"unhealthy: worker 1: not answering")
    finally:
        os.kill(stuck, signal.SIGCONT)
    wait_until(lambda: healthz(200), 15, "healthz again")


def test_a_killed_worker_is_restarted(sup: Sidecar, fresh_backend: Backend) -> None:
    first = workers_of(sup)
    os.kill(first[1], signal.SIGKILL)
    wait_until(lambda: len(set(workers_of(sup)) - set(first)) == 1, 15, "a new worker")
    wait_until(lambda: http("GET", sup.admin_url + "/readyz", timeout=2)[0] == 200, 15, "ready again")
    assert first[0] in workers_of(sup)
    replies = asyncio.run(each_on_its_own_connection(sup.url, [text(i) for i in range(4000, 4020)]))
    assert {status for status, _ in replies} == {200}
    assert "exited with -9; restarting it" in sup.logs()


def test_sigterm_drains_every_worker_then_the_supervisor_exits_0(
    sup: Sidecar, fresh_backend: Backend
) -> None:
    fresh_backend.set_mode("slow:2")
    workers = workers_of(sup)

    async def in_flight_then_term() -> list[tuple[int, bytes]]:
        calls = asyncio.create_task(
            each_on_its_own_connection(sup.url, [text(i, content=f"m{i}") for i in range(5000, 5010)])
        )
        # SIGTERM once all ten are at the backend: in flight in the workers, not waiting to be accepted.
        await asyncio.to_thread(wait_until, lambda: len(fresh_backend.requests()) == 10, 10, "all in flight")
        sup.signal(signal.SIGTERM)
        return await calls

    replies = asyncio.run(in_flight_then_term())
    assert sup.wait(20) == 0
    assert [status for status, _ in replies] == [200] * 10
    assert all(
        f"echo: m{i}".encode() in body for i, (_, body) in zip(range(5000, 5010), replies, strict=True)
    )
    assert not any(alive(pid) for pid in workers)
    with pytest.raises(OSError):
        http("GET", sup.url + PATH, timeout=1)


def test_workers_share_a_sqlite_file(tmp_path: Path, fresh_backend: Backend) -> None:
    cfg = {"upstream": fresh_backend.url, "workers": 2, "routes": [mp_route()]}  # store: a sqlite:/// file
    s = Sidecar(tmp_path, cfg, env=ENV, name="sqlite-workers")
    s.start(wait=30)
    try:
        same = [text(6000, content="shared")] * 12
        distinct = [text(i) for i in range(6001, 6041)]
        replies = asyncio.run(each_on_its_own_connection(s.url, same + distinct + distinct))
        assert {status for status, _ in replies} == {200}
        assert msg_ids(fresh_backend) == Counter({str(i): 1 for i in range(6000, 6041)})
        served = per_worker(s, "wxgate_requests_total", route="mp", code="200")
        assert set(served) == {"0", "1"} and min(served.values()) > 0, served
        # The supervisor killed outright: its workers notice, drain and exit rather than serve unsupervised.
        workers = workers_of(s)
        s.kill()
        wait_until(lambda: not any(alive(pid) for pid in workers), 15, "orphaned workers gone")
        with pytest.raises(OSError):
            http("GET", s.url + PATH, timeout=1)
    finally:
        s.stop(20)


def test_check_refuses_workers_with_a_memory_store(tmp_path: Path) -> None:
    config = tmp_path / "memory.yaml"
    config.write_text(yaml.safe_dump({"store": "sqlite://:memory:", "workers": 2, "routes": [mp_route()]}))
    out = subprocess.run(
        [*WXGATE, "-c", str(config), "check"],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
        cwd=ROOT,
    )
    assert out.returncode == 2
    assert "workers: 2 with store sqlite://:memory:" in out.stderr and "redis://" in out.stderr


def test_a_worker_failing_at_start_stops_the_sidecar_with_its_error(tmp_path: Path) -> None:
    garbage = tmp_path / "platform.pem"
    garbage.write_text("not a certificate")
    route = pay_v3_route(garbage, "1900000001")
    s = Sidecar(tmp_path, {"workers": 2, "routes": [route]}, env={"V3": "k" * 32}, name="failing")
    Process.start(s)  # not Sidecar.start: it would wait for a readiness that never comes
    try:
        assert s.wait(30) == 2  # the configuration error's status, once: no crash loop
        assert "is not a WeChat Pay platform certificate" in s.logs()
        assert "exited with 2 while starting; stopping" in s.logs()
    finally:
        s.stop()
